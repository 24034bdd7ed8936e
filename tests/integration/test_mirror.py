"""ledger.client.Mirror against a real server and its watch stream: misses filled at the stream's
position, withdrawals, erasures and registry publishes applied, read-your-writes, local expiry,
and failing closed when the server stops or freezes."""

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import pytest
from prometheus_client import CollectorRegistry

from ledger.client import LedgerClient, Mirror, RequestRejected, Stale
from ledger.core.entry import format_time

from .conftest import ORIGIN, ledger_server
from .server import ADMIN_TOKEN, free_port, running_server, server_env

PIXVERSE = "pixverse_sharing"


def grant(ledger: LedgerClient, device: str, purpose: str = PIXVERSE, **extra: object) -> dict:
    return ledger.record(device_id=device, purpose=purpose, action="grant", policy_version=1, **extra)


def withdraw(ledger: LedgerClient, device: str, purpose: str = PIXVERSE) -> dict:
    return ledger.record(device_id=device, purpose=purpose, action="withdraw", policy_version=1)


def until(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.01)


@pytest.fixture
def ledger(base_url: str) -> Iterator[LedgerClient]:
    with LedgerClient(base_url, token=ADMIN_TOKEN) as client:
        yield client


@pytest.fixture
def mirror(base_url: str) -> Iterator[Mirror]:
    with Mirror(base_url, token=ADMIN_TOKEN) as m:
        assert m.fresh, "the first heartbeat comes at once"
        yield m


def test_a_miss_is_fetched_once_then_answered_from_memory(ledger: LedgerClient, mirror: Mirror) -> None:
    grant(ledger, "dev-1", "telemetry")
    receipt = grant(ledger, "dev-1")
    assert mirror.wait_for(receipt["consistency_token"], 5)
    assert mirror.allowed("dev-1", PIXVERSE)
    assert mirror.stats().misses == 1
    for _ in range(100):
        assert mirror.allowed("dev-1", PIXVERSE)
    assert not mirror.allowed("dev-2", PIXVERSE)  # no consent: a miss, then held too
    assert not mirror.allowed("dev-2", PIXVERSE)
    stats = mirror.stats()
    assert (stats.misses, stats.hits, stats.size) == (2, 101, 2)
    decision = mirror.decision("dev-1", PIXVERSE)
    assert (decision.allowed, decision.reason, decision.index) == (True, "granted", receipt["index"])
    assert decision == ledger.check("dev-1", PIXVERSE)


def test_a_miss_batches_the_other_purposes_held(ledger: LedgerClient, mirror: Mirror) -> None:
    assert not mirror.allowed("dev-0", "cross_border_transfer")
    grant(ledger, "dev-1", "cross_border_transfer")
    receipt = grant(ledger, "dev-1")
    assert mirror.wait_for(receipt["consistency_token"], 5)
    assert mirror.allowed("dev-1", PIXVERSE)  # one fetch brings cross_border_transfer too
    assert mirror.allowed("dev-1", "cross_border_transfer")
    assert mirror.stats().misses == 2


def test_a_withdrawal_is_refused_once_the_stream_passed_its_token(ledger: LedgerClient, mirror: Mirror) -> None:
    for n in range(20):
        device = f"dev-w{n}"
        granted = grant(ledger, device)
        assert mirror.wait_for(granted["consistency_token"], 5)
        assert mirror.allowed(device, PIXVERSE)
        receipt = withdraw(ledger, device)
        assert mirror.wait_for(receipt["consistency_token"], 5)
        assert not mirror.allowed(device, PIXVERSE)  # at once: no sleep, no fetch
        assert mirror.decision(device, PIXVERSE).reason == "withdrawn"
    assert mirror.stats().misses == 20


