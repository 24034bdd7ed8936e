"""The public face of the log: keys, checkpoints, entries and proofs (CONTRACT section 3)."""

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Response, Stream

from ledger.api.deps import LedgerDep
from ledger.api.guards import require
from ledger.core.entry import parse_time
from ledger.errors import UnprocessableRequest

NonNegative = Annotated[int, QueryParameter(ge=0)]


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
        return KeysOut(
            [KeyOut(k.key_name, k.key_id, k.vkey, "ed25519", k.active) for k in await ledger.auditing.keys()]
        )


class LogController(Controller):
    path = "/v1/log"

    @get("/checkpoint", media_type="text/plain")
    async def checkpoint(self, ledger: LedgerDep) -> Response[str]:
        return Response(await ledger.auditing.checkpoint(), headers={"Cache-Control": "no-store"})

    @get("/entries", guards=[require("audit:read")])
    async def entries(
        self, ledger: LedgerDep, start: NonNegative = 0, end: Annotated[int | None, QueryParameter(ge=0)] = None
    ) -> Stream:
        first, last, lines = await ledger.auditing.entries(start, end)
        return Stream(
            lines,
            media_type="application/x-ndjson",
            headers={"Ledger-Entries-Start": str(first), "Ledger-Entries-End": str(last)},
        )

    @get("/proof/inclusion", guards=[require("audit:read")])
    async def inclusion(self, ledger: LedgerDep, index: NonNegative, tree_size: NonNegative) -> InclusionOut:
        proof = await ledger.auditing.inclusion(index, tree_size)
        return InclusionOut(index, tree_size, [h.hex() for h in proof])

    @get("/proof/consistency", guards=[require("audit:read")])
    async def consistency(
        self,
        ledger: LedgerDep,
        size1: Annotated[int, QueryParameter(name="from", ge=0)],
        size2: Annotated[int, QueryParameter(name="to", ge=0)],
    ) -> ConsistencyOut:
        proof = await ledger.auditing.consistency(size1, size2)
        return ConsistencyOut(size1, size2, [h.hex() for h in proof])


class ExportController(Controller):
    path = "/v1/export"

    @get("/", guards=[require("audit:read")])
    async def export(
        self,
        ledger: LedgerDep,
        start: Annotated[int | None, QueryParameter(ge=0)] = None,
        end: Annotated[int | None, QueryParameter(ge=0)] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
    ) -> Stream:
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
