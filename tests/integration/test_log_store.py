"""The log in PostgreSQL: receipts, gapless concurrent appends, append-only tables, tampering, restarts."""

import asyncio
import itertools

import asyncpg
import pytest

from ledger.appender import Appender
from ledger.core.checkpoint import open_checkpoint
from ledger.core.entry import parse_entry, subject_for
from ledger.core.errors import VerificationError
from ledger.core.note import Signer
from ledger.core.proof import consistency_nodes, consistency_proof, verify_consistency, verify_inclusion
from ledger.core.rfc6962 import EMPTY_ROOT
from ledger.core.verify import verify_log
from ledger.errors import AppendOnlyViolation
from ledger.storage import Stores, create_pool, open_stores

from .helpers import draft

ORIGIN = "test.example/log"


@pytest.fixture
def signer() -> Signer:
    return Signer.generate(ORIGIN)


@pytest.fixture
async def appender(store: Stores, signer: Signer):  # type: ignore[no-untyped-def]
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    yield appender
    await appender.stop()


async def test_empty_log_has_a_signed_genesis_checkpoint(appender: Appender, store: Stores, signer: Signer) -> None:
    head = await store.log.head()
    assert head is not None
    assert open_checkpoint(head.note, [signer.verifier], origin=ORIGIN) == (ORIGIN, 0, EMPTY_ROOT)


async def test_receipt_proves_the_entry_is_in_the_signed_tree(appender: Appender, signer: Signer) -> None:
    sealed = await appender.append(draft("phone-7", evidence={"popup": "pixverse v3", "lang": "中文"}))
    checkpoint = open_checkpoint(sealed.checkpoint, [signer.verifier], origin=ORIGIN)
    entry = parse_entry(sealed.leaf)
    assert entry == sealed.entry
    assert entry.index == 0
    assert entry.evidence == {"popup": "pixverse v3", "lang": "中文"}
    verify_inclusion(entry.index, checkpoint.size, sealed.leaf_hash, sealed.inclusion_proof, checkpoint.root)


async def test_subject_is_the_hmac_under_the_stored_salt_and_stable(appender: Appender, store: Stores) -> None:
    first = await appender.append(draft("phone-7"))
    second = await appender.append(draft("phone-7", action="withdraw"))
    other = await appender.append(draft("phone-8"))
    assert first.entry.subject == second.entry.subject != other.entry.subject
    salt = await store.pool.fetchval("SELECT salt FROM subjects WHERE device_id = 'phone-7'")
    assert subject_for(bytes(salt), "phone-7") == first.entry.subject
    assert b"phone-7" not in first.leaf


async def test_concurrent_appends_from_many_connections_are_gapless_and_verify(
    database_url: str, signer: Signer
) -> None:
    """Three 'replicas' (own pool, own appender) and 150 concurrent callers each."""
    replicas = []
    for _ in range(3):
        store = open_stores(await create_pool(database_url, max_size=4))
        await store.log.register_key(signer.verifier)
        appender = Appender(store.log, signer, ORIGIN)
        await appender.start()
        replicas.append((store, appender))
    try:
        calls = [replicas[i % 3][1].append(draft(f"device-{i % 37}")) for i in range(450)]
        results = await asyncio.gather(*calls)
        store = replicas[0][0]
        indexes = sorted(r.entry.index for r in results)
        assert indexes == list(range(450))
        rows = await store.pool.fetch("SELECT idx FROM log_entries ORDER BY idx")
        assert [r["idx"] for r in rows] == list(range(450))
        for r in results:
            checkpoint = open_checkpoint(r.checkpoint, [signer.verifier], origin=ORIGIN)
            verify_inclusion(r.entry.index, checkpoint.size, r.leaf_hash, r.inclusion_proof, checkpoint.root)
        assert sum(a.batches for _, a in replicas) < 450, "concurrent appends were group-committed"
        # Every checkpoint ever signed is consistent with the final one.
        head = await store.log.head()
        assert head is not None
        verify_log(await store.log.entries(0, head.size), head.note, [signer.verifier])
        for row in await store.pool.fetch("SELECT tree_size, root FROM checkpoints"):
            size, root = row["tree_size"], bytes(row["root"])
            nodes = await store.log.nodes(consistency_nodes(size, head.size))
            verify_consistency(size, head.size, root, head.root, consistency_proof(size, head.size, nodes))
    finally:
        for store, appender in replicas:
            await appender.stop()
            await store.pool.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE log_entries SET purpose = 'telemetry'",
        "DELETE FROM log_entries",
        "TRUNCATE log_entries",
        "UPDATE merkle_nodes SET hash = hash",
        "DELETE FROM merkle_nodes",
        "TRUNCATE merkle_nodes CASCADE",
        "UPDATE checkpoints SET note = ''",
        "DELETE FROM checkpoints",
        "TRUNCATE checkpoints CASCADE",
        "DELETE FROM signing_keys",
        "TRUNCATE signing_keys CASCADE",
    ],
)
async def test_postgres_refuses_to_change_the_log(appender: Appender, store: Stores, statement: str) -> None:
    await appender.append(draft())
    before = await store.pool.fetchval("SELECT count(*) FROM log_entries")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"append-only|permission denied"):
        await store.pool.execute(statement)
    assert await store.pool.fetchval("SELECT count(*) FROM log_entries") == before


