"""Standard Webhooks signing, the retry schedule, outcomes, destinations and the outbox rows."""

import base64
import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nacl.signing import SigningKey
from standardwebhooks import Webhook

from ledger.core.checkpoint import Checkpoint
from ledger.core.entry import Entry
from ledger.core.webhooks import (
    MAX_ATTEMPTS,
    RETRY_DELAYS,
    DestinationRefused,
    Subscription,
    build_deliveries,
    check_destination,
    new_secret,
    next_step,
    parse_retry_after,
    retry_delay,
    signature_header,
    signed_content,
)

KEY = SigningKey(bytes(32))


def test_v1_matches_the_standardwebhooks_library_and_v1a_verifies_with_pynacl() -> None:
    secret = new_secret()
    body = b'{"type":"consent.withdrawn"}'
    header = signature_header("msg_1", 1_700_000_000, body, [secret], KEY)
    v1, v1a = header.split(" ")
    theirs = Webhook(secret).sign("msg_1", datetime.fromtimestamp(1_700_000_000, UTC), body.decode())
    assert v1 == theirs
    signature = base64.b64decode(v1a.removeprefix("v1a,"))
    KEY.verify_key.verify(signed_content("msg_1", 1_700_000_000, body), signature)


def test_during_a_rotation_both_secrets_sign() -> None:
    old, new = new_secret(), new_secret()
    header = signature_header("msg_2", 1_700_000_000, b"{}", [new, old], KEY)
    assert [p.split(",")[0] for p in header.split(" ")] == ["v1", "v1", "v1a"]
    assert new.startswith("whsec_")
    assert len(base64.b64decode(new.removeprefix("whsec_"))) == 32


def test_retry_schedule_and_jitter() -> None:
    assert RETRY_DELAYS[0] == timedelta(seconds=5)
    assert RETRY_DELAYS[-1] == timedelta(hours=24)
    assert MAX_ATTEMPTS == 10
    assert retry_delay(1, 0) == timedelta(seconds=5)
    assert retry_delay(1, 1) == timedelta(seconds=5.5)
    assert retry_delay(1, -1) == timedelta(seconds=4.5)
    assert retry_delay(2, 0) == timedelta(minutes=5)
    assert retry_delay(9, 0) == timedelta(hours=24)
    assert retry_delay(10, 0) is None


@pytest.mark.parametrize(
    ("status", "retry_after", "attempts", "failing_for", "expected"),
    [
        (200, None, 1, None, ("delivered", None)),
        (204, None, 9, timedelta(days=9), ("delivered", None)),
        (410, None, 1, None, ("disabled", None)),
        (302, None, 1, None, ("retry", timedelta(seconds=5))),
        (500, None, 2, None, ("retry", timedelta(minutes=5))),
        (None, None, 1, None, ("retry", timedelta(seconds=5))),
        (429, timedelta(minutes=2), 1, None, ("retry", timedelta(minutes=2))),
        (503, timedelta(seconds=1), 2, None, ("retry", timedelta(minutes=5))),
        (500, timedelta(minutes=2), 1, None, ("retry", timedelta(seconds=5))),
        (500, None, 10, None, ("dead", None)),
        (500, None, 3, timedelta(days=5), ("disabled", None)),
    ],
)
def test_next_step(status, retry_after, attempts, failing_for, expected) -> None:  # type: ignore[no-untyped-def]
    step = next_step(status, retry_after, attempts, failing_for, 0.0)
    assert (step.outcome, step.next_attempt_in) == expected


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    assert parse_retry_after("120", now) == timedelta(seconds=120)
    assert parse_retry_after("Sun, 29 Nov 2026 12:01:00 GMT", now) == timedelta(minutes=1)
    assert parse_retry_after("Sun, 29 Nov 2026 11:00:00 GMT", now) == timedelta(0)
    assert parse_retry_after("999999999", now) == timedelta(hours=24)
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "::1", "fe80::1%eth0",
     "fc00::1", "0.0.0.0", "::ffff:127.0.0.1", "100.64.0.1", "224.0.0.1"],
)  # fmt: skip
def test_internal_addresses_are_refused(address: str) -> None:
    with pytest.raises(DestinationRefused):
        check_destination("https", [address], allow_private=False)
    check_destination("https", [address], allow_private=True)


