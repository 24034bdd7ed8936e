"""Runs one webhook dispatcher with a short lease until killed (test_webhooks.py kills it mid-delivery)."""

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

from ledger.keys import read_key_file
from ledger.storage import create_pool, open_stores
from ledger.webhooks import Dispatcher, webhook_key


async def main(url: str, key_file: str, lease_seconds: float) -> None:
    store = open_stores(await create_pool(url, max_size=2))
    dispatcher = Dispatcher(
        store.outbox,
        webhook_key(read_key_file(Path(key_file))),
        allow_private=True,
        lease=timedelta(seconds=lease_seconds),
        poll_interval=0.1,
    )
    await dispatcher.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
