"""PostgreSQL adapters: the only package that imports asyncpg. One store per thing stored."""

from typing import NamedTuple

import asyncpg

from ledger.storage.database import create_pool
from ledger.storage.log import LogStore
from ledger.storage.outbox import OutboxStore
from ledger.storage.subjects import SubjectStore
from ledger.storage.tokens import TokenStore

__all__ = ["LogStore", "OutboxStore", "Stores", "SubjectStore", "TokenStore", "create_pool", "open_stores"]


class Stores(NamedTuple):
    """Every store over one connection pool, for the composition root to hand out."""

    pool: asyncpg.Pool
    log: LogStore
    subjects: SubjectStore
    tokens: TokenStore
    outbox: OutboxStore


def open_stores(pool: asyncpg.Pool) -> Stores:
    return Stores(pool, LogStore(pool), SubjectStore(pool), TokenStore(pool), OutboxStore(pool))
