"""docs/openapi.json is the document the service serves, as `python -m ledger.api.openapi` prints it."""

import json
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
REGENERATE = "regenerate it: .venv/bin/python -m ledger.api.openapi > docs/openapi.json"


def test_the_committed_document_is_the_one_a_running_server_serves(base_url: str) -> None:
    served = httpx.get(f"{base_url}/schema/openapi.json")
    assert served.status_code == 200
    assert json.loads(COMMITTED.read_bytes()) == served.json(), f"docs/openapi.json is out of date; {REGENERATE}"


def test_the_committed_document_is_what_the_command_prints() -> None:
    """With no settings in the environment: the document depends on none."""
    printed = subprocess.run(
        [sys.executable, "-m", "ledger.api.openapi"], cwd=ROOT, capture_output=True, check=True, env={}
    )
    assert printed.stderr == b""
    assert printed.stdout == COMMITTED.read_bytes(), f"docs/openapi.json is not the command's output; {REGENERATE}"
