"""The embedded PostgreSQL: pgserver's binaries, run in the data directory.

pgserver counts the processes that use a data directory and stops the server when the last
one exits, so `ledger serve` and any other `ledger` command share one server. It cleans up at
interpreter exit, which SIGTERM skips unless handled: `handle_sigterm` makes it a normal exit.

`ledger serve` also supervises the server (`Supervisor`): when the postmaster dies it is started
again, with backoff, and the workers' pools reconnect by themselves.
"""

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil

from ledger.errors import ConfigError, StorageError
from ledger.settings import Settings
from ledger.storage.database import database_exists, ensure_database

DATABASE = "ledger"
log = logging.getLogger("ledger.embedded")
PR_SET_CHILD_SUBREAPER = 36


def handle_sigterm() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def adopt_orphans() -> None:
    """Become the reaper of this process's orphaned descendants (Linux). pg_ctl starts the
    postmaster and exits; without this the postmaster's parent is PID 1, and where PID 1 does
    not reap (many containers) a killed postmaster stays a zombie, which PostgreSQL's own lock
    file check takes for a running server: no restart would ever succeed."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _quiet_import() -> Any:
    # pgserver asks platformdirs for a runtime directory when it is imported, which warns where
    # XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp: expected, not a problem.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR", module="platformdirs")
    try:
        import pgserver  # imported here: it is heavy, and only embedded mode needs it
    except ImportError:  # an optional extra: a deployment with its own PostgreSQL leaves it out
        missing = "LEDGER_DATABASE_URL is not set and the embedded PostgreSQL is not installed"
        raise ConfigError(f"{missing}: pip install 'consent-ledger[embedded]'") from None

    # pgserver narrates every pg_ctl call at INFO and dumps the server log on a failure; the
    # ledger says what went wrong in one line of its own instead.
    logging.getLogger("pgserver").setLevel(logging.CRITICAL)
    return pgserver


class NoCluster(ConfigError):
    """A command that only reads found no embedded database where it looked."""


def has_cluster(data_dir: Path) -> bool:
    """Whether `data_dir` holds an embedded PostgreSQL cluster (initdb writes PG_VERSION)."""
    return (data_dir / "postgres" / "PG_VERSION").is_file()


def no_cluster(data_dir: Path) -> NoCluster:
    return NoCluster(
        f"no embedded database in {data_dir}: this command only reads and creates none; "
        "set LEDGER_DATA_DIR to the server's data directory, or LEDGER_DATABASE_URL to its database"
    )


def start(data_dir: Path, create: bool = True) -> tuple[Any, str]:
    """Start (or join) the server in `data_dir`; return its handle and the server's URL. Without
    `create`, a data directory without a cluster is a NoCluster error rather than a new cluster
    (pgserver runs initdb wherever it finds none)."""
    if not create and not has_cluster(data_dir):
        raise no_cluster(data_dir)
    pgserver = _quiet_import()
    pgdata = data_dir / "postgres"
    logged = _log_size(pgdata)
    try:
        pgdata.mkdir(parents=True, exist_ok=True)
        with pgserver.postgres_server.PostgresServer._lock:
            remove_stale_pid_file(pgdata)
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except PermissionError as exc:
        raise ConfigError(f"LEDGER_DATA_DIR={data_dir}: {exc.strerror}") from None
    except (OSError, subprocess.SubprocessError, RuntimeError, AssertionError, psutil.Error, ValueError) as exc:
        raise StorageError(
            f"the embedded PostgreSQL in {pgdata} cannot start: {why_not(pgdata, logged, exc)}"
        ) from None
    return server, server.get_uri()


def _log_size(pgdata: Path) -> int:
    try:
        return (pgdata / "log").stat().st_size
    except OSError:
        return 0


def why_not(pgdata: Path, logged: int, exc: BaseException) -> str:
    """One line: the server's last complaint since byte `logged` of its log, else the exception."""
    detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
    with contextlib.suppress(OSError), open(pgdata / "log", "rb") as f:
        f.seek(logged)
        lines = f.read().decode(errors="replace").splitlines()
        complaints = [line for line in lines if "FATAL:" in line or "ERROR:" in line]
        if complaints:
            detail = complaints[-1].split("FATAL:", 1)[-1].split("ERROR:", 1)[-1].strip()
    return f"{detail} (its log: {pgdata / 'log'})"


