"""A 1,000,000-entry export, written and verified as `ledger export` and `ledger verify` do it."""

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from ledger import export
from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.note import Signer
from ledger.core.verify import verify_bundle
from ledger.storage import Stores

SIZE = 1_000_000


def draft(n: int) -> Draft:
    return Draft(
        id=str(uuid.UUID(int=n)),
        device_id=f"m-{n % 50_000}",
        purpose=("pixverse_sharing", "cross_border_transfer", "telemetry")[n % 3],
        action="grant" if n % 4 else "withdraw",
        policy_version=1,
        occurred_at="2026-11-29T10:00:00.000000Z",
        actor="user",
        method="explicit_popup",
        evidence={"popup": "v1"},
    )


def lines(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        for line in f:
            yield line[:-1]


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_a_million_entry_export_verifies(store: Stores, tmp_path: Path) -> None:
    signer = Signer.generate("million.test/log")
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, "million.test/log", max_batch=10_000)
    await appender.start()
    for begin in range(0, SIZE, 10_000):
        await asyncio.gather(*(appender.append(draft(n)) for n in range(begin, begin + 10_000)))
    await appender.stop()

    plan = await export.plan(store.log)
    assert (plan.start, plan.end, plan.filtered) == (0, SIZE, False)
    started = time.monotonic()
    await export.write_directory(store.log, plan, tmp_path)
    exported = time.monotonic() - started
    started = time.monotonic()
    report = await asyncio.to_thread(
        verify_bundle, lines(tmp_path / export.ENTRIES), (tmp_path / export.CHECKPOINT).read_text(), [signer.verifier]
    )
    verified = time.monotonic() - started
    assert report.entries == SIZE
    assert report.checkpoint.size == SIZE
    print(f"\n1,000,000 entries: exported in {exported:.1f} s, verified in {verified:.1f} s")