async def test_storage_errors_are_translated(appender: Appender, store: Stores) -> None:
    from ledger.storage.database import translated

    await appender.append(draft())
    with pytest.raises(AppendOnlyViolation), translated():
        await store.pool.execute("DELETE FROM log_entries")


async def test_superuser_tampering_behind_the_trigger_is_caught(
    appender: Appender, store: Stores, signer: Signer
) -> None:
    for i in range(5):
        await appender.append(draft(f"device-{i}"))
    head = await store.log.head()
    assert head is not None
    verify_log(await store.log.entries(0, head.size), head.note, [signer.verifier])
    async with store.pool.acquire() as conn:
        # A superuser can switch triggers off for its session; privileges do not bind it either.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE log_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'),"
            " '\"grant\"', '\"withdraw\"'), 'UTF8') WHERE idx = 2"
        )
    tampered = await store.log.entries(0, head.size)
    assert b'"withdraw"' in tampered[2]
    with pytest.raises(VerificationError, match="altered"):
        verify_log(tampered, head.note, [signer.verifier])


async def test_restart_keeps_the_log_and_extends_it_consistently(database_url: str, signer: Signer) -> None:
    store = open_stores(await create_pool(database_url))
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    for i in range(7):
        await appender.append(draft(f"d{i}"))
    before = await store.log.head()
    await appender.stop()
    await store.pool.close()

    store = open_stores(await create_pool(database_url))
    try:
        assert await store.log.head() == before
        assert before is not None
        appender = Appender(store.log, signer, ORIGIN)
        await appender.start()
        sealed = await appender.append(draft("d7"))
        await appender.stop()
        assert sealed.entry.index == 7
        after = await store.log.head()
        assert after is not None
        proof = consistency_proof(7, 8, await store.log.nodes(consistency_nodes(7, 8)))
        verify_consistency(7, 8, before.root, after.root, proof)
    finally:
        await store.pool.close()


async def test_a_corrupted_tree_stops_appends(database_url: str, signer: Signer) -> None:
    from ledger.errors import LogCorrupted

    store = open_stores(await create_pool(database_url))
    try:
        await store.log.register_key(signer.verifier)
        first = Appender(store.log, signer, ORIGIN)
        await first.start()
        for i in range(3):
            await first.append(draft(f"d{i}"))
        await first.stop()
        async with store.pool.acquire() as conn:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("UPDATE merkle_nodes SET hash = sha256(hash) WHERE level = 1 AND idx = 0")
        second = Appender(store.log, signer, ORIGIN)
        await second.start()
        with pytest.raises(LogCorrupted):
            await second.append(draft("d3"))
        await second.stop()
        assert await store.pool.fetchval("SELECT count(*) FROM log_entries") == 3
    finally:
        await store.pool.close()


async def test_group_commit_batches_concurrent_callers(appender: Appender) -> None:
    await asyncio.gather(*(appender.append(draft(f"d{i}")) for i in range(200)))
    assert appender.appended == 200
    assert appender.batches < 50


async def test_one_batch_is_one_checkpoint(appender: Appender, store: Stores) -> None:
    results = await asyncio.gather(*(appender.append(draft(f"d{i}")) for i in range(64)))
    checkpoints = {r.checkpoint for r in results}
    assert len(checkpoints) == appender.batches
    sizes = [row["tree_size"] for row in await store.pool.fetch("SELECT tree_size FROM checkpoints")]
    assert sorted(sizes) == sorted({0} | {r.tree_size for r in results})
    # Entries of one batch share its checkpoint and recorded_at.
    for _, group in itertools.groupby(sorted(results, key=lambda r: r.tree_size), key=lambda r: r.tree_size):
        assert len({r.entry.recorded_at for r in group}) == 1
