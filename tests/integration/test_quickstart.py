"""README's quickstart block runs verbatim with `bash -e -o pipefail` once the first command serves."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .server import running_server

ROOT = Path(__file__).parents[2]


def quickstart() -> str:
    match = re.search(r"<!-- quickstart -->\n```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert match, "README lost its quickstart block"
    return match[1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_quickstart_runs_as_written(tmp_path: Path) -> None:
    # The quickstart calls .venv/bin/ledger, as README's first command makes it: here, the
    # virtual environment running the tests.
    venv = Path(sys.prefix)
    assert (venv / "bin" / "ledger").exists(), "the tests do not run in a virtual environment with ledger"
    # The first command's server: embedded PostgreSQL in a data directory of its own, no settings.
    data = {"LEDGER_DATA_DIR": str(tmp_path / "data")}
    with running_server(data) as base:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")} | data | {"BASE": base}
        work = tmp_path / "work"
        work.mkdir()
        (work / ".venv").symlink_to(venv)
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", quickstart()],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [line for line in result.stdout.splitlines() if line.startswith('{"device_id":"d-42"')]
    assert [re.search(r'"reason":"(\w+)"', c)[1] for c in checks] == ["granted", "withdrawn", "erased"]  # type: ignore[index]
    assert re.search(r"OK: entry \d+ \(withdraw pixverse_sharing", result.stdout)
    assert "OK: the salt shows these 2 entries are those of device d-42" in result.stdout
    assert "Traceback" not in result.stderr
