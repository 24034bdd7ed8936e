"""Group commit: callers queue drafts; one task commits whatever has queued, as one transaction.

While a batch commits, new drafts wait in the queue; the next batch takes all of them. Under load
that turns N fsyncs, N lock round trips and N signatures into one of each, and with a single
caller it degrades to one transaction per append with no added delay.

Idempotency keys are settled inside the batch, under the log lock: every writer of
`idempotency_keys` holds it, so two retries of one request can never both append.

The purpose registry in force is the latest registry entry of the log, and each batch checks its
drafts against it under the same lock: a publish commits before or after a batch, never during
it, so once a publish is acknowledged no replica appends a grant the new registry refuses. The
registry is cached by its index, which the lock's head query reads; it is re-read only when
another publish moved it. A publish goes alone in its batch, like an erase.
"""

import asyncio
import contextlib
import logging
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from datetime import UTC, datetime
from typing import NamedTuple

from ledger import metrics
from ledger.core.batch import (
    Committed,
    Draft,
    Sealed,
    SealedBatch,
    SealedRegistry,
    latest_per_key,
    seal_batch,
    seal_registry,
)
from ledger.core.entry import format_time
from ledger.core.errors import EntryError, ProofError
from ledger.core.idempotency import APPEND, Claim, Conflict, Follows, Prior, Replayed, Settlement, settle
from ledger.core.note import Signer
from ledger.core.notice import REGISTRY_KEY, changed_keys, encode_notices
from ledger.core.proof import inclusion_nodes, inclusion_proof, verify_inclusion
from ledger.core.purposes import Registry
from ledger.core.registry import (
    REGISTRY_PURPOSE,
    REGISTRY_SUBJECT,
    grant_refusal,
    parse_registry_entry,
    registry_changes,
    same_registry,
    unlogged,
)
from ledger.core.rfc6962 import EMPTY_ROOT, leaf_hash
from ledger.core.tree import CompactRange, range_nodes
from ledger.core.webhooks import build_deliveries, erasure_deliveries, registry_deliveries
from ledger.errors import IdempotencyConflict, LogCorrupted, StorageError, UnknownDevice, UnprocessableRequest
from ledger.storage.log import AppendTransaction, EntryRow, Head, LogStore

__all__ = ["Appender", "Outcome", "Published", "Unchanged", "log"]

log = logging.getLogger("ledger.appender")


Outcome = Sealed | Replayed


class Unchanged(NamedTuple):
    """A publish of the registry already in force (entry `entry_index`): nothing was appended."""

    entry_index: int
    tree_size: int


Published = SealedRegistry | Unchanged
_NO_DRAFT = Draft(
    id="", device_id="", purpose="", action="grant", policy_version=1, occurred_at="", actor="user",
    method="api", evidence={},
)  # fmt: skip


class _Pending(NamedTuple):
    draft: Draft
    claim: Claim | None
    future: "asyncio.Future[Outcome | Published]"
    tombstone: bytes | None = None
    registry: Registry | None = None  # a publish: `draft` is then a placeholder

    @property
    def alone(self) -> bool:
        return self.tombstone is not None or self.registry is not None


def _outcome(
    position: int, settled: Settlement, appended: dict[int, Sealed], refused: dict[int, Exception]
) -> Outcome | Exception:
    """What the caller at `position` of a committed batch gets."""
    if position in refused:
        return refused[position]
    if isinstance(settled, Follows):
        if settled.first in refused:
            return refused[settled.first]
        first = appended[settled.first]
        return Replayed(first.entry.index, first.tree_size)
    if isinstance(settled, Conflict):
        return IdempotencyConflict(f"Idempotency-Key {settled.key!r} was used for another request")
    if isinstance(settled, Replayed):
        return settled
    return appended[position]


