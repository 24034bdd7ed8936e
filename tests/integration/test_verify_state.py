"""`ledger verify-state`: the projection's state table against a refold of the signed log."""

import hashlib
from pathlib import Path

from ledger.appender import Appender
from ledger.keys import read_key_file
from ledger.storage import Stores

from .conftest import ORIGIN
from .helpers import draft
from .test_cli import ledger
from .test_fresh_answers import superuser


async def fill(store: Stores, key_file: Path) -> None:
    signer = read_key_file(key_file)
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, ORIGIN)
    await appender.start()
    try:
        for n in range(30):
            device = f"state-{n % 7}"
            purpose = ("telemetry", "pixverse_sharing")[n % 2]
            await appender.append(draft(device, purpose, ("grant", "withdraw")[n % 3 == 0]))
        erase = draft("state-3", purpose="*", action="erase", actor="operator", method="support_request", evidence={})
        await appender.erase(erase, hashlib.sha256(b"state-3").digest())
        await appender.append(draft("state-3", "telemetry"))
    finally:
        await appender.stop()


async def test_a_table_that_matches_the_log_verifies(store: Stores, database_url: str, key_file: Path) -> None:
    await fill(store, key_file)
    result = ledger("verify-state", env={"LEDGER_DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(key_file)})
    assert result.returncode == 0, result.stderr
    assert "OK: 32 entries verify against the signed checkpoint" in result.stdout


async def test_every_row_that_differs_is_named_without_its_device(
    store: Stores, database_url: str, key_file: Path
) -> None:
    await fill(store, key_file)
    subject = await store.subjects.subject_of("state-1")
    await superuser(
        database_url,
        f"UPDATE consent_state SET policy_version = 9 WHERE subject = '{subject}' AND purpose = 'pixverse_sharing'",
        "DELETE FROM consent_state WHERE subject = (SELECT subject FROM subjects WHERE device_id = 'state-2')"
        " AND purpose = 'telemetry'",
    )
    result = ledger("verify-state", env={"LEDGER_DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(key_file)})
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("differs: ")]
    assert len(lines) == 2
    assert any(
        f"subject {subject} purpose" in line and "the table says grant at index 29 (policy 9" in line for line in lines
    )
    assert any("the table says no row" in line for line in lines)
    assert "state-" not in result.stdout + result.stderr


async def test_an_altered_entry_fails_before_any_row_is_compared(
    store: Stores, database_url: str, key_file: Path
) -> None:
    await fill(store, key_file)
    await superuser(
        database_url,
        "UPDATE log_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'),"
        " '\"withdraw\"', '\"grant\"'), 'UTF8') WHERE idx = 0",
    )
    result = ledger("verify-state", env={"LEDGER_DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(key_file)})
    assert result.returncode == 1
    assert "do not hash to the signed root" in result.stderr
