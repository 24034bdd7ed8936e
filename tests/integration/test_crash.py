"""A process killed in the middle of group commits loses nothing it acknowledged and leaves no half batch."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from ledger.core.note import Verifier
from ledger.core.rfc6962 import leaf_hash
from ledger.core.verify import verify_log
from ledger.keys import write_key_file
from ledger.storage import Stores

ROOT = Path(__file__).parents[2]


async def test_sigkill_mid_batch_keeps_every_acknowledged_entry(
    database_url: str, store: Stores, tmp_path: Path
) -> None:
    signer = write_key_file(tmp_path / "key", "crash.example/log")
    acknowledged: dict[int, str] = {}
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.append_forever", database_url, str(tmp_path / "key")],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert proc.stdout is not None
        target = len(acknowledged) + 300 + 97 * round_
        while len(acknowledged) < target:
            line = proc.stdout.readline()
            assert line, "the appender process died on its own"
            index, digest = line.split()
            acknowledged[int(index)] = digest
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    head = await store.log.head()
    assert head is not None
    entries = await store.log.entries(0, head.size)
    # Nothing acknowledged was lost, and it is byte for byte what was acknowledged.
    for index, digest in acknowledged.items():
        assert leaf_hash(entries[index]).hex() == digest
    # No partial batch: the latest checkpoint covers exactly the entries that exist, all nodes
    # agree with it, and the whole log verifies against it.
    assert await store.pool.fetchval("SELECT count(*) FROM log_entries") == head.size
    verify_log(entries, head.note, [Verifier.from_vkey(signer.verifier.vkey)])
    leaves = await store.pool.fetchval("SELECT count(*) FROM merkle_nodes WHERE level = 0")
    assert leaves == head.size
