"""Audit exports: the bundle (CONTRACT section 4) as files or as a tar stream, in constant memory.

A bundle holds entries.ndjson (each line exactly the entry bytes), checkpoint (the signed note
whose tree covers them), keys (the verifier keys of every key that signed a checkpoint of the
log, one per line, after a rotation the earlier ones too: a hint for the verifier, never trusted
by it) and, when filtered, proofs.ndjson (an inclusion proof per entry into the checkpoint's
tree). Entries are read page by page and proofs are built a page at a time from one query for
the nodes they need.
"""

import tarfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import msgspec

from ledger.core.proof import ManyProofs, inclusion_ranges
from ledger.core.verify import ProofLine
from ledger.errors import InvalidRequest, StorageError
from ledger.services.stores import LogReads

PAGE = 10_000
ENTRIES, CHECKPOINT, KEYS, PROOFS = "entries.ndjson", "checkpoint", "keys", "proofs.ndjson"
_encode = msgspec.json.Encoder().encode


class Plan(NamedTuple):
    """What an export holds, fixed before the first byte is written."""

    start: int
    end: int
    tree_size: int
    checkpoint: str
    keys: list[str]

    @property
    def filtered(self) -> bool:
        return (self.start, self.end) != (0, self.tree_size)

    @property
    def entry_count(self) -> int:
        return self.end - self.start


async def plan(
    log: LogReads,
    start: int | None = None,
    end: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Plan:
    head = await log.head()
    if head is None:
        raise StorageError("the log has no checkpoint yet")
    first = 0 if start is None else start
    last = head.size if end is None else min(end, head.size)
    if first < 0 or first > head.size:
        raise InvalidRequest(f"start={first} is outside the log (size {head.size})")
    if last < first:
        raise InvalidRequest(f"end={last} is before start={first}")
    if since is not None and until is not None and until <= since:
        raise InvalidRequest("until must be after since")
    if since is not None or until is not None:
        first, last = await log.index_range(first, last, since, until)
    # Webhook keys never sign a checkpoint, so they are left out by this alone.
    keys = [k.vkey for k in await log.keys() if k.signed]
    return Plan(first, last, head.size, head.note, keys)


async def entry_lines(log: LogReads, p: Plan) -> AsyncIterator[bytes]:
    """entries.ndjson, a page at a time."""
    for page in range(p.start, p.end, PAGE):
        rows = await log.entries(page, min(page + PAGE, p.end))
        yield b"".join(row + b"\n" for row in rows)


async def proof_lines(log: LogReads, p: Plan) -> AsyncIterator[bytes]:
    """proofs.ndjson, a page at a time, each page's nodes fetched in one query."""
    for page in range(p.start, min(p.end, p.tree_size), PAGE):
        indexes = range(page, min(page + PAGE, p.end))
        many = ManyProofs(indexes, p.tree_size)
        proofs = many.proofs(await log.nodes(many.nodes()))
        yield b"".join(
            _encode(ProofLine(i, p.tree_size, [h.hex() for h in proof])) + b"\n"
            for i, proof in zip(indexes, proofs, strict=True)
        )


def proofs_size(p: Plan) -> int:
    """Bytes of proofs.ndjson, known without hashing: a line's length depends only on its index,
    the tree size and how many hashes its proof has."""
    fixed = len(_encode(ProofLine(0, p.tree_size, []))) - 1  # without the "0" of the index
    total = 0
    for i in range(p.start, p.end):
        hashes = len(inclusion_ranges(i, p.tree_size))
        total += fixed + len(str(i)) + hashes * 66 + max(hashes - 1, 0) + 1  # "hex", commas, newline
    return total


def _text(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


ProgressFn = Callable[[str, int, int], None]


async def write_directory(log: LogReads, p: Plan, out: Path, progress: ProgressFn | None = None) -> None:
    """The bundle as files in `out` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)

    async def write(name: str, chunks: AsyncIterator[bytes]) -> None:
        written = 0
        with open(out / name, "wb") as f:
            async for chunk in chunks:
                f.write(chunk)
                written += chunk.count(b"\n")
                if progress:
                    progress(name, written, p.entry_count)

    await write(ENTRIES, entry_lines(log, p))
    if p.filtered:
        await write(PROOFS, proof_lines(log, p))
    elif (out / PROOFS).exists():
        (out / PROOFS).unlink()
    (out / CHECKPOINT).write_text(p.checkpoint)
    (out / KEYS).write_bytes(_text(p.keys))


async def tar_stream(log: LogReads, p: Plan) -> AsyncIterator[bytes]:
    """The same bundle as an uncompressed tar, streamed; each file's size is known up front."""
    now = int(time.time())

    def header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, now, 0o644
        return info.tobuf(format=tarfile.PAX_FORMAT)

    def padding(size: int) -> bytes:
        return b"\0" * (-size % tarfile.BLOCKSIZE)

    for name, content in ((CHECKPOINT, p.checkpoint.encode()), (KEYS, _text(p.keys))):
        yield header(name, len(content)) + content + padding(len(content))
    size = await log.entries_size(p.start, p.end)
    yield header(ENTRIES, size)
    async for chunk in entry_lines(log, p):
        yield chunk
    yield padding(size)
    if p.filtered:
        size = proofs_size(p)
        yield header(PROOFS, size)
        async for chunk in proof_lines(log, p):
            yield chunk
        yield padding(size)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
