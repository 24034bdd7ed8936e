"""Registry entries: the purpose registry published into the log as an entry of its own kind.

A registry entry holds the whole registry, so the log alone shows which purposes, texts and
minimum policy versions were in force at every index. Its bytes follow the rules of consent
entries (CONTRACT section 2: sorted keys, no whitespace, UTF-8, integers only, nulls omitted)
and it is hashed into the tree the same way. Shape:

    {"id", "index", "kind": "registry", "recorded_at", "registry": {"controller": {...},
     "purposes": {key: {"title", "description", "recipients", "data_categories", "legal_basis",
     "min_policy_version", "max_age_days"?}}}, "v": 1}

Consent entries have no `kind` (absent means consent) and their bytes are unchanged. Every value
of a purpose is written out, defaults included: what an old entry means must not depend on the
defaults of whatever software reads it later. The registry in force at index n is the latest
registry entry below n.
"""

from collections.abc import Sequence
from typing import Annotated, Literal, NamedTuple

import msgspec

from ledger.core.entry import Entry, EntryId, PolicyVersion, PurposeKey, Timestamp, decode_canonical, parse_entry
from ledger.core.purposes import Controller, Purpose, Registry

__all__ = [
    "REGISTRY_PURPOSE",
    "REGISTRY_SUBJECT",
    "LogEntry",
    "LoggedPurpose",
    "LoggedRegistry",
    "PurposeChange",
    "RegistryChanges",
    "RegistryEntry",
    "Version",
    "grant_refusal",
    "in_force_at",
    "is_registry_entry",
    "logged",
    "parse_log_entry",
    "parse_registry_entry",
    "registry_changes",
    "registry_entry",
    "registry_entry_bytes",
    "same_registry",
    "unlogged",
]

# The log_entries columns of a registry entry: no subject, and a purpose no purpose key can be
# ([a-z][a-z0-9_]*), so no query for a subject's or a purpose's entries ever finds one.
REGISTRY_SUBJECT = ""
REGISTRY_PURPOSE = "#registry"

# Canonical bytes start with their first key in sorted order: a consent entry's is always
# "action", a registry entry's "id". Telling them apart needs no parse; parsing then checks it.
_REGISTRY_START = b'{"id":'


class LoggedPurpose(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A purpose as the log holds it: every field explicit, only an absent max age omitted."""

    title: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    description: Annotated[str, msgspec.Meta(min_length=1, max_length=4000)]
    recipients: list[str]
    data_categories: list[str]
    legal_basis: str
    min_policy_version: PolicyVersion
    max_age_days: Annotated[int, msgspec.Meta(ge=1, le=36_500)] | None = None


class LoggedRegistry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    controller: Controller
    purposes: Annotated[dict[PurposeKey, LoggedPurpose], msgspec.Meta(min_length=1)]


class RegistryEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The registry published at one index."""

    v: Literal[1]
    kind: Literal["registry"]
    id: EntryId
    index: Annotated[int, msgspec.Meta(ge=0)]
    recorded_at: Timestamp
    registry: LoggedRegistry


LogEntry = Entry | RegistryEntry

_encoder = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder(RegistryEntry)


def logged(registry: Registry) -> LoggedRegistry:
    purposes = {key: LoggedPurpose(**msgspec.structs.asdict(p)) for key, p in registry.purposes.items()}
    return LoggedRegistry(registry.controller, purposes)


def unlogged(registry: LoggedRegistry) -> Registry:
    purposes = {key: Purpose(**msgspec.structs.asdict(p)) for key, p in registry.purposes.items()}
    return Registry(purposes=purposes, controller=registry.controller)


def same_registry(a: Registry, b: Registry) -> bool:
    """Whether publishing `b` over `a` would change nothing a log reader can see."""
    return _encoder.encode(logged(a)) == _encoder.encode(logged(b))


def registry_entry(entry_id: str, index: int, recorded_at: str, registry: Registry) -> RegistryEntry:
    return RegistryEntry(1, "registry", entry_id, index, recorded_at, logged(registry))


def registry_entry_bytes(entry: RegistryEntry) -> bytes:
    return _encoder.encode(entry)


def is_registry_entry(data: bytes) -> bool:
    return data.startswith(_REGISTRY_START)


def parse_registry_entry(data: bytes) -> RegistryEntry:
    """Decode registry entry bytes, refusing anything that is not exactly the canonical encoding."""
    return decode_canonical(_decoder, data, "registry entry")


def parse_log_entry(data: bytes) -> LogEntry:
    """Either kind of entry from its bytes, checked to be canonical."""
    return parse_registry_entry(data) if is_registry_entry(data) else parse_entry(data)


def grant_refusal(registry: Registry, purpose: str, action: str, policy_version: int) -> str | None:
    """Why the registry refuses this action, or None. Withdrawals are refused only for an unknown
    purpose; a grant also below the purpose's min_policy_version."""
    spec = registry.purposes.get(purpose)
    if spec is None:
        return f"unknown purpose {purpose!r}; known: {', '.join(sorted(registry.purposes))}"
    if action == "grant" and policy_version < spec.min_policy_version:
        return (
            f"policy_version {policy_version} is below {purpose}'s min_policy_version "
            f"{spec.min_policy_version}: show the current privacy statement and ask again"
        )
    return None


class Version(NamedTuple):
    """One published registry: where it is in the log and what it says."""

    index: int  # type: ignore[assignment]  # the entry's index; shadowing tuple.index is intended
    recorded_at: str
    registry: Registry


def in_force_at(versions: Sequence[Version], *, before: int | None = None, at: str | None = None) -> Version | None:
    """The version in force just before index `before`, or at time `at` (the latest recorded by
    then); None if no version was published by then. `versions` are in index order."""
    found = None
    for version in versions:
        if (before is not None and version.index >= before) or (at is not None and version.recorded_at > at):
            break
        found = version
    return found


class PurposeChange(msgspec.Struct, frozen=True):
    purpose: str
    fields: list[str]
    min_policy_version: list[int] | None = None  # [before, after] when it changed


class RegistryChanges(msgspec.Struct, frozen=True):
    """What a published version changed against the one before it (everything is added for the first)."""

    added: list[str]
    removed: list[str]
    changed: list[PurposeChange]
    controller_changed: bool


def registry_changes(before: Registry | None, after: Registry) -> RegistryChanges:
    old = logged(before).purposes if before is not None else {}
    new = logged(after).purposes
    changed = []
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key], new[key]
        fields = [f for f in a.__struct_fields__ if getattr(a, f) != getattr(b, f)]
        if fields:
            versions = [a.min_policy_version, b.min_policy_version] if "min_policy_version" in fields else None
            changed.append(PurposeChange(key, fields, versions))
    return RegistryChanges(
        added=sorted(new.keys() - old.keys()),
        removed=sorted(old.keys() - new.keys()),
        changed=changed,
        controller_changed=before is not None and before.controller != after.controller,
    )
