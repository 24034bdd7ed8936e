"""Migrations apply in order, exactly once, safely when replicas start together, and refuse edits."""

import asyncio
import shutil
from pathlib import Path

import asyncpg
import pytest

from ledger.errors import MigrationError
from ledger.storage.migrations import default_directory, discover, migrate


async def test_applies_each_migration_once_in_order(empty_database_url: str) -> None:
    names = [f"{m.version:04d}_{m.name}" for m in discover(default_directory())]
    assert await migrate(empty_database_url) == names
    assert await migrate(empty_database_url) == []
    conn = await asyncpg.connect(empty_database_url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [f"{r['version']:04d}_{r['name']}" for r in rows] == names
    finally:
        await conn.close()


async def test_replicas_starting_together_do_not_race(empty_database_url: str) -> None:
    results = await asyncio.gather(*(migrate(empty_database_url) for _ in range(6)))
    applied = [names for names in results if names]
    assert len(applied) == 1, "exactly one starter applied the migrations; the others found nothing to do"


async def test_an_edited_migration_is_refused(empty_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(default_directory(), directory)
    await migrate(empty_database_url, directory)
    first = sorted(directory.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited"):
        await migrate(empty_database_url, directory)


async def test_a_failing_migration_leaves_no_trace(empty_database_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    shutil.copytree(default_directory(), directory)
    (directory / "0999_broken.sql").write_text("CREATE TABLE half_done (x int);\nSELECT no_such_function();\n")
    with pytest.raises(Exception, match="no_such_function"):
        await migrate(empty_database_url, directory)
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations WHERE version = 999") == 0
    finally:
        await conn.close()


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(tmp_path)
