"""/metrics through a server with two worker processes: totals are summed across workers."""

import re
import time
from pathlib import Path

import httpx

from ledger.metrics import FLUSH_SECONDS

from .conftest import ORIGIN
from .server import ADMIN_TOKEN, running_server, server_env


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

        # Each worker hands its counts over every FLUSH_SECONDS; the other worker may be that late.
        time.sleep(2 * FLUSH_SECONDS)
        response = http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert sample(text, "ledger_decisions_total", purpose="pixverse_sharing", reason="no_consent") == 30
        assert sample(text, "ledger_appends_total") == 6
        assert sample(text, "ledger_append_batch_size_count") == 6
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
