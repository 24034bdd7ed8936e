"""README's recipe for verifying an export with only openssl and Python's standard library works."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ledger import export
from tests.unit.core.test_verify import HEAD, LEAVES, SIGNER

README = Path(__file__).parents[2] / "README.md"


def recipe() -> str:
    match = re.search(r"<!-- auditor-recipe -->\n```bash\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, "README lost its auditor recipe"
    return match[1]


def write_bundle(directory: Path, leaves: list[bytes], checkpoint: str) -> Path:
    directory.mkdir()
    (directory / export.ENTRIES).write_bytes(b"".join(leaf + b"\n" for leaf in leaves))
    (directory / export.CHECKPOINT).write_text(checkpoint)
    (directory / export.KEYS).write_text(SIGNER.verifier.vkey + "\n")
    return directory


def run(bundle: Path, vkey: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", recipe()],
        cwd=cwd,
        env={"BUNDLE": str(bundle), "VKEY": vkey, "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_recipe_verifies_a_good_bundle_and_rejects_a_bad_one(tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "good", LEAVES, HEAD)
    result = run(good, SIGNER.verifier.vkey, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Signature Verified Successfully" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "OK: the entries are the log the checkpoint signs"

    altered = write_bundle(tmp_path / "altered", [LEAVES[0].replace(b"withdraw", b"grant"), *LEAVES[1:]], HEAD)
    result = run(altered, SIGNER.verifier.vkey, tmp_path)
    assert result.returncode != 0
    assert "OK:" not in result.stdout
    computed, signed = result.stdout.strip().splitlines()[-2:]
    assert computed.split(": ", 1)[1] != signed.split(": ", 1)[1]
    missing = write_bundle(tmp_path / "missing", LEAVES[:-1], HEAD)
    assert run(missing, SIGNER.verifier.vkey, tmp_path).returncode != 0

    forged = write_bundle(tmp_path / "forged", LEAVES, HEAD.replace("\n40\n", "\n41\n", 1))
    assert run(forged, SIGNER.verifier.vkey, tmp_path).returncode != 0
