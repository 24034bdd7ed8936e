"""Appends from 32 concurrent callers until killed, printing each acknowledged receipt.

Run by test_crash.py, which SIGKILLs it mid-stream: whatever this printed was acknowledged and
must survive; whatever it did not print may or may not have committed, but never in part.
"""

import asyncio
import sys
from pathlib import Path

from ledger.appender import Appender
from ledger.keys import read_key_file
from ledger.storage import create_pool, open_stores
from tests.integration.helpers import draft


async def main(url: str, key_file: str) -> None:
    signer = read_key_file(Path(key_file))
    store = open_stores(await create_pool(url, max_size=4))
    await store.log.register_key(signer.verifier)
    appender = Appender(store.log, signer, signer.name)
    await appender.start()

    async def caller(n: int) -> None:
        i = 0
        while True:
            sealed = await appender.append(draft(f"crash-{n}-{i}"))
            sys.stdout.write(f"{sealed.entry.index} {sealed.leaf_hash.hex()}\n")
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(caller(n) for n in range(32)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
