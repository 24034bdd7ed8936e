"""Answering "is this allowed now?": checks, a device's consents and history, the registry."""

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery

from ledger.api.deps import LedgerDep
from ledger.api.guards import require
from ledger.core.purposes import Registry, purpose_record, records_csv
from ledger.models import (
    ChecksOut,
    DecisionOut,
    DeviceConsents,
    DeviceHistory,
    PersonalExport,
    Receipt,
    RecordOfProcessing,
    checks_decoder,
    decode_body,
)

MAX_CHECKS_BODY = 256 * 1024


class ChecksController(Controller):
    path = "/v1/check"
    guards = [require("consent:check")]  # noqa: RUF012 (litestar's layer attribute)

    @get("/")
    async def check(
        self,
        ledger: LedgerDep,
        device_id: FromQuery[str],
        purpose: FromQuery[str],
        consistency: FromQuery[str | None] = None,
        at: FromQuery[str | None] = None,
    ) -> DecisionOut:
        [decision] = await ledger.checking.decide([(device_id, purpose)], consistency, at)
        return DecisionOut.of(device_id, decision)

    @post("/", status_code=200, request_max_body_size=MAX_CHECKS_BODY)
    async def check_many(
        self,
        request: Request[Any, Any, Any],
        ledger: LedgerDep,
        consistency: FromQuery[str | None] = None,
        at: FromQuery[str | None] = None,
    ) -> ChecksOut:
        body = decode_body(checks_decoder, await request.body())
        pairs = [(c.device_id, c.purpose) for c in body.checks]
        decisions = await ledger.checking.decide(pairs, consistency, at)
        return ChecksOut([DecisionOut.of(d, r) for (d, _), r in zip(pairs, decisions, strict=True)])


class DevicesController(Controller):
    path = "/v1/devices/{device_id:str}"

    @get("/consents", guards=[require("consent:check")])
    async def consents(
        self,
        ledger: LedgerDep,
        device_id: FromPath[str],
        consistency: FromQuery[str | None] = None,
        at: FromQuery[str | None] = None,
    ) -> DeviceConsents:
        purposes = list(ledger.registry.purposes)
        decisions = await ledger.checking.decide([(device_id, p) for p in purposes], consistency, at)
        return DeviceConsents(device_id, {d.purpose: DecisionOut.of(device_id, d) for d in decisions})

    @get("/export", guards=[require("audit:read")])
    async def personal_export(self, ledger: LedgerDep, device_id: FromPath[str]) -> PersonalExport:
        record = await ledger.auditing.personal_export(device_id)
        if record is None:
            raise NotFoundException("the ledger holds no record for this device")
        return record

    @post("/erase", guards=[require("admin")], status_code=201)
    async def erase(self, ledger: LedgerDep, device_id: FromPath[str]) -> Receipt:
        return await ledger.erasure.erase(device_id)

    @get("/history", guards=[require("audit:read")])
    async def history(self, ledger: LedgerDep, device_id: FromPath[str]) -> DeviceHistory:
        return DeviceHistory(device_id, await ledger.auditing.history(device_id))


class PurposesController(Controller):
    path = "/v1/purposes"

    @get("/", guards=[require("consent:check")])
    async def purposes(self, ledger: LedgerDep) -> Registry:
        return ledger.registry

    @get("/record", guards=[require("consent:check")])
    async def record(self, request: Request[Any, Any, Any], ledger: LedgerDep) -> Response[Any]:
        """The registry as a record of processing: JSON, or CSV when the client asks for it."""
        records = [purpose_record(k, p, ledger.registry.controller) for k, p in ledger.registry.purposes.items()]
        if "text/csv" in request.headers.get("accept", ""):
            return Response(
                records_csv(records),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="record-of-processing.csv"'},
            )
        return Response(RecordOfProcessing(records))
