"""Policy changes are ledger events (issue 10): the purpose registry is published into the signed log
and every replica switches at its index."""

import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest

from ledger.appender import Appender
from ledger.core.entry import format_time
from ledger.core.note import Signer
from ledger.core.purposes import BUILT_IN, parse_registry
from ledger.errors import UnprocessableRequest
from ledger.keys import read_key_file
from ledger.storage import Stores

from .conftest import ORIGIN, ledger_server
from .helpers import draft
from .receiver import Receiver
from .server import ADMIN_TOKEN, running_server, server_env
from .test_cli import ledger

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STALENESS_MS = 1000
REGISTRY = """
[controller]
name = "Kuku AI"
contact = "support@ssjtech.xyz"

[purposes.telemetry]
title = "Third-party statistics and performance SDKs"
description = "Statistics SDKs."
recipients = ["SDK vendors"]
data_categories = ["device identifiers", "app usage"]
min_policy_version = {version}

[purposes.pixverse_sharing]
title = "Sharing images and prompts with PixVerse"
description = "Videos."
recipients = ["PixVerse"]
data_categories = ["images"]
"""
TOML = {**HEADERS, "Content-Type": "application/toml"}


def registry_text(version: int) -> str:
    return REGISTRY.replace("{version}", str(version))


def grant(device: str, version: int, purpose: str = "telemetry") -> dict[str, object]:
    return {"device_id": device, "purpose": purpose, "action": "grant", "policy_version": version}


def size(http: httpx.Client, base: str) -> int:
    return int(http.get(f"{base}/v1/log/checkpoint").text.split("\n")[1])


def check(http: httpx.Client, base: str, device: str, **params: str) -> dict[str, object]:
    answer = http.get(f"{base}/v1/check", params={"device_id": device, "purpose": "telemetry", **params})
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def drift(base: str) -> float:
    found = re.search(r"^ledger_registry_drift(?:\{[^}]*\})? (\S+)$", httpx.get(f"{base}/metrics").text, re.M)
    assert found is not None
    return float(found.group(1))


