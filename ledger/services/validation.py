"""The checks every use case applies to what callers send, before anything is read or written."""

from datetime import datetime

from ledger.core.entry import is_device_id, parse_time
from ledger.core.purposes import Registry
from ledger.errors import UnprocessableRequest

__all__ = ["check_device", "check_purpose", "request_time", "unknown_purpose"]


def check_device(device_id: str, where: str = "") -> None:
    if not is_device_id(device_id):
        raise UnprocessableRequest(f"{where}device_id must match [A-Za-z0-9._:-]{{1,128}}")


def check_purpose(registry: Registry, purpose: str, where: str = "") -> None:
    if purpose not in registry.purposes:
        raise UnprocessableRequest(f"{where}{unknown_purpose(registry, purpose)}")


def unknown_purpose(registry: Registry, purpose: str) -> str:
    return f"unknown purpose {purpose!r}; known: {', '.join(sorted(registry.purposes))}"


def request_time(text: str, name: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UnprocessableRequest(f"{name}: {exc}") from None