def test_public_https_only_and_every_address_must_be_public() -> None:
    check_destination("https", ["93.184.216.34", "2606:2800:220:1::1"], allow_private=False)
    with pytest.raises(DestinationRefused, match="https"):
        check_destination("http", ["93.184.216.34"], allow_private=False)
    with pytest.raises(DestinationRefused):
        check_destination("https", ["93.184.216.34", "10.0.0.1"], allow_private=False)
    with pytest.raises(DestinationRefused):
        check_destination("https", [], allow_private=False)
    with pytest.raises(DestinationRefused):
        check_destination("ftp", ["127.0.0.1"], allow_private=True)


def entry(index: int, subject: str, purpose: str, action: str) -> Entry:
    return msgspec.convert(
        {
            "v": 1, "id": f"00000000-0000-4000-8000-{index:012d}", "index": index, "subject": subject,
            "purpose": purpose, "action": action, "policy_version": 1,
            "occurred_at": "2026-11-29T10:00:00.000000Z", "recorded_at": "2026-11-29T10:00:01.000000Z",
            "actor": "user", "method": "settings", "evidence": {},
        },
        Entry,
    )  # fmt: skip


def test_outbox_rows_follow_subscriptions_and_count_sequences() -> None:
    a, b = "a" * 64, "b" * 64
    entries = [
        (entry(10, a, "telemetry", "grant"), "dev-a"),
        (entry(11, a, "telemetry", "withdraw"), "dev-a"),
        (entry(12, b, "pixverse_sharing", "withdraw"), "dev-b"),
    ]
    subscriptions = [
        Subscription("s-withdrawn", ["consent.withdrawn"], None),
        Subscription("s-telemetry", ["consent.withdrawn", "consent.granted"], ["telemetry"]),
        Subscription("s-checkpoints", ["log.checkpoint"], None),
    ]
    checkpoint = Checkpoint("o", 13, bytes(32))
    sequences = {(a, "telemetry"): 7, (b, "pixverse_sharing"): 1}
    rows = build_deliveries(entries, sequences, subscriptions, checkpoint, "note", "2026-11-29T10:00:01.000000Z")
    assert [(r.subscription_id, r.event_type, r.idx) for r in rows] == [
        ("s-telemetry", "consent.granted", 10),
        ("s-withdrawn", "consent.withdrawn", 11),
        ("s-telemetry", "consent.withdrawn", 11),
        ("s-withdrawn", "consent.withdrawn", 12),
        ("s-checkpoints", "log.checkpoint", 12),
    ]
    bodies = [json.loads(r.payload) for r in rows]
    assert [b["data"].get("sequence") for b in bodies] == [6, 7, 7, 1, None]
    assert bodies[1]["data"]["device_id"] == "dev-a"
    assert bodies[1]["type"] == "consent.withdrawn"
    assert set(bodies[1]["data"]) == {
        "device_id", "subject", "purpose", "action", "index", "policy_version", "occurred_at", "recorded_at",
        "sequence", "consistency_token",
    }  # fmt: skip
    # A receiver that checks back on any replica can ask it to read at least as far as the event.
    assert {b["data"]["consistency_token"] for b in bodies} == {"ct1.13"}
    assert bodies[4]["data"] == {
        "origin": "o",
        "tree_size": 13,
        "root": base64.b64encode(bytes(32)).decode(),
        "checkpoint": "note",
        "consistency_token": "ct1.13",
    }
    assert len({r.id for r in rows}) == len(rows)
    assert build_deliveries(entries, sequences, [], checkpoint, "note", "t") == []