def cli_env(database_url: str, key_file: Path) -> dict[str, str]:
    return {"LEDGER_DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(key_file), "LEDGER_LOG_ORIGIN": ORIGIN}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def test_publishing_through_the_api_and_the_cli(
    database_url: str, tmp_path: Path, key_file: Path, receiver: Receiver
) -> None:
    (tmp_path / "v1.toml").write_text(registry_text(1))
    env = {"LEDGER_PURPOSES": str(tmp_path / "v1.toml"), "LEDGER_WEBHOOK_ALLOW_PRIVATE": "true"}
    vkey = read_key_file(key_file).verifier.vkey
    with ledger_server(database_url, tmp_path, key_file, **env) as base, httpx.Client(headers=HEADERS) as http:
        first = http.get(f"{base}/v1/purposes").json()
        assert first["index"] == 0  # the first start published LEDGER_PURPOSES as entry 0
        assert first["purposes"]["telemetry"]["min_policy_version"] == 1
        assert drift(base) == 0
        hook = http.post(f"{base}/v1/webhooks", json={"url": receiver.url, "events": ["registry.published"]})
        assert hook.status_code == 201, hook.text
        assert http.post(f"{base}/v1/consents", json=grant("api-1", 1)).status_code == 201
        before_publish = format_time(datetime.now(UTC))
        time.sleep(0.01)

        published = http.put(f"{base}/v1/purposes", content=registry_text(2), headers=TOML)
        assert published.status_code == 201, published.text
        receipt = published.json()
        token = receipt["consistency_token"]
        assert published.headers["consistency-token"] == token
        assert receipt["entry"]["kind"] == "registry"
        assert receipt["entry"]["registry"]["purposes"]["telemetry"]["min_policy_version"] == 2
        index = receipt["index"]
        in_force = http.get(f"{base}/v1/purposes").json()
        assert (in_force["index"], in_force["recorded_at"]) == (index, receipt["entry"]["recorded_at"])
        assert check(http, base, "api-1", consistency=token)["reason"] == "reconsent_required"
        assert check(http, base, "api-1", at=before_publish)["reason"] == "granted"
        record = http.get(f"{base}/v1/purposes/record").json()
        assert {r["purpose_id"]: r["min_policy_version"] for r in record["purposes"]}["telemetry"] == 2

        # The registry in force again, as TOML or as JSON: 200, nothing appended.
        logged = size(http, base)
        again = http.put(f"{base}/v1/purposes", content=registry_text(2), headers=TOML)
        assert (again.status_code, again.json()["index"]) == (200, index)
        as_json = http.put(f"{base}/v1/purposes", json=msgspec.to_builtins(parse_registry(registry_text(2).encode())))
        assert as_json.status_code == 200, as_json.text
        # What is not a registry: 4xx, nothing appended.
        assert http.put(f"{base}/v1/purposes", content="[purposes.telemetry\ntitle = ", headers=TOML).status_code == 400
        assert http.put(f"{base}/v1/purposes", content=registry_text(0), headers=TOML).status_code == 422
        assert http.put(f"{base}/v1/purposes", json={"purposes": {}}).status_code == 422
        plain = {**HEADERS, "Content-Type": "text/plain"}
        assert http.put(f"{base}/v1/purposes", content=registry_text(3), headers=plain).status_code == 415
        assert size(http, base) == logged

        # Grants are checked against the registry in force.
        assert http.post(f"{base}/v1/consents", json=grant("api-2", 1)).status_code == 422
        assert http.post(f"{base}/v1/consents", json=grant("api-2", 2)).status_code == 201
        history = http.get(f"{base}/v1/purposes/history").json()["versions"]
        assert [v["index"] for v in history] == [0, index]
        assert history[0]["changes"]["added"] == ["pixverse_sharing", "telemetry"]
        assert history[1]["changes"]["changed"] == [
            {"purpose": "telemetry", "fields": ["min_policy_version"], "min_policy_version": [1, 2]}
        ]
        export = http.get(f"{base}/v1/devices/api-1/export").json()
        [shown] = export["grants"]
        assert (shown["registry_index"], shown["record"]["min_policy_version"]) == (0, 1)
        [shown] = http.get(f"{base}/v1/devices/api-2/export").json()["grants"]
        assert (shown["registry_index"], shown["record"]["min_policy_version"]) == (index, 2)
        (tmp_path / "export.json").write_text(json.dumps(export))

        [event] = receiver.wait_for(1, 10)
        body = json.loads(event.body)
        assert (body["type"], body["data"]["index"], body["data"]["consistency_token"]) == (
            "registry.published",
            index,
            token,
        )

        # The registry receipt verifies offline, like a consent's; so does the person's export.
        (tmp_path / "receipt.json").write_text(published.text)
        verified = ledger("verify-receipt", str(tmp_path / "receipt.json"), "--key", vkey, env={})
        assert verified.returncode == 0, verified.stderr
        assert f"OK: entry {index} (registry of pixverse_sharing, telemetry" in verified.stdout
        assert ledger("verify-receipt", str(tmp_path / "export.json"), "--key", vkey, env={}).returncode == 0

        # The CLI: validated first, prints the index, the consistency token last.
        (tmp_path / "v3.toml").write_text(registry_text(3))
        done = ledger("purposes", "publish", str(tmp_path / "v3.toml"), env=cli_env(database_url, key_file))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert f"as log entry {size(http, base) - 1}" in lines[0]
        assert check(http, base, "api-2", consistency=lines[-1])["reason"] == "reconsent_required"
        logged = size(http, base)
        same = ledger("purposes", "publish", str(tmp_path / "v3.toml"), env=cli_env(database_url, key_file))
        assert same.returncode == 0, same.stderr
        assert "nothing appended" in same.stdout
        (tmp_path / "bad.toml").write_text(
            registry_text(3).replace("min_policy_version = 3", "min_policy_version = -1")
        )
        bad = ledger("purposes", "publish", str(tmp_path / "bad.toml"), env=cli_env(database_url, key_file))
        assert bad.returncode == 2
        assert "min_policy_version" in bad.stderr
        assert size(http, base) == logged

    # The whole log, registry entries included, verifies offline, and the state table refolds.
    out = tmp_path / "bundle"
    assert ledger("export", "--out", str(out), env=cli_env(database_url, key_file)).returncode == 0
    verified = ledger("verify", str(out), "--key", vkey, env={})
    assert verified.returncode == 0, verified.stderr
    state = ledger("verify-state", env=cli_env(database_url, key_file))
    assert state.returncode == 0, state.stdout + state.stderr