def test_an_erasure_drops_the_device(ledger: LedgerClient, mirror: Mirror, base_url: str) -> None:
    grant(ledger, "dev-e", "telemetry")
    receipt = grant(ledger, "dev-e")
    mirror.wait_for(receipt["consistency_token"], 5)
    assert mirror.allowed("dev-e", PIXVERSE)
    assert mirror.allowed("dev-e", "telemetry")
    erased = httpx.post(f"{base_url}/v1/devices/dev-e/erase", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert erased.status_code == 201, erased.text
    assert mirror.wait_for(erased.json()["consistency_token"], 5)
    assert mirror.stats().size == 0
    assert not mirror.allowed("dev-e", PIXVERSE)
    assert mirror.decision("dev-e", "telemetry").reason == "erased"


def test_a_registry_publish_drops_everything(ledger: LedgerClient, mirror: Mirror, base_url: str) -> None:
    receipt = grant(ledger, "dev-r")
    mirror.wait_for(receipt["consistency_token"], 5)
    assert mirror.allowed("dev-r", PIXVERSE)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    registry = httpx.get(f"{base_url}/v1/purposes", headers=admin).json()
    registry["purposes"][PIXVERSE]["min_policy_version"] = 2
    published = httpx.put(
        f"{base_url}/v1/purposes",
        json={"controller": registry["controller"], "purposes": registry["purposes"]},
        headers=admin,
    )
    assert published.status_code == 201, published.text
    assert mirror.wait_for(published.headers["consistency-token"], 5)
    assert not mirror.allowed("dev-r", PIXVERSE)
    assert mirror.decision("dev-r", PIXVERSE).reason == "reconsent_required"


def test_an_expiring_grant_is_refused_locally_once_past(ledger: LedgerClient, mirror: Mirror) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=1.5)
    receipt = grant(ledger, "dev-x", expires_at=format_time(expires))
    mirror.wait_for(receipt["consistency_token"], 5)
    assert mirror.allowed("dev-x", PIXVERSE)
    until(lambda: datetime.now(UTC) > expires, 5, "the expiry")
    misses = mirror.stats().misses
    assert not mirror.allowed("dev-x", PIXVERSE)
    decision = mirror.decision("dev-x", PIXVERSE)
    assert (decision.reason, decision.expires_at) == ("expired", format_time(expires))
    assert mirror.stats().misses == misses  # answered from memory


def test_wait_for_gives_up_after_its_timeout(mirror: Mirror) -> None:
    assert not mirror.wait_for("ct1.999999", 0.05)


def test_malformed_input_is_refused_without_asking(mirror: Mirror) -> None:
    assert not mirror.allowed("bad id", PIXVERSE)
    with pytest.raises(RequestRejected):
        mirror.decision("dev-1", "Not-A-Purpose")
    with pytest.raises(RequestRejected):
        mirror.decision("dev-1", "no_such_purpose")  # the ledger's 422
    assert mirror.stats().size == 0


def test_the_collector_reports_the_mirror(ledger: LedgerClient, mirror: Mirror) -> None:
    mirror.allowed("dev-m", PIXVERSE)
    mirror.allowed("dev-m", PIXVERSE)
    registry = CollectorRegistry()
    registry.register(mirror.collector())
    assert registry.get_sample_value("ledger_mirror_hits_total") == 1
    assert registry.get_sample_value("ledger_mirror_misses_total") == 1
    assert registry.get_sample_value("ledger_mirror_decisions") == 1
    assert registry.get_sample_value("ledger_mirror_connected") == 1
    lag = registry.get_sample_value("ledger_mirror_lag_seconds")
    assert lag is not None
    assert 0 <= lag < mirror.max_staleness


# -- failing closed ------------------------------------------------------------------------


def processes(pid: int) -> list[psutil.Process]:
    parent = psutil.Process(pid)
    return [parent, *parent.children(recursive=True)]


