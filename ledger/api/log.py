"""The public face of the log: keys, checkpoints, entries and proofs (CONTRACT section 3)."""

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Response, Stream

from ledger.api.deps import LedgerDep
from ledger.api.guards import require
from ledger.api.openapi import scope
from ledger.core.entry import parse_time
from ledger.errors import UnprocessableRequest

# Decimal digits only (StrictRequests refuses `null`, `1.0` and the like before msgspec's lax
# conversion could read them as absent or as 1), up to PostgreSQL's bigint.
NonNegative = Annotated[int, QueryParameter(ge=0, le=2**63 - 1)]
MaybeNonNegative = Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)]


class KeyOut(msgspec.Struct):
    key_name: str
    key_id: str
    vkey: str
    algorithm: str
    active: bool


class KeysOut(msgspec.Struct):
    keys: list[KeyOut]


class InclusionOut(msgspec.Struct):
    index: int
    tree_size: int
    proof: list[str]


class ConsistencyOut(msgspec.Struct, rename={"size1": "from", "size2": "to"}):
    size1: int
    size2: int
    proof: list[str]


class KeysController(Controller):
    path = "/v1/keys"

    @get("/")
    async def keys(self, ledger: LedgerDep) -> KeysOut:
        """Every log key that signed a checkpoint (after a rotation, the earlier ones too), the one
        signing now marked active, then the webhook key deliveries are signed with; public."""
        return KeysOut(
            [KeyOut(k.key_name, k.key_id, k.vkey, "ed25519", k.active) for k in await ledger.auditing.keys()]
        )


class LogController(Controller):
    path = "/v1/log"

    @get("/checkpoint", media_type="text/plain")
    async def checkpoint(self, ledger: LedgerDep) -> Response[str]:
        """The latest signed checkpoint (a C2SP signed note), public."""
        return Response(await ledger.auditing.checkpoint(), headers={"Cache-Control": "no-store"})

    @get("/entries", guards=[require("audit:read")], security=scope("audit:read"), media_type="application/x-ndjson")
    async def entries(self, ledger: LedgerDep, start: NonNegative = 0, end: MaybeNonNegative = None) -> Stream:
        """Entries start <= index < end as NDJSON, each line exactly the entry bytes."""
        first, last, lines = await ledger.auditing.entries(start, end)
        return Stream(
            lines,
            media_type="application/x-ndjson",
            headers={"Ledger-Entries-Start": str(first), "Ledger-Entries-End": str(last)},
        )

    @get("/proof/inclusion", guards=[require("audit:read")], security=scope("audit:read"))
    async def inclusion(self, ledger: LedgerDep, index: NonNegative, tree_size: NonNegative) -> InclusionOut:
        """An RFC 9162 inclusion proof of the entry at index in the tree of tree_size."""
        proof = await ledger.auditing.inclusion(index, tree_size)
        return InclusionOut(index, tree_size, [h.hex() for h in proof])

    @get("/proof/consistency", guards=[require("audit:read")], security=scope("audit:read"))
    async def consistency(
        self,
        ledger: LedgerDep,
        size1: Annotated[int, QueryParameter(name="from", ge=0, le=2**63 - 1)],
        size2: Annotated[int, QueryParameter(name="to", ge=0, le=2**63 - 1)],
    ) -> ConsistencyOut:
        """An RFC 9162 consistency proof between the trees of sizes from and to."""
        proof = await ledger.auditing.consistency(size1, size2)
        return ConsistencyOut(size1, size2, [h.hex() for h in proof])


class ExportController(Controller):
    path = "/v1/export"

    @get(
        "/",
        guards=[require("audit:read")],
        security=scope("audit:read"),
        media_type="application/x-tar",
        opt={"problems": (422,)},
    )
    async def export(
        self,
        ledger: LedgerDep,
        start: MaybeNonNegative = None,
        end: MaybeNonNegative = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
    ) -> Stream:
        """The export bundle (entries, checkpoint, keys, proofs when filtered) as a tar stream."""
        plan = await ledger.auditing.export_plan(start, end, _time(since, "since"), _time(until, "until"))
        name = f"consent-ledger-export-{plan.start}-{plan.end}-of-{plan.tree_size}.tar"
        return Stream(
            ledger.auditing.export_stream(plan),
            media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
        )


def _time(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UnprocessableRequest(f"{name}: {exc}") from None
