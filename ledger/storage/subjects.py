"""Subjects (a device's salt and pseudonym), the state table, and a subject's entries."""

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from ledger.core.decision import Basis
from ledger.storage.database import translated


class StateRow(NamedTuple):
    """One looked-up (device, purpose): its subject (None: no consent on record, or erased) and
    deciding entry."""

    device_id: str
    purpose: str
    subject: str | None
    basis: Basis | None
    erased: bool = False
    entry: bytes | None = None  # the log entry the row names as deciding


class PairHistory(NamedTuple):
    erased: bool
    entries: dict[int, bytes]


class SubjectStore:
    """Which subject a device is, and where each of its purposes stands."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def states(
        self, pairs: Sequence[tuple[str, str]], tombstones: Sequence[bytes] | None = None
    ) -> tuple[list[StateRow], int]:
        """Current state of each (device, purpose) and the log size, read in one snapshot.

        `tombstones` are the devices' keyed hashes: a device with no subject but a tombstone
        was erased."""
        stones = list(tombstones) if tombstones is not None else [bytes(32)] * len(pairs)
        with translated():
            rows = await self.pool.fetch(
                """SELECT q.device_id, q.purpose, s.subject, c.idx, c.action, c.policy_version,
                          c.occurred_at, c.expires_at, e.tombstone IS NOT NULL AS erased, l.entry,
                          (SELECT tree_size FROM checkpoints ORDER BY tree_size DESC LIMIT 1) AS size
                   FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY
                        AS q(device_id, purpose, tombstone, n)
                   LEFT JOIN subjects s ON s.device_id = q.device_id
                   LEFT JOIN consent_state c ON c.subject = s.subject AND c.purpose = q.purpose
                   LEFT JOIN log_entries l ON l.idx = c.idx
                   LEFT JOIN erased_devices e ON s.subject IS NULL AND e.tombstone = q.tombstone
                   ORDER BY q.n""",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                stones,
            )
        # Callers ask for at least one pair; with none, nothing was read and no snapshot taken.
        size = int(rows[0]["size"] or 0) if rows else 0
        return [
            StateRow(
                r["device_id"],
                r["purpose"],
                r["subject"],
                None
                if r["idx"] is None
                else Basis(r["idx"], r["action"], r["policy_version"], r["occurred_at"], r["expires_at"]),
                r["erased"],
                None if r["entry"] is None else bytes(r["entry"]),
            )
            for r in rows
        ], size

    async def subject_of(self, device_id: str) -> str | None:
        with translated():
            subject: str | None = await self.pool.fetchval(
                "SELECT subject FROM subjects WHERE device_id = $1", device_id
            )
        return subject

    async def history(self, subject: str, below: int) -> dict[int, bytes]:
        """A subject's entries with an index below `below`, oldest first."""
        with translated():
            rows = await self.pool.fetch(
                "SELECT idx, entry FROM log_entries WHERE subject = $1 AND idx < $2 ORDER BY idx", subject, below
            )
        return {r["idx"]: bytes(r["entry"]) for r in rows}

    async def pair_histories(
        self, pairs: Sequence[tuple[str, str]], tombstones: Sequence[bytes], below: int
    ) -> list[PairHistory]:
        """For each (device, purpose): whether the device was erased, and its entries for the
        purpose with an index below `below`, oldest first. One query for the whole batch."""
        with translated():
            rows = await self.pool.fetch(
                """SELECT q.n, e.tombstone IS NOT NULL AS erased, l.idx, l.entry
                   FROM unnest($1::text[], $2::text[], $3::bytea[]) WITH ORDINALITY
                        AS q(device_id, purpose, tombstone, n)
                   LEFT JOIN subjects s ON s.device_id = q.device_id
                   LEFT JOIN erased_devices e ON s.subject IS NULL AND e.tombstone = q.tombstone
                   LEFT JOIN log_entries l ON l.subject = s.subject AND l.purpose = q.purpose AND l.idx < $4
                   ORDER BY q.n, l.idx""",
                [p[0] for p in pairs],
                [p[1] for p in pairs],
                list(tombstones),
                below,
            )
        found = [PairHistory(False, {}) for _ in pairs]
        for r in rows:
            history = found[r["n"] - 1]
            if r["erased"]:
                found[r["n"] - 1] = PairHistory(True, history.entries)
            if r["idx"] is not None:
                history.entries[r["idx"]] = bytes(r["entry"])
        return found

    async def subject_salt(self, device_id: str) -> tuple[str, bytes] | None:
        with translated():
            row = await self.pool.fetchrow("SELECT subject, salt FROM subjects WHERE device_id = $1", device_id)
        return None if row is None else (row["subject"], bytes(row["salt"]))