def remove_stale_pid_file(pgdata: Path) -> None:
    """Remove postmaster.pid if no postmaster owns it any more.

    After a SIGKILL the file stays. PostgreSQL ignores it when its pid is free, but not when the
    pid is a zombie or was reused, and pgserver takes any live pid for a running server. So the
    pid must be a live `postgres` process started when the file says (its second-resolution
    start time), else the file is stale. Shared memory still attached by a surviving backend is
    PostgreSQL's own check and stays in force: a new postmaster refuses to start until it is gone.
    """
    path = pgdata / "postmaster.pid"
    try:
        lines = path.read_text().splitlines()
        pid, started = int(lines[0]), int(lines[2])
    except (OSError, IndexError, ValueError):
        return  # absent, or being written by a postmaster starting right now
    if _is_postmaster(pid, started):
        return
    log.info("removing the stale %s of postmaster %d", path, pid)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _is_postmaster(pid: int, started: int) -> bool:
    try:
        process = psutil.Process(pid)
        return (
            process.status() != psutil.STATUS_ZOMBIE
            and process.name() == "postgres"
            and abs(process.create_time() - started) < 5
        )
    except psutil.Error:
        return False


def reap_postgres_zombies() -> None:
    """Collect postgres processes that died as this process's children (see adopt_orphans).
    Only these: granian's workers are reaped by multiprocessing, which must not find them gone."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error, ChildProcessError):
                if child.status() == psutil.STATUS_ZOMBIE and child.name() in ("postgres", "pg_ctl"):
                    os.waitpid(child.pid, os.WNOHANG)


class Supervisor:
    """A thread that starts the embedded server again whenever its postmaster dies.

    Polls every POLL seconds (a /proc read); retries a failed start after BACKOFF_FIRST seconds,
    doubling up to BACKOFF_MAX. A start can fail for a while after a crash: backends of the dead
    postmaster still hold its shared memory until they notice and exit.
    """

    POLL = 0.1
    BACKOFF_FIRST = 0.2
    BACKOFF_MAX = 5.0
    REAP_EVERY = 2.0

    def __init__(self, server: Any) -> None:
        self.server = server
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-postgres-supervisor", daemon=True)

    def __enter__(self) -> "Supervisor":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        # Stopped before pgserver stops the server at exit, or it would start it again.
        self._stop.set()
        self._thread.join(timeout=30)

    def _process(self) -> psutil.Process | None:
        info = self.server._postmaster_info
        return None if info is None else info.process

    def alive(self) -> bool:
        process = self._process()
        if process is None or not process.is_running():  # is_running: also false for a reused pid
            return False
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(process.pid, os.WNOHANG)[0] == process.pid:
                return False  # our child (adopt_orphans), and now reaped
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _run(self) -> None:
        reaped_at = time.monotonic()
        while not self._stop.wait(self.POLL):
            if time.monotonic() - reaped_at > self.REAP_EVERY:
                reap_postgres_zombies()
                reaped_at = time.monotonic()
            if not self.alive():
                self._restart()

    def _restart(self) -> None:
        process = self._process()
        died = time.monotonic()
        log.error("the embedded PostgreSQL (pid %s) has exited; starting it again", process and process.pid)
        delay = self.BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                reap_postgres_zombies()
                with self.server._lock:  # pgserver's lock, shared with other ledger commands
                    remove_stale_pid_file(self.server.pgdata)
                    self.server.ensure_postgres_running()
            except Exception as exc:
                log.warning(
                    "the embedded PostgreSQL cannot start yet (%s); next try in %.1f s", why_not_short(exc), delay
                )
                self._stop.wait(delay)
                delay = min(delay * 2, self.BACKOFF_MAX)
                continue
            self.restarts += 1
            log.warning(
                "the embedded PostgreSQL runs again (pid %s), %.2f s after it exited",
                self.server.get_pid(),
                time.monotonic() - died,
            )
            return


def why_not_short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def with_database(url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def resolve_database(settings: Settings, create: bool = True) -> tuple[str, Any]:
    """The URL to use, starting (or joining) the embedded server when none is configured. Without
    `create`, nothing is created: no cluster, no database (NoCluster instead)."""
    if settings.database_url:
        return settings.database_url, None
    server, server_url = start(settings.data_dir, create)
    try:
        if create:
            await ensure_database(server_url, DATABASE)
        elif not await database_exists(server_url, DATABASE):
            raise no_cluster(settings.data_dir)
    except BaseException:
        server.cleanup()
        raise
    return with_database(server_url, DATABASE), server
