"""Which database a `ledger` command uses: it says so first, and a command that only reads creates
nothing (no data directory, no embedded cluster, no schema) and migrates nothing."""

import asyncio
import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ledger.keys import write_key_file
from ledger.storage.migrations import default_directory, migrate

from .test_cli import ledger

PASSWORD = "hunter2-secret-password"
READ_ONLY = (["export", "--out", "bundle"], ["token", "list"], ["verify-state"])
EVERY_DATABASE_COMMAND = (
    ["migrate"],
    ["token", "create", "--name", "n", "--scope", "admin"],
    ["token", "list"],
    ["token", "revoke", "n"],
    ["export", "--out", "bundle"],
    ["verify-state"],
)


def with_password(url: str) -> str:
    """The same URL with a password in it (the test servers trust local connections, so it is unused)."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{PASSWORD}@{host}"))


def tables(url: str) -> set[str]:
    async def query() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        finally:
            await conn.close()
        return {r["tablename"] for r in rows}

    return asyncio.run(query())


def applied(url: str) -> list[int]:
    async def query() -> list[int]:
        conn = await asyncpg.connect(url)
        try:
            return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
        finally:
            await conn.close()

    return asyncio.run(query())


def test_every_database_command_first_names_its_database_without_credentials(database_url: str, tmp_path: Path) -> None:
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    url = with_password(database_url)
    key = tmp_path / "signing.key"
    write_key_file(key, "names.test/log")
    env = {"LEDGER_DATABASE_URL": url, "LEDGER_SIGNING_KEY": str(key)}
    for args in EVERY_DATABASE_COMMAND:
        result = ledger(*args, env=env, cwd=tmp_path)
        first = result.stderr.splitlines()[0]
        assert first.startswith("database: postgresql://"), (args, result.stderr)
        assert first.endswith(f"/{name}") or f"/{name}?host=" in first, first
        assert PASSWORD not in result.stdout + result.stderr
        assert f"{parts.username}@" not in first  # no user either


def test_an_embedded_command_names_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = ledger("migrate", env={"LEDGER_DATA_DIR": str(data)})
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"database: embedded in {data}"


def test_an_unreachable_database_is_named_before_the_error(tmp_path: Path) -> None:
    result = ledger(
        "token", "list", env={"LEDGER_DATABASE_URL": f"postgresql://ledger:{PASSWORD}@127.0.0.1:1/consents"}
    )
    assert result.returncode == 1
    first, *_, last = result.stderr.strip().splitlines()
    assert first == "database: postgresql://127.0.0.1:1/consents"
    assert last.startswith("ledger: error: the database 'consents' at 127.0.0.1:1: ")
    assert PASSWORD not in result.stderr


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_a_read_only_command_without_the_servers_data_directory_creates_nothing(
    args: list[str], tmp_path: Path
) -> None:
    """The shell that has no LEDGER_DATA_DIR: the default data directory is not made into an empty
    ledger, and the one line says where the command looked and what to set."""
    home, share = tmp_path / "home", tmp_path / "share"
    home.mkdir()
    result = ledger(*args, env={"HOME": str(home), "XDG_DATA_HOME": str(share)}, cwd=tmp_path)
    default = share / "consent-ledger"
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"database: embedded in {default}"
    assert lines[-1] == (
        f"ledger: error: no embedded database in {default}: this command only reads and creates none; "
        "set LEDGER_DATA_DIR to the server's data directory, or LEDGER_DATABASE_URL to its database"
    )
    assert [line for line in lines if line.startswith("ledger")] == [lines[-1]]
    assert not share.exists()
    assert list(home.iterdir()) == []


def test_a_read_only_command_leaves_an_empty_data_directory_empty(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for args in READ_ONLY:
        result = ledger(*args, env={"LEDGER_DATA_DIR": str(data)}, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert f"no embedded database in {data}" in result.stderr.splitlines()[-1]
    assert list(data.iterdir()) == []
    # A command that writes still creates the ledger where it is told to; then reading works.
    assert ledger("migrate", env={"LEDGER_DATA_DIR": str(data)}).returncode == 0
    listed = ledger("token", "list", env={"LEDGER_DATA_DIR": str(data)})
    assert listed.returncode == 0, listed.stderr
    assert "0 active token(s)" in listed.stderr


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_a_read_only_command_on_a_database_without_a_ledger_creates_no_schema(
    args: list[str], empty_database_url: str, tmp_path: Path
) -> None:
    key = tmp_path / "signing.key"
    write_key_file(key, "names.test/log")
    env = {"LEDGER_DATABASE_URL": empty_database_url, "LEDGER_SIGNING_KEY": str(key)}
    result = ledger(*args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "this database holds no ledger" in result.stderr.strip().splitlines()[-1]
    assert tables(empty_database_url) == set()


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_a_read_only_command_on_an_older_schema_says_so_and_migrates_nothing(
    args: list[str], empty_database_url: str, tmp_path: Path
) -> None:
    older = tmp_path / "older-migrations"
    older.mkdir()
    for path in sorted(default_directory().glob("*.sql"))[:2]:
        shutil.copy(path, older)
    asyncio.run(migrate(empty_database_url, older))
    key = tmp_path / "signing.key"
    write_key_file(key, "names.test/log")
    env = {"LEDGER_DATABASE_URL": empty_database_url, "LEDGER_SIGNING_KEY": str(key)}
    result = ledger(*args, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "the database schema lacks migration(s) 0003_projection, 0004_webhooks" in last
    assert "run `ledger migrate`" in last
    assert applied(empty_database_url) == [1, 2]
