"""The watch stream's events: exact frames, one-line JSON, ids that name the position after them."""

import json

import msgspec
import pytest

from ledger.core.entry import entry_bytes
from ledger.core.purposes import BUILT_IN, Registry
from ledger.core.registry import registry_entry, registry_entry_bytes
from ledger.core.watch import (
    RETRY,
    ConsentChange,
    ErasureChange,
    RegistryChange,
    change_of,
    change_of_row,
    decision_frame,
    erasure_frame,
    heartbeat_frame,
    registry_frame,
    resync_frame,
)
from tests.sse import parse, parse_block

from .test_entry import SUBJECT, make

AT = "2026-11-29T10:00:00.000000Z"
DECISION = (
    b'{"device_id":"d-1","purpose":"telemetry","allowed":false,"reason":"withdrawn","policy_version":1,'
    b'"since":"2026-11-28T10:00:00.000000Z","expires_at":null,"index":41}'
)


def lines(frame: bytes) -> list[str]:
    assert frame.endswith(b"\n\n"), "a frame ends with a blank line"
    return frame.decode()[:-2].split("\n")


def test_the_stream_starts_by_asking_for_reconnects_after_one_second() -> None:
    assert RETRY == b"retry: 1000\n\n"
    assert parse_block(RETRY.decode()[:-2]) == (None, 1000)


def test_a_decision_event_is_named_by_the_position_after_its_entry_and_carries_the_check_answer() -> None:
    frame = decision_frame(41, "d-1", "telemetry", DECISION)
    assert lines(frame) == [
        "event: decision",
        "id: ct1.42",
        'data: {"type":"decision","device_id":"d-1","purpose":"telemetry","index":41,"decision":'
        + DECISION.decode()
        + "}",
    ]
    [message] = parse(frame.decode())
    assert message.data["decision"] == json.loads(DECISION)


def test_an_erasure_names_the_device_or_null_when_it_cannot_be_known() -> None:
    assert lines(erasure_frame(6, "d-9")) == [
        "event: erasure",
        "id: ct1.7",
        'data: {"type":"erasure","device_id":"d-9","index":6}',
    ]
    [message] = parse(erasure_frame(6, None).decode())
    assert message.data == {"type": "erasure", "device_id": None, "index": 6}


def test_a_registry_event_holds_what_get_purposes_answers_in_one_line_even_with_newlines_in_texts() -> None:
    purposes = dict(BUILT_IN.purposes)
    purposes["telemetry"] = msgspec.structs.replace(purposes["telemetry"], description="two\nlines\r\nand more")
    entry = registry_entry("00000000-0000-0000-0000-000000000003", 3, AT, Registry(purposes=purposes))
    frame = registry_frame(entry)
    event, id_, data = lines(frame)
    assert (event, id_) == ("event: registry", "id: ct1.4")
    assert data.startswith('data: {"type":"registry","index":3,')
    [message] = parse(frame.decode())
    logged = msgspec.to_builtins(entry.registry)
    assert message.data == {"type": "registry", "index": 3, "recorded_at": AT, **logged}
    assert message.data["purposes"]["telemetry"]["description"] == "two\nlines\r\nand more"


def test_heartbeats_and_resyncs_are_named_by_the_size_they_cover() -> None:
    assert lines(heartbeat_frame(0)) == ["event: heartbeat", "id: ct1.0", 'data: {"type":"heartbeat","size":0}']
    assert lines(resync_frame(12, "slow consumer: behind")) == [
        "event: resync",
        "id: ct1.12",
        'data: {"type":"resync","size":12,"reason":"slow consumer: behind"}',
    ]


@pytest.mark.parametrize(
    ("action", "device", "expected"),
    [
        ("grant", "d-1", ConsentChange(7, "d-1", "pixverse_sharing", SUBJECT)),
        ("withdraw", None, ConsentChange(7, None, "pixverse_sharing", SUBJECT)),
        ("erase", "d-1", ErasureChange(7, "d-1", SUBJECT)),
        ("erase", None, ErasureChange(7, None, SUBJECT)),
    ],
)
def test_an_entry_changes_a_decision_or_erases_a_device(action: str, device: str | None, expected: object) -> None:
    fields = {"purpose": "*", "evidence": {}} if action == "erase" else {}
    entry = make(action=action, **fields)
    assert change_of(entry, device) == expected
    assert change_of_row(entry_bytes(entry), device) == expected


def test_a_registry_entry_is_a_registry_change_from_its_object_or_its_bytes() -> None:
    entry = registry_entry("00000000-0000-0000-0000-000000000001", 0, AT, BUILT_IN)
    assert change_of(entry, None) == RegistryChange(0, entry)
    assert change_of_row(registry_entry_bytes(entry), None) == RegistryChange(0, entry)
