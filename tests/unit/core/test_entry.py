"""Entry bytes: canonical, exact, and strict on the way back in."""

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core.entry import Entry, entry_bytes, format_time, parse_entry, parse_time, subject_for
from ledger.core.errors import EntryError

SUBJECT = "ab" * 32


def make(**changes: object) -> Entry:
    fields: dict[str, object] = {
        "v": 1,
        "id": "0193c1a2-7b3c-7def-8123-456789abcdef",
        "index": 7,
        "subject": SUBJECT,
        "purpose": "pixverse_sharing",
        "action": "grant",
        "policy_version": 3,
        "occurred_at": "2026-11-28T10:00:00.000000Z",
        "recorded_at": "2026-11-28T10:00:00.250000Z",
        "actor": "user",
        "method": "explicit_popup",
        "evidence": {"popup": "pixverse-v3", "locale": "zh-Hans·中文"},
    }
    fields.update(changes)
    return msgspec.convert(fields, Entry)


def test_bytes_are_sorted_compact_utf8_and_omit_nulls() -> None:
    data = entry_bytes(make())
    assert data == (
        b'{"action":"grant","actor":"user","evidence":{"locale":"zh-Hans\xc2\xb7\xe4\xb8\xad\xe6\x96\x87",'
        b'"popup":"pixverse-v3"},"id":"0193c1a2-7b3c-7def-8123-456789abcdef","index":7,'
        b'"method":"explicit_popup","occurred_at":"2026-11-28T10:00:00.000000Z","policy_version":3,'
        b'"purpose":"pixverse_sharing","recorded_at":"2026-11-28T10:00:00.250000Z","subject":"'
        + SUBJECT.encode()
        + b'","v":1}'
    )
    assert b"expires_at" not in data
    assert b'"expires_at":"2027-11-28T10:00:00.000000Z"' in entry_bytes(make(expires_at="2027-11-28T10:00:00.000000Z"))


def test_round_trip() -> None:
    entry = make(expires_at="2027-01-01T00:00:00.000000Z", evidence={})
    assert parse_entry(entry_bytes(entry)) == entry


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1}',
        b"not json",
        # whitespace, unsorted keys, a float and an explicit null are all valid JSON but not canonical
        entry_bytes(make()).replace(b'"index":7', b'"index": 7'),
        entry_bytes(make()).replace(b'"index":7', b'"index":7.0'),
        entry_bytes(make())
        .replace(b'{"action":"grant",', b'{"actor":"user","action":"grant",')
        .replace(b'"actor":"user","evidence"', b'"evidence"'),
        entry_bytes(make())[:-1] + b',"expires_at":null}',
        entry_bytes(make())[:-1] + b',"extra":"x"}',
    ],
)
def test_non_canonical_or_invalid_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(EntryError):
        parse_entry(data)


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "Pixverse"},
        {"action": "erase_everything"},
        {"policy_version": 0},
        {"occurred_at": "2026-11-28T10:00:00Z"},
        {"subject": "AB" * 32},
        {"evidence": {f"k{i}": "v" for i in range(17)}},
        {"evidence": {"k": "v" * 257}},
        {"actor": "robot"},
        {"method": "email"},
    ],
)
def test_field_rules(change: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        make(**change)


@given(st.datetimes(timezones=st.just(UTC)))
def test_times_are_fixed_width_and_order_like_instants(moment: datetime) -> None:
    text = format_time(moment)
    assert len(text) == 27
    assert text.endswith("Z")
    assert parse_time(text) == moment
    later = format_time(moment + timedelta(microseconds=1)) if moment < datetime.max.replace(tzinfo=UTC) else text
    assert later >= text


def test_parse_time_takes_offsets_and_refuses_naive_times() -> None:
    assert format_time(parse_time("2026-11-28T11:00:00+01:00")) == "2026-11-28T10:00:00.000000Z"
    assert parse_time("2026-11-28T10:00:00Z") == datetime(2026, 11, 28, 10, tzinfo=timezone.utc)  # noqa: UP017
    for bad in ["2026-11-28T10:00:00", "2026-11-28", "yesterday"]:
        with pytest.raises(ValueError):
            parse_time(bad)


def test_subject_is_hmac_of_device_id_under_its_salt() -> None:
    salt = bytes(32)
    assert subject_for(salt, "device-1") == subject_for(salt, "device-1")
    assert subject_for(salt, "device-1") != subject_for(bytes([1]) * 32, "device-1")
    assert len(subject_for(salt, "device-1")) == 64
