"""Group commit: callers queue drafts; one task commits whatever has queued, as one transaction.

While a batch commits, new drafts wait in the queue; the next batch takes all of them. Under load
that turns N fsyncs, N lock round trips and N signatures into one of each, and with a single
caller it degrades to one transaction per append with no added delay.
"""

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import NamedTuple

from ledger.core.batch import Draft, Sealed, SealedBatch, seal_batch
from ledger.core.entry import format_time
from ledger.core.note import Signer
from ledger.core.rfc6962 import EMPTY_ROOT
from ledger.core.tree import CompactRange, range_nodes
from ledger.errors import LogCorrupted, StorageError
from ledger.storage.postgres import AppendTransaction, EntryRow, Head, Store


class _Pending(NamedTuple):
    draft: Draft
    future: asyncio.Future[Sealed]


class Appender:
    def __init__(self, store: Store, signer: Signer, origin: str, *, max_batch: int = 2048) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._tree: CompactRange | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.appended = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def tree_size(self) -> int | None:
        return None if self._tree is None else self._tree.size

    async def start(self) -> None:
        await self._ensure_genesis()
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

    async def append(self, draft: Draft) -> Sealed:
        """Return once the draft's batch is durable; raise StorageError if it did not commit."""
        if not self.running:
            raise StorageError("the appender is not running")
        future: asyncio.Future[Sealed] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(draft, future))
        return await future

    async def _ensure_genesis(self) -> None:
        """Sign the empty tree once, so the log always has a checkpoint to serve and extend."""
        async with self.store.appending() as tx:
            if await tx.lock_head() is None:
                await self._write(tx, [], CompactRange(), None)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [p for p in batch if not p.future.cancelled()]
            try:
                results = await self._commit([p.draft for p in live]) if live else []
            except Exception as exc:
                # The transaction rolled back as a whole: nobody in it was acknowledged.
                self._tree = None
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc if isinstance(exc, StorageError) else StorageError(str(exc)))
            else:
                for p, result in zip(live, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(result)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, drafts: list[Draft]) -> list[Sealed]:
        async with self.store.appending() as tx:
            head = await tx.lock_head()
            tree = await self._current_tree(tx, head)
            subjects = await tx.subjects([d.device_id for d in drafts])
            batch = await self._write(tx, drafts, tree, head, [subjects[d.device_id] for d in drafts])
        # Only now, after COMMIT returned, is the batch durable and the new tree ours to extend.
        self._tree = batch.tree
        self.batches += 1
        self.appended += len(drafts)
        return batch.sealed

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
        subjects: list[str] | None = None,
    ) -> SealedBatch:
        now = datetime.now(UTC)
        # recorded_at never goes backwards along the log, even if this replica's clock lags.
        recorded = max(now, head.recorded_at) if head else now
        batch = seal_batch(tree, drafts, subjects or [], format_time(recorded), self.origin, self.signer)
        rows = [EntryRow(s.entry.index, s.leaf, s.entry.subject, s.entry.purpose, recorded) for s in batch.sealed]
        new_head = Head(batch.checkpoint.size, batch.checkpoint.root, batch.note, recorded)
        await tx.write(rows, batch.nodes, new_head, self.signer.verifier.id.hex())
        return batch
