"""The ledger's use cases, between the HTTP layer and storage."""

from collections.abc import AsyncIterator, Callable, Mapping
from typing import NamedTuple

from ledger import auth
from ledger.appender import Appender
from ledger.core.batch import Draft, Sealed
from ledger.core.errors import ProofError
from ledger.core.note import Signer
from ledger.core.proof import consistency_nodes, consistency_proof, inclusion_nodes, inclusion_proof
from ledger.core.tree import NodeId
from ledger.errors import InvalidRequest, StorageError
from ledger.settings import Settings
from ledger.storage import migrations
from ledger.storage.postgres import Store, TokenRecord, create_pool

ADMIN_TOKEN_NAME = "LEDGER_ADMIN_TOKEN"
ENTRIES_PAGE = 1000
CONSISTENCY_TOKEN_PREFIX = "ct1."


NodesFor = Callable[[int, int], list[NodeId]]
BuildProof = Callable[[int, int, Mapping[NodeId, bytes]], list[bytes]]


class KeyInfo(NamedTuple):
    key_name: str
    key_id: str
    vkey: str
    active: bool


class Ledger:
    def __init__(self, settings: Settings, store: Store, appender: Appender, signer: Signer) -> None:
        self.settings = settings
        self.store = store
        self.appender = appender
        self.signer = signer
        self._seen = 0

    @classmethod
    async def open(cls, settings: Settings, database_url: str, signer: Signer) -> "Ledger":
        await migrations.migrate(database_url)
        store = Store(await create_pool(database_url))
        try:
            await store.register_key(signer.verifier)
            if settings.admin_token:
                await store.ensure_token(ADMIN_TOKEN_NAME, auth.token_hash(settings.admin_token), ["admin"])
            appender = Appender(store, signer, settings.log_origin)
            await appender.start()
        except BaseException:
            await store.pool.close()
            raise
        return cls(settings, store, appender, signer)

    async def close(self) -> None:
        await self.appender.stop()
        await self.store.pool.close()

    async def tree_size(self) -> int:
        head = await self.store.head()
        if head is None:
            raise StorageError("the log has no checkpoint yet")
        self._seen = max(self._seen, head.size)
        return head.size

    def consistency_token(self) -> str:
        """Names the largest tree this process has seen committed; a later read can wait for it."""
        return f"{CONSISTENCY_TOKEN_PREFIX}{max(self._seen, self.appender.tree_size or 0)}"

    async def ready(self) -> bool:
        try:
            await self.store.pool.fetchval("SELECT 1")
        except Exception:
            return False
        return self.appender.running

    async def authenticate(self, token: str) -> TokenRecord | None:
        presented = auth.token_hash(token)
        record = await self.store.token(presented)
        # The lookup is by hash (which says nothing useful about the token); comparing the stored
        # hash in constant time as well keeps any timing out of the final decision.
        if record is None or not auth.same_hash(record.token_hash, presented):
            return None
        return record

    async def record(self, draft: Draft) -> Sealed:
        return await self.appender.append(draft)

    async def checkpoint(self) -> str:
        head = await self.store.head()
        if head is None:
            raise StorageError("the log has no checkpoint yet")
        self._seen = max(self._seen, head.size)
        return head.note

    async def keys(self) -> list[KeyInfo]:
        active = self.signer.verifier.id.hex()
        return [KeyInfo(k.key_name, k.key_id, k.vkey, k.key_id == active) for k in await self.store.keys()]

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
                for data in await self.store.entries(page, min(page + ENTRIES_PAGE, end)):
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
        return build(a, size, await self.store.nodes(ids))
