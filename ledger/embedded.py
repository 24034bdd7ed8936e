"""The embedded PostgreSQL: pgserver's binaries, run in the data directory.

pgserver counts the processes that use a data directory and stops the server when the last
one exits, so `ledger serve` and any other `ledger` command share one server. It cleans up at
interpreter exit, which SIGTERM skips unless handled: `handle_sigterm` makes it a normal exit.
"""

import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ledger.errors import ConfigError
from ledger.settings import Settings
from ledger.storage.database import ensure_database

DATABASE = "ledger"


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def start(data_dir: Path) -> tuple[Any, str]:
    """Start (or join) the server in `data_dir`; return its handle and the server's URL."""
    # pgserver asks platformdirs for a runtime directory when it is imported, which warns where
    # XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp: expected, not a problem.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
    import pgserver  # imported here: it is heavy, and only embedded mode needs it

    # pgserver narrates every pg_ctl call at INFO; its warnings and errors still come through.
    logging.getLogger("pgserver").setLevel(logging.WARNING)

    pgdata = data_dir / "postgres"
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    except PermissionError as exc:
        raise ConfigError(f"LEDGER_DATA_DIR={data_dir}: {exc.strerror}") from None
    return server, server.get_uri()


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def resolve_database(settings: Settings) -> tuple[str, Any]:
    """The URL to use, starting (or joining) the embedded server when none is configured."""
    if settings.database_url:
        return settings.database_url, None
    server, server_url = start(settings.data_dir)
    await ensure_database(server_url, DATABASE)
    return with_database(server_url, DATABASE), server
