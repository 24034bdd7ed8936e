"""Progress of long commands: a bar on a terminal, plain lines without escapes anywhere else."""

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

from ledger.storage import Stores

from .test_cli import ledger
from .test_verify_state import fill

ESCAPES = ("\r", "\x1b")


def on_a_terminal(*args: str, env: dict[str, str]) -> tuple[int, str]:
    """`ledger ARGS` with stderr on a pseudo-terminal, as a person at a terminal runs it: its exit
    code and what the terminal showed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    terminal, child_side = os.openpty()
    fcntl.ioctl(child_side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger", *args],
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=child_side,
    )
    os.close(child_side)
    shown = []
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # EIO: every process on the other side has closed it
            break
        if not data:
            break
        shown.append(data)
    os.close(terminal)
    return proc.wait(120), b"".join(shown).decode(errors="replace")


async def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere(
    store: Stores, database_url: str, key_file: Path, tmp_path: Path
) -> None:
    await fill(store, key_file)  # 32 entries
    env = {"LEDGER_DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(key_file)}
    bundle = str(tmp_path / "bundle")
    commands = {
        "export": (["export", "--out", bundle], "entries.ndjson: 32 of 32"),
        "verify-state": (["verify-state"], "refolded: 32 of 32"),
    }
    for name, (args, line) in commands.items():
        piped = ledger(*args, env=env)
        assert piped.returncode == 0, piped.stderr
        assert not any(escape in piped.stderr for escape in ESCAPES), (name, piped.stderr)
        assert line in piped.stderr.splitlines(), (name, piped.stderr)
        code, shown = on_a_terminal(*args, env=env)
        assert code == 0, shown
        assert "\r" in shown, (name, shown)  # a bar redraws its line
        assert "100%|" in shown, (name, shown)
        assert line not in shown, (name, shown)
