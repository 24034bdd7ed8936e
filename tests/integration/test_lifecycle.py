"""The registry under a running server: SIGHUP no longer reloads it (issue 10); publishing changes it."""

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx

from .conftest import ledger_server
from .server import ADMIN_TOKEN

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
REGISTRY = """
[purposes.telemetry]
title = "Third-party statistics and performance SDKs"
description = "Statistics SDKs."
recipients = ["SDK vendors"]
data_categories = ["device identifiers", "app usage"]
min_policy_version = {version}
"""


def reason(base: str, device: str) -> str:
    return str(
        httpx.get(f"{base}/v1/check", params={"device_id": device, "purpose": "telemetry"}, headers=HEADERS).json()[
            "reason"
        ]
    )


def test_sighup_leaves_the_registry_in_force_and_a_publish_changes_it(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    registry = tmp_path / "purposes.toml"
    registry.write_text(REGISTRY.format(version=1))
    with ledger_server(database_url, tmp_path / "a", key_file, LEDGER_PURPOSES=str(registry)) as a:
        body = {"device_id": "hup-1", "purpose": "telemetry", "action": "grant", "policy_version": 1}
        assert httpx.post(f"{a}/v1/consents", json=body, headers=HEADERS).status_code == 201
        assert reason(a, "hup-1") == "granted"

        # The file changes and the server gets SIGHUP: its workers are replaced, but the registry
        # is the log's, so nothing flips (the old way let answers flip between workers).
        registry.write_text(REGISTRY.format(version=2))
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):  # a connection to a worker being replaced
                assert reason(a, "hup-1") == "granted"
            time.sleep(0.1)
        assert httpx.get(f"{a}/v1/purposes", headers=HEADERS).json()["purposes"]["telemetry"]["min_policy_version"] == 1

        published = httpx.put(
            f"{a}/v1/purposes",
            content=registry.read_bytes(),
            headers={**HEADERS, "Content-Type": "application/toml"},
        )
        assert published.status_code == 201, published.text
        assert reason(a, "hup-1") == "reconsent_required"
