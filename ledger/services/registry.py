"""The purpose registry as ledger events: publishing, the one in force, and every version.

The log is the source of truth: a publish appends a registry entry (appender.py checks grants
against the latest one under the log lock), every process switches at its index
(projection.py), and past versions are read back from the log, proven against the signed tree.
"""

from collections.abc import Sequence

import msgspec

from ledger.appender import Appender, Unchanged
from ledger.core.consistency import consistency_token
from ledger.core.purposes import Registry
from ledger.core.registry import RegistryEntry, Version, logged, registry_changes, unlogged
from ledger.errors import InvalidRequest, UnprocessableRequest
from ledger.integrity import ProvenLog, SignedTree
from ledger.models import (
    RegistryHistory,
    RegistryInForce,
    RegistryReceipt,
    RegistryVersion,
    decode_body,
    registry_decoder,
)
from ledger.projection import Projection
from ledger.services.position import Position
from ledger.services.stores import LogReads

__all__ = ["RegistryService", "decode_registry"]


def decode_registry(body: bytes, toml: bool) -> Registry:
    """A registry from a request body: TOML (the LEDGER_PURPOSES format) or the same as JSON.
    400 if it does not parse, 422 if it is not a registry."""
    if not toml:
        return decode_body(registry_decoder, body)
    try:
        return msgspec.toml.decode(body, type=Registry)
    except msgspec.ValidationError as exc:
        raise UnprocessableRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid TOML: {exc}") from None


class RegistryService:
    def __init__(
        self,
        appender: Appender,
        projection: Projection,
        store: LogReads,
        log: ProvenLog,
        position: Position,
    ) -> None:
        self.appender = appender
        self.projection = projection
        self.store = store
        self.log = log
        self.position = position
        # Proven versions by index: an entry proven once stays proven (the log only grows).
        self._proven: dict[int, tuple[bytes, Version]] = {}

    @property
    def current(self) -> Registry:
        return self.projection.registry

    def in_force(self) -> RegistryInForce:
        p = self.projection
        purposes = logged(p.registry).purposes
        return RegistryInForce(p.registry_index, p.registry_recorded_at, p.registry.controller, purposes)

    async def publish(self, registry: Registry) -> tuple[RegistryReceipt, bool]:
        """Publish `registry`; its receipt and True, or, when it is the registry in force already,
        that entry's receipt and False (nothing appended)."""
        outcome = await self.appender.publish(registry)
        if isinstance(outcome, Unchanged):
            tree = await self.log.head()
            data = (await self.store.entries_at([outcome.entry_index]))[outcome.entry_index]
            proven = (await self.log.prove_registries(tree, {outcome.entry_index: data}))[outcome.entry_index]
            size = tree.checkpoint.size
            return self._receipt(proven.entry, proven.leaf, proven.leaf_hash, proven.proof, tree.note, size), False
        receipt = self._receipt(
            outcome.entry,
            outcome.leaf,
            outcome.leaf_hash,
            outcome.inclusion_proof,
            outcome.checkpoint,
            outcome.tree_size,
        )
        return receipt, True

    def _receipt(
        self, entry: RegistryEntry, leaf: bytes, hashed: bytes, proof: list[bytes], note: str, size: int
    ) -> RegistryReceipt:
        """The receipt of a registry entry in the tree of `size` its signed `note` covers."""
        self.position.saw(size)
        return RegistryReceipt(
            entry.index, entry, leaf.decode(), hashed.hex(), note, [h.hex() for h in proof], consistency_token(size)
        )

    async def versions(self, tree: SignedTree | None = None) -> list[Version]:
        """Every registry published in `tree` (default: the latest), in index order, each proven."""
        tree = tree or await self.log.head()
        stored = await self.store.registry_entries(tree.checkpoint.size)
        fresh = {i: data for i, data in stored.items() if self._proven.get(i, (b"",))[0] != data}
        for index, proven in (await self.log.prove_registries(tree, fresh)).items():
            version = Version(index, proven.entry.recorded_at, unlogged(proven.entry.registry))
            self._proven[index] = (proven.leaf, version)
        return [self._proven[i][1] for i in sorted(stored)]

    async def history(self) -> RegistryHistory:
        return RegistryHistory(changes_between(await self.versions()))


def changes_between(versions: Sequence[Version]) -> list[RegistryVersion]:
    out, before = [], None
    for v in versions:
        out.append(RegistryVersion(v.index, v.recorded_at, registry_changes(before, v.registry), v.registry))
        before = v.registry
    return out
