"""A decision as the ledger gives it (`GET /v1/check`), and the compact form a mirror keeps.

A mirror holds many decisions, so each is one int (about 50 bytes) instead of an object with
strings (several hundred). The int's low four bits are what the hot path reads:

    bits 0-2   reason (GRANTED = 0)
    bit  3     the grant expires (EXPIRES)
    bits 4-35  policy_version + 1 (0: none)
    bits 36-99 order + 1: the deciding entry's index, or for an erased device a log position the
               answer is known to be at or past (see DecisionCache); 0: none
    bits 100-  since + 1, then expires_at + 1, in microseconds since 0001-01-01 (0: none)

So `value & 15 == 0` is "granted, no expiry" and `value & 15 == EXPIRES` is "granted until".
"""

from datetime import UTC, datetime, timedelta
from time import time_ns

import msgspec

__all__ = [
    "EXPIRES",
    "REASONS",
    "Decision",
    "decision_order",
    "expires_micros",
    "now_micros",
    "order_of",
    "pack",
    "unexpired",
    "unpack",
]


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The ledger's answer to "may this device's data be processed for this purpose now?"."""

    device_id: str
    purpose: str
    allowed: bool
    reason: str
    policy_version: int | None
    since: str | None
    expires_at: str | None
    index: int | None


REASONS = ("granted", "no_consent", "withdrawn", "expired", "reconsent_required", "erased")
_CODE = {reason: code for code, reason in enumerate(REASONS)}
ERASED = _CODE["erased"]
EXPIRES = 8
_VERSION_SHIFT, _ORDER_SHIFT, _SINCE_SHIFT, _EXPIRES_SHIFT = 4, 36, 100, 159
_VERSION_MAX, _ORDER_MAX, _TIME_MAX = (1 << 32) - 2, (1 << 64) - 2, (1 << 59) - 2
_ZERO = datetime(1, 1, 1, tzinfo=UTC)
_UNIX_EPOCH_MICROS = (datetime(1970, 1, 1, tzinfo=UTC) - _ZERO) // timedelta(microseconds=1)


def _micros(text: str) -> int | None:
    """Microseconds since 0001-01-01 of a ledger time (`2026-11-28T10:00:00.000000Z`), or None
    for anything that would not format back to exactly the same text."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo != UTC:
        return None
    micros = (when - _ZERO) // timedelta(microseconds=1)
    return micros if _text(micros) == text else None


def _text(micros: int) -> str:
    t = _ZERO + timedelta(microseconds=micros)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}Z"


def now_micros() -> int:
    return _UNIX_EPOCH_MICROS + time_ns() // 1000


def decision_order(decision: Decision, erased_at: int) -> int:
    """Where a decision stands in its key's history. The deciding entry of a (device, purpose)
    only ever moves to a later index, so a larger index is a newer decision; an erased device's
    answer names no entry, so it stands at `erased_at`, a position it is known to be past."""
    if decision.reason == "erased":
        return erased_at
    return -1 if decision.index is None else decision.index


def pack(decision: Decision, order: int) -> int | None:
    """The compact form, or None for a decision that does not fit it (then it is not kept)."""
    code = _CODE.get(decision.reason)
    if code is None or decision.allowed != (code == 0) or not -1 <= order <= _ORDER_MAX - 1:
        return None
    version = 0 if decision.policy_version is None else decision.policy_version + 1
    since = 0 if decision.since is None else _micros(decision.since)
    expires = 0 if decision.expires_at is None else _micros(decision.expires_at)
    if since is None or expires is None or not 0 <= version <= _VERSION_MAX or max(since, expires) > _TIME_MAX:
        return None
    if decision.since is not None:
        since += 1
    if decision.expires_at is not None:
        expires += 1
    flags = EXPIRES if code == 0 and expires else 0
    return (
        code
        | flags
        | version << _VERSION_SHIFT
        | (order + 1) << _ORDER_SHIFT
        | since << _SINCE_SHIFT
        | expires << _EXPIRES_SHIFT
    )


def _field(value: int, shift: int, bits: int) -> int:
    return (value >> shift) & ((1 << bits) - 1)


def order_of(value: int) -> int:
    return _field(value, _ORDER_SHIFT, 64) - 1


def expires_micros(value: int) -> int | None:
    raw = value >> _EXPIRES_SHIFT
    return raw - 1 if raw else None


def unexpired(value: int) -> bool:
    """Whether a packed grant with an expiry is still before it."""
    return now_micros() < (value >> _EXPIRES_SHIFT) - 1


def unpack(value: int, device_id: str, purpose: str, now: int | None = None) -> Decision:
    """The decision a packed value holds, as the ledger would give it at `now` (microseconds
    since 0001-01-01; default: the current time): a grant past its expiry is "expired"."""
    code = value & 7
    version = _field(value, _VERSION_SHIFT, 32)
    order = order_of(value)
    since = _field(value, _SINCE_SHIFT, 59)
    expires = expires_micros(value)
    reason = REASONS[code]
    if code == 0 and expires is not None and (now_micros() if now is None else now) >= expires:
        reason = "expired"
    return Decision(
        device_id=device_id,
        purpose=purpose,
        allowed=reason == "granted",
        reason=reason,
        policy_version=version - 1 if version else None,
        since=_text(since - 1) if since else None,
        expires_at=None if expires is None else _text(expires),
        index=None if code == ERASED or order < 0 else order,
    )