class Appender:
    def __init__(self, log: LogStore, signer: Signer, origin: str, *, max_batch: int = 2048) -> None:
        self.log = log
        self.signer = signer
        self.origin = origin
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._held: _Pending | None = None
        self._tree: CompactRange | None = None
        # The registry in force as last read under the lock, by its entry's index.
        self._registry: tuple[int, Registry] | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.appended = 0
        # Called after COMMIT returns and before any caller of the batch is woken.
        self.on_commit: list[Callable[[Committed], None]] = []

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def tree_size(self) -> int | None:
        return None if self._tree is None else self._tree.size

    async def start(self, seed: Registry | None = None) -> None:
        """Start appending. With `seed`, a log that holds no registry entry yet gets `seed` as its
        first one (under the lock: replicas starting together publish it once)."""
        await self._ensure_genesis()
        if seed is not None:
            await self._seed(seed)
        self._task = asyncio.create_task(self._run(), name="ledger-appender")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def erase(self, draft: Draft, tombstone: bytes) -> Sealed:
        """Append an erase entry, alone in its batch, and crypto-shred its subject in the same
        transaction. Raise UnknownDevice if the device has no subject."""
        if not self.running:
            raise StorageError("the appender is not running")
        future: asyncio.Future[Outcome | Published] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(draft, None, future, tombstone))
        outcome = await future
        assert isinstance(outcome, Sealed)
        return outcome

    async def publish(self, registry: Registry) -> Published:
        """Append a registry entry, alone in its batch, unless `registry` is the one in force."""
        if not self.running:
            raise StorageError("the appender is not running")
        future: asyncio.Future[Outcome | Published] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(_NO_DRAFT, None, future, registry=registry))
        outcome = await future
        assert isinstance(outcome, SealedRegistry | Unchanged)
        return outcome

    async def append(self, draft: Draft, claim: Claim | None = None) -> Outcome:
        """Return once the draft's batch is durable (or the claim is found already recorded).

        Raise StorageError if the batch did not commit, IdempotencyConflict if the claim's key
        was used for another request.
        """
        if not self.running:
            raise StorageError("the appender is not running")
        future: asyncio.Future[Outcome | Published] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(draft, claim, future))
        outcome = await future
        assert isinstance(outcome, Sealed | Replayed)
        return outcome

    async def _ensure_genesis(self) -> None:
        """Sign the empty tree once, so the log always has a checkpoint to serve and extend."""
        async with self.log.appending() as tx:
            if await tx.lock_head() is None:
                await self._write(tx, [], CompactRange(), None, [])

    async def _run(self) -> None:
        while True:
            batch = [self._held or await self._queue.get()]
            self._held = None
            # An erase goes alone: no later draft in its batch may be given the subject it shreds.
            # So does a publish: the drafts after it are checked against it in their own batch.
            while not batch[0].alone and len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item.alone:
                    self._held = item
                    break
                batch.append(item)
            live = [p for p in batch if not p.future.cancelled()]
            try:
                outcomes: list[Outcome | Published | Exception]
                if live and live[0].tombstone is not None:
                    outcomes = [await self._commit_erase(live[0], live[0].tombstone)]
                elif live and live[0].registry is not None:
                    outcomes = [await self._commit_publish(live[0].registry)]
                else:
                    outcomes = await self._commit(live) if live else []
            except Exception as exc:
                # The transaction rolled back as a whole: nobody in it was acknowledged.
                self._tree = None
                error = exc if isinstance(exc, StorageError) else StorageError(f"{type(exc).__name__}: {exc}")
                outcomes = [error] * len(live)
            for p, outcome in zip(live, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, Exception):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
            for _ in batch:
                self._queue.task_done()

    async def _commit(self, batch: list[_Pending]) -> list[Outcome | Published | Exception]:
        async with self.log.appending() as tx:
            head = await tx.lock_head()
            tree = await self._current_tree(tx, head)
            in_force = await self._in_force(tx, head)
            claimed = await tx.claimed([p.claim.scope for p in batch if p.claim])
            prior = {scope: Prior(c.request_hash, c.idx, c.tree_size) for scope, c in claimed.items()}
            plan = settle([p.claim for p in batch], prior)
            # After settling, so that a retry of a request recorded earlier still gets its first
            # receipt; a request refused here leaves its key unused.
            refused: dict[int, Exception] = {}
            if in_force is not None:
                for i, settled in enumerate(plan):
                    d = batch[i].draft
                    why = (
                        None
                        if settled is not APPEND
                        else grant_refusal(in_force[1], d.purpose, d.action, d.policy_version)
                    )
                    if why is not None:
                        refused[i] = UnprocessableRequest(why)
            fresh = [i for i, s in enumerate(plan) if s is APPEND and i not in refused]
            drafts = [batch[i].draft for i in fresh]
            if drafts:
                subjects = await tx.subjects([d.device_id for d in drafts])
                sealed = await self._write(
                    tx, drafts, tree, head, [subjects[d.device_id] for d in drafts], [batch[i].claim for i in fresh]
                )
        if not drafts:
            # Only replays, conflicts and refusals: nothing appended, and no new checkpoint signed.
            return [_outcome(i, s, {}, refused) for i, s in enumerate(plan)]
        # Only now, after COMMIT returned, is the batch durable and the new tree ours to extend.
        self._committed(sealed, drafts)
        appended = dict(zip(fresh, sealed.sealed, strict=True))
        return [_outcome(i, s, appended, refused) for i, s in enumerate(plan)]

    async def _commit_publish(self, registry: Registry) -> Published:
        async with self.log.appending() as tx:
            head = await tx.lock_head()
            tree = await self._current_tree(tx, head)
            in_force = await self._in_force(tx, head)
            if in_force is not None and same_registry(in_force[1], registry):
                return Unchanged(in_force[0], tree.size)
            sealed = await self._write_registry(tx, tree, head, registry, in_force[1] if in_force else None)
        self._committed_registry(sealed)
        return sealed

    async def _seed(self, registry: Registry) -> None:
        async with self.log.appending() as tx:
            head = await tx.lock_head()
            if head is None or head.registry_index is not None:
                return
            sealed = await self._write_registry(tx, await self._current_tree(tx, head), head, registry, None)
        self._committed_registry(sealed)
        log.info("published the first purpose registry at index %d", sealed.entry.index)

    async def _in_force(self, tx: AppendTransaction, head: Head | None) -> tuple[int, Registry] | None:
        """The registry in force under the lock: cached, re-read (and proven in the signed tree)
        only when its index moved."""
        index = head.registry_index if head else None
        if index is None or head is None:
            return None
        if self._registry is not None and self._registry[0] == index:
            return self._registry
        data = await tx.entry(index)
        try:
            if data is None:
                raise EntryError("missing")
            entry = parse_registry_entry(data)
            proof = inclusion_proof(index, head.size, await tx.nodes(inclusion_nodes(index, head.size)))
            verify_inclusion(index, head.size, leaf_hash(data), proof, head.root)
        except (EntryError, ProofError) as exc:
            raise LogCorrupted(f"the registry entry at index {index} does not match the signed tree ({exc})") from None
        self._registry = (index, unlogged(entry.registry))
        return self._registry

    async def _commit_erase(self, pending: _Pending, tombstone: bytes) -> Outcome | Published | Exception:
        async with self.log.appending() as tx:
            head = await tx.lock_head()
            tree = await self._current_tree(tx, head)
            subject = await tx.existing_subject(pending.draft.device_id)
            if subject is None:
                return UnknownDevice("the ledger holds no consent for this device")
            batch = await self._write(tx, [pending.draft], tree, head, [subject])
            await tx.erase(subject, tombstone)
            told = erasure_deliveries(
                pending.draft.device_id, await tx.subscriptions(), batch.sealed[0].entry.recorded_at
            )
            await tx.enqueue(told)
        self._committed(batch, [pending.draft])
        return batch.sealed[0]

    def _committed(self, batch: SealedBatch, drafts: list[Draft]) -> None:
        """Adopt the new tree and tell the listeners, before any caller of the batch is woken."""
        entries = [(s.entry, d.device_id) for s, d in zip(batch.sealed, drafts, strict=True)]
        self._adopt(batch.tree, Committed(batch.sealed[0].entry.index, batch.checkpoint.size, entries))

    def _committed_registry(self, sealed: SealedRegistry) -> None:
        self._registry = (sealed.entry.index, unlogged(sealed.entry.registry))
        self._adopt(sealed.tree, Committed(sealed.entry.index, sealed.tree_size, [], sealed.entry))

    def _adopt(self, tree: CompactRange, committed: Committed) -> None:
        self._tree = tree
        self.batches += 1
        self.appended += committed.size - committed.start
        metrics.APPENDS.inc(committed.size - committed.start)
        metrics.BATCH_SIZE.observe(committed.size - committed.start)
        for listener in self.on_commit:
            try:
                listener(committed)
            except Exception:
                # The batch is durable whatever a listener does; its callers get their receipts.
                log.exception("a commit listener failed")

    async def _current_tree(self, tx: AppendTransaction, head: Head | None) -> CompactRange:
        size, root = (head.size, head.root) if head else (0, EMPTY_ROOT)
        if self._tree is not None and self._tree.size == size:
            return self._tree
        # Another replica appended since our last batch (or we just started): reload the right
        # edge from stored nodes and check it against the signed root before extending it.
        tree = CompactRange.from_nodes(size, await tx.nodes(range_nodes(0, size)))
        if tree.root() != root:
            raise LogCorrupted(f"stored tree of size {size} does not match its signed checkpoint")
        return tree

    async def _write(
        self,
        tx: AppendTransaction,
        drafts: list[Draft],
        tree: CompactRange,
        head: Head | None,
        subjects: list[str],
        claims: list[Claim | None] | None = None,
    ) -> SealedBatch:
        """Seal the drafts and write everything that commits with them: entries, nodes, the
        checkpoint, settled keys, the state table, the outbox and the commit notices."""
        recorded = _recorded(head)
        recorded_at = format_time(recorded)
        batch = seal_batch(tree, drafts, subjects, recorded_at, self.origin, self.signer)
        entries = [s.entry for s in batch.sealed]
        counts = await tx.upsert_state(latest_per_key(entries), Tally((e.subject, e.purpose) for e in entries))
        devices = [(e, d.device_id) for e, d in zip(entries, drafts, strict=True)]
        subscriptions = await tx.subscriptions()
        await tx.enqueue(build_deliveries(devices, counts, subscriptions, batch.checkpoint, batch.note, recorded_at))
        await tx.write(
            [
                EntryRow(e.index, s.leaf, e.subject, e.purpose, recorded)
                for e, s in zip(entries, batch.sealed, strict=True)
            ],
            batch.nodes,
            Head(batch.checkpoint.size, batch.checkpoint.root, batch.note, recorded),
            self.signer.verifier.id.hex(),
            [
                (c.token_name, c.key, c.request_hash, e.index)
                for c, e in zip(claims or [], entries, strict=False)
                if c is not None
            ],
        )
        await tx.notify(encode_notices(tree.size, batch.checkpoint.size, changed_keys(entries)))
        return batch

    async def _write_registry(
        self, tx: AppendTransaction, tree: CompactRange, head: Head | None, registry: Registry, before: Registry | None
    ) -> SealedRegistry:
        """Seal one registry entry and write what commits with it: the entry, nodes, checkpoint,
        the `registry.published` events and the commit notice every replica switches on."""
        recorded = _recorded(head)
        sealed = seal_registry(tree, str(uuid.uuid4()), registry, format_time(recorded), self.origin, self.signer)
        changes = registry_changes(before, registry)
        await tx.enqueue(
            registry_deliveries(sealed.entry, changes, await tx.subscriptions(), sealed.signed, sealed.checkpoint)
        )
        await tx.write(
            [EntryRow(sealed.entry.index, sealed.leaf, REGISTRY_SUBJECT, REGISTRY_PURPOSE, recorded)],
            sealed.nodes,
            Head(sealed.tree_size, sealed.signed.root, sealed.checkpoint, recorded),
            self.signer.verifier.id.hex(),
        )
        await tx.notify(encode_notices(tree.size, sealed.tree_size, [REGISTRY_KEY]))
        return sealed


def _recorded(head: Head | None) -> datetime:
    """Now, except that recorded_at never goes backwards along the log, even if this replica's
    clock lags."""
    now = datetime.now(UTC)
    return max(now, head.recorded_at) if head else now
