"""The registry changes under running replicas: SIGHUP applies it without a restart or downtime."""

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


def wait_for(predicate, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)


def test_raising_min_policy_version_flips_every_replica_to_reconsent_on_sighup(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    registry = tmp_path / "purposes.toml"
    registry.write_text(REGISTRY.format(version=1))
    settings = {"LEDGER_PURPOSES": str(registry)}
    with (
        ledger_server(database_url, tmp_path / "a", key_file, **settings) as a,
        ledger_server(database_url, tmp_path / "b", key_file, **settings) as b,
    ):
        body = {"device_id": "hup-1", "purpose": "telemetry", "action": "grant", "policy_version": 1}
        token = httpx.post(f"{a}/v1/consents", json=body, headers=HEADERS).json()["consistency_token"]
        for base in (a, b):
            params = {"device_id": "hup-1", "purpose": "telemetry", "consistency": token}
            assert httpx.get(f"{base}/v1/check", params=params, headers=HEADERS).json()["reason"] == "granted"

        registry.write_text(REGISTRY.format(version=2))  # the privacy statement changed
        for base in (a, b):
            os.kill(base.pid, signal.SIGHUP)
        # Old and new workers overlap for a few seconds (that is the "no downtime"); the change is
        # in force once every answer, over new connections, is the new one.
        served_throughout = True
        for base in (a, b):
            streak = 0

            def flipped(base: str = base) -> bool:
                nonlocal served_throughout, streak
                try:
                    streak = streak + 1 if reason(base, "hup-1") == "reconsent_required" else 0
                except httpx.HTTPError:
                    served_throughout = False
                    streak = 0
                return streak >= 30

            wait_for(flipped, 40)
        assert served_throughout, "a check failed while workers were replaced"
        consents = httpx.get(f"{a}/v1/devices/hup-1/consents", headers=HEADERS).json()
        assert consents["purposes"]["telemetry"]["reason"] == "reconsent_required"

        # A broken file is reported and the registry in force stays.
        registry.write_text("[purposes.telemetry]\ntitle = 1\n")
        os.kill(a.pid, signal.SIGHUP)
        time.sleep(6)
        assert reason(a, "hup-1") == "reconsent_required"
        assert httpx.get(f"{a}/health/ready").status_code == 200
