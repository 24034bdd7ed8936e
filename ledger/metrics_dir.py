"""Each `ledger serve` keeps its workers' metrics files in a directory of its own.

prometheus_client's multiprocess mode sums every file in PROMETHEUS_MULTIPROC_DIR, so servers
that share a data directory must not share that directory, and no server may delete another
live one's files: its workers write to them for as long as they run and its /metrics reads them.

A server holds an flock on `<name>.lock` beside its directory for its whole life. The kernel
drops the lock when the last process holding the descriptor is gone (forked workers inherit it),
so a lock that can be taken means its server is gone, whatever process has its pid since. Only
such directories are removed at start.

No prometheus_client here: it reads PROMETHEUS_MULTIPROC_DIR once, when first imported.
"""

import atexit
import contextlib
import fcntl
import os
import secrets
import shutil
from pathlib import Path

import psutil

_held: list[int] = []  # lock descriptors, open until this process exits


def claim(root: Path) -> Path:
    """Remove the directories of servers that are gone; create and lock one for this process."""
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned(root)
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    # Locked under a name the sweep ignores, and only then renamed into place: a sweep in
    # another server can never take the lock of a directory that is being created.
    partial = root / f".{name}.partial"
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _held.append(fd)
    directory = root / name
    directory.mkdir()
    lock = root / f"{name}.lock"
    partial.rename(lock)
    owner = os.getpid()

    def release() -> None:
        if os.getpid() == owner:  # not in a forked child that somehow ran atexit
            shutil.rmtree(directory, ignore_errors=True)
            lock.unlink(missing_ok=True)

    atexit.register(release)
    return directory


def remove_abandoned(root: Path) -> list[str]:
    """Delete the metrics directories whose server has exited; return their names."""
    removed = []
    for lock in root.glob("*.lock"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # swept by another server a moment ago
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its server (or one of its workers) is still running
            shutil.rmtree(root / lock.stem, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(lock.stem)
        finally:
            os.close(fd)
    # The layout before locks: one directory per server pid, without a lock file.
    for old in root.iterdir():
        if old.name.isdigit() and old.is_dir() and not psutil.pid_exists(int(old.name)):
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
                removed.append(old.name)
    return removed
