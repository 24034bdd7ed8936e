"""/metrics through a server with two worker processes: totals are summed across workers."""

import re
import subprocess
import sys
from pathlib import Path

import httpx

from ledger import metrics_dir
from ledger.metrics import FLUSH_SECONDS

from .conftest import ORIGIN
from .helpers import eventually
from .server import ADMIN_TOKEN, free_port, running_server, server_env
from .test_startup import ledger


def sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match[1] != name:
            continue
        found = ",".join(sorted(p for p in (match[2] or "").split(",") if p and not p.startswith("pid=")))
        if found == wanted:
            return float(match[3])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


def test_metrics_count_every_worker(database_url: str, tmp_path: Path, key_file: Path) -> None:
    env = server_env(database_url, tmp_path, LEDGER_SIGNING_KEY=str(key_file), LEDGER_LOG_ORIGIN=ORIGIN)
    with running_server(env, workers=2) as base, httpx.Client(base_url=base, timeout=10) as http:
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for i in range(6):
            body = {"device_id": f"m{i}", "purpose": "telemetry", "action": "grant", "policy_version": 1}
            # New connections each time, so both workers take part.
            assert httpx.post(f"{base}/v1/consents", json=body, headers=auth).status_code == 201
        for i in range(30):
            params = {"device_id": f"nobody-{i}", "purpose": "pixverse_sharing"}
            assert httpx.get(f"{base}/v1/check", params=params, headers=auth).status_code == 200
        assert (
            httpx.get(f"{base}/v1/check", params={"device_id": "x", "purpose": "nope"}, headers=auth).status_code == 422
        )

        def counted() -> None:
            # Each worker hands its counts over every FLUSH_SECONDS (README: Metrics), and a
            # request's duration after its answer is sent: the other worker may be later than that.
            response = http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            text = response.text
            assert sample(text, "ledger_decisions_total", purpose="pixverse_sharing", reason="no_consent") == 30
            # And the purpose registry the first start published.
            assert sample(text, "ledger_appends_total") == 7
            assert sample(text, "ledger_append_batch_size_count") == 7
            route = {"route": "/v1/check", "method": "GET"}
            assert sample(text, "ledger_http_request_duration_seconds_count", status="200", **route) == 30
            assert sample(text, "ledger_http_request_duration_seconds_count", status="422", **route) == 1
            lookups = sample(text, "ledger_cache_lookups_total", result="hit") + sample(
                text, "ledger_cache_lookups_total", result="miss"
            )
            assert lookups == 30
            assert "ledger_projection_applied_index" in text
            assert "ledger_projection_lag_entries" in text
            assert "ledger_cache_entries" in text
            assert len(set(re.findall(r'ledger_projection_applied_index\{pid="(\d+)"\}', text))) == 2

        eventually(counted, every=FLUSH_SECONDS)


def test_servers_sharing_a_data_directory_keep_their_own_metrics(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    env = server_env(database_url, tmp_path / "shared", LEDGER_SIGNING_KEY=str(key_file), LEDGER_LOG_ORIGIN=ORIGIN)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def still_serves(base: str, device: str) -> None:
        body = {"device_id": device, "purpose": "telemetry", "action": "grant", "policy_version": 1}
        assert httpx.post(f"{base}/v1/consents", json=body, headers=auth).status_code == 201
        check = httpx.get(f"{base}/v1/check", params={"device_id": device, "purpose": "telemetry"}, headers=auth)
        assert check.status_code == 200
        assert check.json()["allowed"] is True

        def counted() -> None:  # by whichever worker answered, once it has handed its counts over
            scrape = httpx.get(f"{base}/metrics")
            assert scrape.status_code == 200, scrape.text
            assert sample(scrape.text, "ledger_decisions_total", purpose="telemetry", reason="granted") >= 1

        eventually(counted, every=FLUSH_SECONDS)

    with running_server(env, workers=2) as first:
        still_serves(first, "first-0")
        port = first.rpartition(":")[2]
        # One that fails its configuration check after it has set up its own metrics directory,
        # and one on the first one's port.
        broken = ledger("serve", "--port", str(free_port()), env={**env, "LEDGER_KEY_NAME": "another.test/log"})
        assert broken.returncode == 2, broken.stderr
        assert "LEDGER_KEY_NAME" in broken.stderr
        busy = ledger("serve", "--port", port, env=env)
        assert busy.returncode == 2
        assert "already in use" in busy.stderr
        still_serves(first, "first-1")
        with running_server(env) as second:
            still_serves(second, "second-0")
            still_serves(first, "first-2")
        still_serves(first, "first-3")
        # The next start sweeps what the stopped servers left, and nothing of the first one's.
        owned = {p.name for p in (tmp_path / "shared" / "metrics").iterdir()}
        with running_server(env) as third:
            still_serves(third, "third-0")
            left = {p.name for p in (tmp_path / "shared" / "metrics").iterdir()}
            assert len(left) == 4  # the first's and the third's directories, with their locks
            assert owned >= {name for name in left if name.startswith(f"{first.pid}-")}
            assert sum(name.startswith(f"{first.pid}-") for name in left) == 2
        still_serves(first, "first-4")


def test_only_directories_of_servers_that_are_gone_are_removed(tmp_path: Path) -> None:
    holder = (
        "import sys, time; from pathlib import Path; from ledger import metrics_dir; "
        "print(metrics_dir.claim(Path(sys.argv[1])), flush=True); time.sleep(60)"
    )
    alive = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    killed = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert alive.stdout is not None
        assert killed.stdout is not None
        alive_dir, killed_dir = Path(alive.stdout.readline().strip()), Path(killed.stdout.readline().strip())
        (alive_dir / "counter_1.db").write_bytes(b"x")
        killed.kill()  # SIGKILL: no atexit, its directory stays behind
        killed.wait()
        assert killed_dir.exists()
        assert metrics_dir.remove_abandoned(tmp_path) == [killed_dir.name]
        assert not killed_dir.exists()
        assert (alive_dir / "counter_1.db").exists()
        assert metrics_dir.remove_abandoned(tmp_path) == []
    finally:
        alive.kill()
        alive.wait()
    assert metrics_dir.remove_abandoned(tmp_path) == [alive_dir.name]