def test_a_mirror_fails_closed_when_the_server_stops_and_recovers_after(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    with ledger_server(database_url, tmp_path, key_file) as url, LedgerClient(url, token=ADMIN_TOKEN) as ledger:
        receipt = grant(ledger, "dev-s")
        mirror = Mirror(url, token=ADMIN_TOKEN, max_staleness=1.5)
        with mirror:
            mirror.wait_for(receipt["consistency_token"], 5)
            assert mirror.allowed("dev-s", PIXVERSE)
            os.kill(url.pid, signal.SIGTERM)
            psutil.Process(url.pid).wait(20)
            until(lambda: not mirror.allowed("dev-s", PIXVERSE), 1.5 + 2, "refusing a held grant")
            with pytest.raises(Stale):
                mirror.decision("dev-s", PIXVERSE)
            assert not mirror.allowed("dev-other", PIXVERSE)
            assert mirror.stats().reconnects >= 1


def test_a_mirror_fails_closed_when_the_server_freezes_and_recovers_after(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    with ledger_server(database_url, tmp_path, key_file) as url, LedgerClient(url, token=ADMIN_TOKEN) as ledger:
        receipt = grant(ledger, "dev-f")
        with Mirror(url, token=ADMIN_TOKEN, max_staleness=1.5) as mirror:
            mirror.wait_for(receipt["consistency_token"], 5)
            assert mirror.allowed("dev-f", PIXVERSE)
            frozen = processes(url.pid)
            for process in frozen:
                process.send_signal(signal.SIGSTOP)
            try:
                until(lambda: not mirror.allowed("dev-f", PIXVERSE), 1.5 + 2, "refusing a held grant")
                started = time.monotonic()
                assert not mirror.allowed("dev-never-seen", PIXVERSE)  # a miss cannot be fetched
                assert time.monotonic() - started < 1.5 + 1, "a miss waits at most max_staleness"
            finally:
                for process in frozen:
                    process.send_signal(signal.SIGCONT)
            # Thawed: the stream comes back (resumed from its last id) and answers again.
            until(lambda: mirror.allowed("dev-f", PIXVERSE), 15, "answering again")
            receipt = withdraw(ledger, "dev-f")
            assert mirror.wait_for(receipt["consistency_token"], 5)
            assert not mirror.allowed("dev-f", PIXVERSE)


def test_a_mirror_resumes_after_a_restart_with_what_happened_meanwhile(
    database_url: str, tmp_path: Path, key_file: Path
) -> None:
    """The mirror's server stops; a withdrawal is recorded on another server of the same log;
    the mirror's server comes back on its port: the stream resumes from the mirror's last id
    and delivers the withdrawal (the key is held, so only the stream can change it)."""
    port = free_port()
    env = server_env(database_url, tmp_path, LEDGER_SIGNING_KEY=str(key_file), LEDGER_LOG_ORIGIN=ORIGIN)
    with running_server(env, port=port) as url, LedgerClient(url, token=ADMIN_TOKEN) as ledger:
        receipt = grant(ledger, "dev-k")
        mirror = Mirror(url, token=ADMIN_TOKEN)
        mirror.start()
        mirror.wait_for(receipt["consistency_token"], 5)
        assert mirror.allowed("dev-k", PIXVERSE)
    try:
        with running_server(env) as other, LedgerClient(other, token=ADMIN_TOKEN) as ledger:
            withdrawn = withdraw(ledger, "dev-k")
        with running_server(env, port=port):
            assert mirror.wait_for(withdrawn["consistency_token"], 15)
            assert not mirror.allowed("dev-k", PIXVERSE)
            assert mirror.decision("dev-k", PIXVERSE).reason == "withdrawn"
            assert mirror.stats().misses == 1  # the first ask only: the stream brought the change
    finally:
        mirror.close()


def test_warm_fetches_ahead_in_batches(ledger: LedgerClient, mirror: Mirror) -> None:
    receipt = grant(ledger, "dev-warm-1")
    assert mirror.wait_for(receipt["consistency_token"], 5)
    pairs = [(f"dev-warm-{n}", PIXVERSE) for n in range(1500)]
    assert mirror.warm(pairs) == 1500
    assert mirror.allowed("dev-warm-1", PIXVERSE)
    assert not mirror.allowed("dev-warm-2", PIXVERSE)
    stats = mirror.stats()
    assert (stats.misses, stats.size) == (0, 1500)


def test_a_mirror_stays_fresh_while_events_stream(ledger: LedgerClient, mirror: Mirror) -> None:
    """Heartbeats keep coming while changes flow: the server sends one every 0.5 s whether or not
    events do, so a busy stream is never mistaken for a silent one."""
    held = [f"dev-busy-{n}" for n in range(8)]
    mirror.warm((d, PIXVERSE) for d in held)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            grant(ledger, held[n % len(held)])  # every event is for a held key
            n += 1

    writer = threading.Thread(target=write)
    writer.start()
    unfresh = 0
    try:
        deadline = time.monotonic() + mirror.max_staleness * 2
        while time.monotonic() < deadline:
            unfresh += not mirror.fresh
            time.sleep(0.01)
    finally:
        stop.set()
        writer.join()
    assert unfresh == 0
    assert mirror.stats().position is not None
