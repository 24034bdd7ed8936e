"""What auditors and people ask of the log: checkpoints, keys, entries, proofs, histories, exports."""

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from ledger import export
from ledger.core.decision import decide, deciding
from ledger.core.entry import format_time
from ledger.core.errors import ProofError
from ledger.core.proof import consistency_nodes, consistency_proof, inclusion_nodes, inclusion_proof
from ledger.core.purposes import Registry, purpose_record
from ledger.core.registry import Version, in_force_at
from ledger.core.tree import NodeId
from ledger.errors import InvalidRequest, StorageError
from ledger.integrity import ProvenLog, SignedTree
from ledger.keys import KeyRing
from ledger.models import ConsentRecord, GrantShown, PersonalExport, Receipt
from ledger.services.position import Position
from ledger.services.stores import LogReads, SubjectReads
from ledger.services.validation import check_device
from ledger.storage.log import Head

__all__ = ["ENTRIES_PAGE", "Auditing", "BuildProof", "KeyInfo", "NodesFor"]

ENTRIES_PAGE = 1000
NodesFor = Callable[[int, int], list[NodeId]]
BuildProof = Callable[[int, int, Mapping[NodeId, bytes]], list[bytes]]


class KeyInfo(NamedTuple):
    key_name: str
    key_id: str
    vkey: str
    active: bool


class Auditing:
    def __init__(
        self,
        registry: Callable[[], Registry],
        versions: Callable[[SignedTree], Awaitable[list[Version]]],
        log_store: LogReads,
        subjects: SubjectReads,
        log: ProvenLog,
        key_ring: KeyRing,
        position: Position,
    ) -> None:
        self.registry = registry
        self.versions = versions
        self.log_store = log_store
        self.subjects = subjects
        self.log = log
        self.key_ring = key_ring
        self.position = position

    # -- the public log ------------------------------------------------------------------

    async def tree_size(self) -> int:
        return (await self._head()).size

    async def checkpoint(self) -> str:
        return (await self._head()).note

    async def _head(self) -> Head:
        head = await self.log_store.head()
        if head is None:
            raise StorageError("the log has no checkpoint yet")
        self.position.saw(head.size)
        return head

    async def keys(self) -> list[KeyInfo]:
        """The log keys that signed a checkpoint and that this process trusts, oldest first, with
        the one it signs with (the only active one, listed even before its first checkpoint); then
        the webhook key it signs with. A key found only in the database is not vouched for here,
        nor is an earlier webhook key: receivers need the one deliveries are signed with now."""
        ring = self.key_ring
        active = ring.signer.id.hex()
        shown = [
            KeyInfo(k.key_name, k.key_id, k.vkey, k.key_id == active)
            for k in await self.log_store.keys()
            if k.key_id == active or (k.signed and ring.trusts(k.key_id))
        ]
        if not any(k.active for k in shown):
            shown.append(KeyInfo(ring.signer.name, active, ring.signer.vkey, True))
        webhook = ring.webhook
        return [*shown, KeyInfo(webhook.name, webhook.id.hex(), webhook.vkey, True)]

    async def entries(self, start: int, end: int | None) -> tuple[int, int, AsyncIterator[bytes]]:
        """Entries start <= index < end, the end clamped to the log's size, read page by page."""
        size = await self.tree_size()
        end = size if end is None else min(end, size)
        if start < 0 or start > size:
            raise InvalidRequest(f"start={start} is outside the log (size {size})")
        if end < start:
            raise InvalidRequest(f"end={end} is before start={start}")

        async def pages() -> AsyncIterator[bytes]:
            for page in range(start, end, ENTRIES_PAGE):
                for data in await self.log_store.entries(page, min(page + ENTRIES_PAGE, end)):
                    yield data + b"\n"

        return start, end, pages()

    async def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        return await self._prove(inclusion_nodes, inclusion_proof, index, tree_size, "tree_size")

    async def consistency(self, size1: int, size2: int) -> list[bytes]:
        return await self._prove(consistency_nodes, consistency_proof, size1, size2, "to")

    async def _prove(self, nodes_for: NodesFor, build: BuildProof, a: int, size: int, name: str) -> list[bytes]:
        current = await self.tree_size()
        if size > current:
            raise InvalidRequest(f"{name}={size} is beyond the log's current size {current}")
        try:
            ids = nodes_for(a, size)
        except ProofError as exc:
            raise InvalidRequest(str(exc)) from None
        return build(a, size, await self.log_store.nodes(ids))

    async def export_plan(
        self, start: int | None, end: int | None, since: datetime | None, until: datetime | None
    ) -> export.Plan:
        return await export.plan(self.log_store, start, end, since, until)

    def export_stream(self, plan: export.Plan) -> AsyncIterator[bytes]:
        return export.tar_stream(self.log_store, plan)

    # -- one device ----------------------------------------------------------------------

    async def history(self, device_id: str, tree: SignedTree | None = None) -> list[Receipt]:
        """The device's receipts, oldest first, each proven against the latest checkpoint."""
        check_device(device_id)
        subject = await self.subjects.subject_of(device_id)
        if subject is None:
            return []
        tree = tree or await self.log.head()
        proven = await self.log.prove(tree, await self.subjects.history(subject, tree.checkpoint.size))
        return [self.position.receipt(device_id, p.sealed(tree)) for _, p in sorted(proven.items())]

    async def personal_export(self, device_id: str) -> PersonalExport | None:
        """The person's own record: every entry proved against one checkpoint, the salt to
        recompute the pseudonym, and per purpose its record of processing and current standing."""
        check_device(device_id)
        found = await self.subjects.subject_salt(device_id)
        if found is None:
            return None
        subject, salt = found
        tree = await self.log.head()
        receipts = await self.history(device_id, tree)
        versions = await self.versions(tree)
        now = format_time(datetime.now(UTC))
        methods = {r.entry.index: r.entry.method for r in receipts}
        registry = self.registry()
        purposes = {}
        for key, purpose in registry.purposes.items():
            basis = deciding(r.entry for r in receipts if r.entry.purpose == key)
            d = decide(key, purpose, basis, now)
            purposes[key] = ConsentRecord(
                purpose_record(key, purpose, registry.controller),
                d.allowed, d.reason, d.policy_version, d.since, d.expires_at, d.index,
                None if d.index is None else methods[d.index],
            )  # fmt: skip
        return PersonalExport(device_id, subject, salt.hex(), receipts, purposes, grants_shown(receipts, versions))


def grants_shown(receipts: Sequence[Receipt], versions: Sequence[Version]) -> list[GrantShown]:
    """For each grant, its purpose as the registry in force at the grant's append described it:
    the latest registry entry before the grant, the one the grant was checked against."""
    shown = []
    for r in receipts:
        if r.entry.action != "grant":
            continue
        version = in_force_at(versions, before=r.entry.index)
        purpose = None if version is None else version.registry.purposes.get(r.entry.purpose)
        record = None
        if version is not None and purpose is not None:
            record = purpose_record(r.entry.purpose, purpose, version.registry.controller)
        shown.append(
            GrantShown(
                r.entry.index,
                r.entry.purpose,
                r.entry.policy_version,
                None if version is None else version.index,
                None if version is None else version.recorded_at,
                record,
            )
        )
    return shown
