"""Two real server processes on one PostgreSQL: a withdrawal on one is refused by the other."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import ORIGIN
from .server import ADMIN_TOKEN, running_server, server_env

HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STALENESS_MS = 1000


@pytest.fixture
def replicas(database_url: str, tmp_path: Path, key_file: Path) -> Iterator[tuple[str, str]]:
    env = server_env(
        database_url,
        tmp_path,
        LEDGER_SIGNING_KEY=str(key_file),
        LEDGER_LOG_ORIGIN=ORIGIN,
        LEDGER_MAX_STALENESS_MS=str(STALENESS_MS),
    )
    with running_server(env) as a, running_server(env, workers=2) as b:
        yield a, b


def body(device: str, action: str) -> dict[str, object]:
    return {"device_id": device, "purpose": "pixverse_sharing", "action": action, "policy_version": 1}


def test_withdrawal_on_one_replica_is_refused_by_the_other(replicas: tuple[str, str]) -> None:
    a, b = replicas
    with httpx.Client(headers=HEADERS, timeout=10) as http:
        for round_ in range(10):
            device = f"replica-{round_}"
            granted = http.post(f"{a}/v1/consents", json=body(device, "grant")).json()
            check = {"device_id": device, "purpose": "pixverse_sharing", "consistency": granted["consistency_token"]}
            assert http.get(f"{b}/v1/check", params=check).json()["allowed"] is True
            # B has the grant cached now; A records the withdrawal.
            withdrawn = http.post(f"{a}/v1/consents", json=body(device, "withdraw"))
            assert withdrawn.status_code == 201
            token = withdrawn.json()["consistency_token"]
            assert withdrawn.headers["consistency-token"] == token
            # With the writer's token: refused at once (B waits until it has applied the withdrawal).
            answer = http.get(f"{b}/v1/check", params={**check, "consistency": token}).json()
            assert (answer["allowed"], answer["reason"]) == (False, "withdrawn")


def test_without_the_token_the_other_replica_refuses_within_the_staleness_bound(replicas: tuple[str, str]) -> None:
    a, b = replicas
    with httpx.Client(headers=HEADERS, timeout=10) as http:
        device = "replica-no-token"
        granted = http.post(f"{a}/v1/consents", json=body(device, "grant")).json()
        params = {"device_id": device, "purpose": "pixverse_sharing"}
        assert http.get(f"{b}/v1/check", params={**params, "consistency": granted["consistency_token"]}).json()[
            "allowed"
        ]
        assert http.post(f"{a}/v1/consents", json=body(device, "withdraw")).status_code == 201
        acknowledged = time.monotonic()
        while http.get(f"{b}/v1/check", params=params).json()["allowed"]:
            assert time.monotonic() - acknowledged < STALENESS_MS / 1000, "still allowed past the staleness bound"
            time.sleep(0.002)
