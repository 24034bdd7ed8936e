"""Standard Webhooks signing, the retry schedule, outcomes, destinations and the outbox rows."""

import base64
import ipaddress
import json
from collections.abc import Callable
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
    destination_refusal,
    embedded_ipv4,
    new_secret,
    next_step,
    parse_retry_after,
    retry_delay,
    rfc6052_ipv4,
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


# --- IPv6 forms that carry an IPv4 address (issue 11: the SSRF filter let them through) ---------


def v4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def v6(value: int) -> str:
    return str(ipaddress.IPv6Address(value))


def rfc6052(prefix: str, length: int, ipv4: str) -> str:
    """An IPv4-embedded IPv6 address built octet by octet from RFC 6052's figure 1 (section 2.2):
    the IPv4 octets fill the octets after the prefix, skipping octet 8 (bits 64-71, "u")."""
    octets = bytearray(ipaddress.IPv6Address(prefix).packed)
    position = length // 8
    for octet in ipaddress.IPv4Address(ipv4).packed:
        if position == 8:
            position += 1
        octets[position] = octet
        position += 1
    return str(ipaddress.IPv6Address(bytes(octets)))


# Each form with the IPv4 address it carries, and whether it may carry a public one: only where the
# form itself is routable. IPv4-mapped is how a dual-stack socket names an IPv4 peer; the NAT64
# well-known prefix is for public IPv4 addresses only (RFC 6052 3.1) and its gateway reaches them.
# The rest are refused whatever they carry: IPv4-compatible is deprecated (RFC 4291), SIIT's
# translated form is not routed, the NAT64 local-use prefix is not globally reachable (RFC 8215),
# 6to4's relays are deprecated (RFC 7526; IANA: reachability N/A, and Python >= 3.11.10 calls it
# not global), Teredo is a client tunnel through a NAT whose far end can be anything.
FORMS: dict[str, tuple[Callable[[str], str], bool]] = {
    "IPv4-compatible ::a.b.c.d": (lambda a: v6(v4(a)), False),
    "IPv4-mapped ::ffff:a.b.c.d": (lambda a: v6(0xFFFF << 32 | v4(a)), True),
    "IPv4-translated ::ffff:0:a.b.c.d": (lambda a: v6(0xFFFF << 48 | v4(a)), False),
    "NAT64 64:ff9b::/96": (lambda a: rfc6052("64:ff9b::", 96, a), True),
    "NAT64 local-use /96": (lambda a: rfc6052("64:ff9b:1::", 96, a), False),
    "NAT64 local-use /64": (lambda a: rfc6052("64:ff9b:1::", 64, a), False),
    "NAT64 local-use /56": (lambda a: rfc6052("64:ff9b:1::", 56, a), False),
    "NAT64 local-use /48": (lambda a: rfc6052("64:ff9b:1::", 48, a), False),
    "6to4 2002::/16": (lambda a: v6(0x2002 << 112 | v4(a) << 80 | 1), False),
    # Teredo: server in bits 32-63, the client's address inverted in the last 32 bits.
    "Teredo server": (
        lambda a: v6(0x20010000 << 96 | v4(a) << 64 | 0x8000_63BF << 32 | v4("8.8.4.4") ^ 0xFFFFFFFF),
        False,
    ),
    "Teredo client": (
        lambda a: v6(0x20010000 << 96 | v4("8.8.4.4") << 64 | 0x8000_63BF << 32 | v4(a) ^ 0xFFFFFFFF),
        False,
    ),
}
INTERNAL_IPV4 = {
    "127.0.0.1": "loopback",
    "10.1.2.3": "private",
    "172.16.5.4": "private",
    "172.31.255.254": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "169.254.169.254": "link-local",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "0.0.0.0": "unspecified",
    "240.0.0.1": "reserved",
    "255.255.255.255": "broadcast",
    "192.0.2.1": "documentation",
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("ipv4", INTERNAL_IPV4)
def test_every_ipv6_form_that_embeds_an_internal_ipv4_address_is_refused(form: str, ipv4: str) -> None:
    embed, _ = FORMS[form]
    address = embed(ipv4)
    # ::0.0.0.0 is ::, the IPv6 unspecified address, refused as itself.
    named = "unspecified" if address == "::" else ipv4
    if address != "::":
        assert ipaddress.IPv4Address(ipv4) in [e.ipv4 for e in embedded_ipv4(ipaddress.IPv6Address(address))]
    with pytest.raises(DestinationRefused, match="not a public address") as refused:
        check_destination("https", [address], allow_private=False)
    assert named in str(refused.value), "the message names the embedded address"
    # Also behind a public address: every resolved address must pass.
    with pytest.raises(DestinationRefused):
        check_destination("https", ["2001:4860:4860::8888", address], allow_private=False)
    check_destination("https", [address], allow_private=True)


@pytest.mark.parametrize("form", FORMS)
def test_a_public_ipv4_is_accepted_only_in_a_routable_form(form: str) -> None:
    embed, routable = FORMS[form]
    address = embed("8.8.8.8")
    assert ipaddress.IPv4Address("8.8.8.8") in [e.ipv4 for e in embedded_ipv4(ipaddress.IPv6Address(address))]
    if routable:
        check_destination("https", [address], allow_private=False)
    else:
        with pytest.raises(DestinationRefused, match="not a public address"):
            check_destination("https", [address], allow_private=False)


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        # The four addresses of the issue.
        ("::127.0.0.1", "127.0.0.1"),
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("64:ff9b:1::a00:1", "10.0.0.1"),
        ("2002:7f00:1::", "127.0.0.1"),
        # RFC 4380's example Teredo address: server 65.54.227.120, client 192.0.2.45 (documentation).
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
    ],
)
def test_the_reported_addresses_are_refused_and_the_message_names_what_they_embed(address: str, embedded: str) -> None:
    why = destination_refusal(address)
    assert why is not None
    assert embedded in why