def test_after_a_publish_no_replica_accepts_a_grant_under_the_old_minimum(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    old = tmp_path / "v1.toml"
    old.write_text(registry_text(1))
    env = server_env(
        database_url,
        tmp_path,
        LEDGER_SIGNING_KEY=str(key_file),
        LEDGER_LOG_ORIGIN=ORIGIN,
        LEDGER_MAX_STALENESS_MS=str(STALENESS_MS),
        LEDGER_PURPOSES=str(old),
    )
    with running_server(env) as a, running_server(env) as b, httpx.Client(headers=HEADERS, timeout=10) as http:
        granted = [http.post(f"{a}/v1/consents", json=grant(f"rep-{n}", 1)).json() for n in range(2)]
        for base in (a, b):  # both hold the grants, answering from their caches
            token = granted[-1]["consistency_token"]
            assert all(check(http, base, f"rep-{n}", consistency=token)["allowed"] for n in range(2))

        published = http.put(f"{a}/v1/purposes", content=registry_text(2), headers=TOML)
        assert published.status_code == 201
        token = published.json()["consistency_token"]
        acknowledged = time.monotonic()

        # Right after: grants under the old minimum on both replicas at once. None is accepted,
        # whether or not a replica's own view has switched yet.
        def post(n: int) -> int:
            base = (a, b)[n % 2]
            return http.post(f"{base}/v1/consents", json=grant(f"late-{n}", 1)).status_code

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(post, range(64)))
        assert statuses.count(201) == 0
        assert set(statuses) == {422}

        # Without the publish's token the other replica switches within the propagation bound ...
        while check(http, b, "rep-1")["reason"] != "reconsent_required":
            assert time.monotonic() - acknowledged < STALENESS_MS / 1000, "still the old registry past the bound"
            time.sleep(0.002)
        # ... and with it every replica answers under the new registry at once.
        for base in (a, b):
            assert check(http, base, "rep-0", consistency=token)["reason"] == "reconsent_required"

        # A replica started from the old file keeps the registry in force and reports the drift.
        with running_server(env) as c:
            in_force = http.get(f"{c}/v1/purposes").json()
            assert in_force["purposes"]["telemetry"]["min_policy_version"] == 2
            assert in_force["index"] == published.json()["index"]
            assert check(http, c, "rep-0")["reason"] == "reconsent_required"
            assert http.post(f"{c}/v1/consents", json=grant("late-c", 1)).status_code == 422
            assert drift(c) == 1
            assert "differs from the registry in force" in c.output()
        assert drift(a) == 0


async def test_an_appender_that_has_not_heard_of_a_publish_still_refuses_under_the_lock(
    store: Stores, key_file: Path
) -> None:
    """The early check of a replica that has not applied a publish yet is only a filter: the
    appender checks every grant against the log's registry under the log lock."""
    signer: Signer = read_key_file(key_file)
    await store.log.register_key(signer.verifier)
    first, second = Appender(store.log, signer, ORIGIN), Appender(store.log, signer, ORIGIN)
    await first.start(seed=BUILT_IN)
    await second.start(seed=BUILT_IN)  # the log has a registry: nothing published twice
    try:
        assert await store.log.log_size() == 1
        await second.append(draft("lock-0", "telemetry"))  # caches the registry at index 0
        raised = parse_registry(registry_text(2).encode())
        published = await first.publish(raised)
        assert published.entry.index == 2  # type: ignore[union-attr]
        with pytest.raises(UnprocessableRequest, match="below telemetry's min_policy_version 2"):
            await second.append(draft("lock-1", "telemetry", policy_version=1))
        with pytest.raises(UnprocessableRequest, match="unknown purpose 'cross_border_transfer'"):
            await second.append(draft("lock-2", "cross_border_transfer", policy_version=5))
        accepted = await second.append(draft("lock-3", "telemetry", policy_version=2))
        assert accepted.entry.index == 3  # type: ignore[union-attr]
        # Withdrawing stays possible under any minimum.
        await second.append(draft("lock-0", "telemetry", action="withdraw"))
    finally:
        await first.stop()
        await second.stop()