@pytest.mark.parametrize(
    "address",
    ["::1", "::", "fe80::1", "fe80::1%eth0", "fec0::1", "fc00::1", "fd12:3456::1", "ff02::1", "ff0e::1",
     "2001:db8::1", "3fff::1", "100::1", "2001:2::1", "5f00::1", "4000::1", "::ffff:0:0"],
)  # fmt: skip
def test_non_global_ipv6_addresses_are_refused(address: str) -> None:
    with pytest.raises(DestinationRefused, match="not a public address"):
        check_destination("https", [address], allow_private=False)


@pytest.mark.parametrize("address", ["2001:4860:4860::8888", "2606:4700:4700::1111", "2a00:1450:4001:80e::200e"])
def test_plain_public_ipv6_is_accepted(address: str) -> None:
    assert embedded_ipv4(ipaddress.IPv6Address(address)) == []
    check_destination("https", [address], allow_private=False)


@pytest.mark.parametrize(
    ("length", "address"),
    [
        # RFC 6052 section 2.4's table: 192.0.2.33 under each prefix length.
        (32, "2001:db8:c000:221::"),
        (40, "2001:db8:1c0:2:21::"),
        (48, "2001:db8:122:c000:2:2100::"),
        (56, "2001:db8:122:3c0:0:221::"),
        (64, "2001:db8:122:344:c0:2:2100:0"),
        (96, "2001:db8:122:344::192.0.2.33"),
    ],
)
def test_rfc6052_extraction_matches_the_rfc_examples(length: int, address: str) -> None:
    assert rfc6052_ipv4(ipaddress.IPv6Address(address), length) == ipaddress.IPv4Address("192.0.2.33")


@pytest.mark.parametrize("length", [32, 40, 48, 56, 64, 96])
@pytest.mark.parametrize("ipv4", ["1.2.3.4", "255.0.255.0", "10.200.30.4", "8.8.8.8"])
def test_rfc6052_extraction_inverts_the_placement(length: int, ipv4: str) -> None:
    address = rfc6052("2001:db8:122:344::", length, ipv4)
    assert rfc6052_ipv4(ipaddress.IPv6Address(address), length) == ipaddress.IPv4Address(ipv4)
    with pytest.raises(ValueError):
        rfc6052_ipv4(ipaddress.IPv6Address(address), 80)


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
