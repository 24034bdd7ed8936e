"""Answering "is this allowed now?": checks, a device's consents and history, the registry."""

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post, put
from litestar.exceptions import NotFoundException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter, QueryParameter

from ledger import metrics
from ledger.api.deps import LedgerDep
from ledger.api.guards import authorized_in_memory, require
from ledger.api.openapi import scope
from ledger.api.strict import TOML, is_json, json_only, json_or_toml, query_pairs
from ledger.composition import Services
from ledger.core.entry import DEVICE_ID_PATTERN, PURPOSE_PATTERN, whole
from ledger.core.purposes import Registry, purpose_record, records_csv
from ledger.models import (
    ChecksIn,
    ChecksOut,
    DecisionOut,
    DeviceConsents,
    DeviceHistory,
    PersonalExport,
    Receipt,
    RecordOfProcessing,
    RegistryHistory,
    RegistryInForce,
    RegistryReceipt,
    checks_decoder,
    decode_body,
)
from ledger.services.registry import decode_registry

MAX_CHECKS_BODY = 256 * 1024
MAX_REGISTRY_BODY = 1024 * 1024
_encode = msgspec.json.Encoder().encode
# Documented, not enforced by Litestar (which would answer 400): the service answers 422, as the
# contract says, for a malformed device_id or an unknown purpose.
DeviceQuery = Annotated[str, QueryParameter(schema_extra={"pattern": DEVICE_ID_PATTERN})]
DevicePath = Annotated[str, PathParameter(schema_extra={"pattern": DEVICE_ID_PATTERN})]
PurposeQuery = Annotated[str, QueryParameter(schema_extra={"pattern": PURPOSE_PATTERN})]
# Opaque to callers; visible ASCII here, so the service's own parsing sees nothing stranger.
Consistency = Annotated[
    str | None,
    QueryParameter(
        pattern=whole(r"[\x21-\x7e]{1,64}"),
        description="A Consistency-Token: answer only after this replica applied everything it covers.",
    ),
]
At = Annotated[str | None, QueryParameter(description="An RFC 3339 time: answer as of then, from the log.")]


class AnswerFromMemory:
    """The hot path of GET /v1/check, as the route's own middleware: after Litestar has routed the
    request (and the app's middleware, timing and strict query rules, has run), before the
    handler's guards, parameter parsing and response pipeline, which cost several times the
    decision itself. It answers only what this process knows without any I/O: a token it
    validated recently with the consent:check scope, exactly `device_id` and `purpose`, a fresh
    projection and a cached decision. Everything else, errors included, goes on to the handler.
    The answer is the same Struct the handler returns, encoded the same way; the Consistency-Token
    header is added by the app's before_send hook for both."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = self._answer(scope)
        if body is None:
            await self.app(scope, receive, send)
            return
        metrics.count_check_answer("memory")
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        ]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _answer(scope: Any) -> bytes | None:
        services: Services = scope["app"].state.ledger
        authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if not authorized_in_memory(services, authorization.decode("latin-1"), "consent:check"):
            return None
        params = query_pairs(scope)
        if len(params) != 2:
            return None
        found = dict(params)
        device_id, purpose = found.get("device_id"), found.get("purpose")
        if device_id is None or purpose is None:
            return None
        decision = services.checking.answer_cached(device_id, purpose)
        return None if decision is None else _encode(DecisionOut.of(device_id, decision))


class ChecksController(Controller):
    path = "/v1/check"
    guards = [require("consent:check")]  # noqa: RUF012 (litestar's layer attribute)
    security = scope("consent:check")

    @get("/", opt={"problems": (422,)}, middleware=[AnswerFromMemory])
    async def check(
        self,
        ledger: LedgerDep,
        device_id: DeviceQuery,
        purpose: PurposeQuery,
        consistency: Consistency = None,
        at: At = None,
    ) -> DecisionOut:
        """Whether processing is allowed now (or at `at`), and the entry that decided."""
        metrics.count_check_answer("route")
        [decision] = await ledger.checking.decide([(device_id, purpose)], consistency, at)
        return DecisionOut.of(device_id, decision)

    @post("/", status_code=200, request_max_body_size=MAX_CHECKS_BODY, guards=[json_only], opt={"body": ChecksIn})
    async def check_many(
        self,
        request: Request[Any, Any, Any],
        ledger: LedgerDep,
        consistency: Consistency = None,
        at: At = None,
    ) -> ChecksOut:
        """Up to 1,000 checks at once; the decisions in the order asked."""
        body = decode_body(checks_decoder, await request.body())
        pairs = [(c.device_id, c.purpose) for c in body.checks]
        decisions = await ledger.checking.decide(pairs, consistency, at)
        return ChecksOut([DecisionOut.of(d, r) for (d, _), r in zip(pairs, decisions, strict=True)])


class DevicesController(Controller):
    path = "/v1/devices/{device_id:str}"

    @get("/consents", guards=[require("consent:check")], security=scope("consent:check"), opt={"problems": (422,)})
    async def consents(
        self,
        ledger: LedgerDep,
        device_id: DevicePath,
        consistency: Consistency = None,
        at: At = None,
    ) -> DeviceConsents:
        """The device's decision for every purpose of the registry (in force then, with `at`)."""
        purposes = list((await ledger.checking.registry_at(at)).purposes)
        decisions = await ledger.checking.decide([(device_id, p) for p in purposes], consistency, at)
        return DeviceConsents(device_id, {d.purpose: DecisionOut.of(device_id, d) for d in decisions})

    @get("/export", guards=[require("audit:read")], security=scope("audit:read"), opt={"problems": (404, 422)})
    async def personal_export(self, ledger: LedgerDep, device_id: DevicePath) -> PersonalExport:
        """The person's own record: receipts, salt, and where each purpose stands."""
        record = await ledger.auditing.personal_export(device_id)
        if record is None:
            raise NotFoundException("the ledger holds no record for this device")
        return record

    @post("/erase", guards=[require("admin")], security=scope("admin"), status_code=201, opt={"problems": (404, 422)})
    async def erase(self, ledger: LedgerDep, device_id: DevicePath) -> Receipt:
        """Erasure by crypto-shredding: an erase entry, then the salt and device_id are deleted."""
        return await ledger.erasure.erase(device_id)

    @get("/history", guards=[require("audit:read")], security=scope("audit:read"), opt={"problems": (422,)})
    async def history(self, ledger: LedgerDep, device_id: DevicePath) -> DeviceHistory:
        """Every receipt of the device, oldest first."""
        return DeviceHistory(device_id, await ledger.auditing.history(device_id))


class PurposesController(Controller):
    path = "/v1/purposes"

    @get("/", guards=[require("consent:check")], security=scope("consent:check"))
    async def purposes(self, ledger: LedgerDep) -> RegistryInForce:
        """The purpose registry in force, with the index and time of the log entry that published it."""
        return ledger.registries.in_force()

    @put(
        "/",
        guards=[require("admin"), json_or_toml],
        security=scope("admin"),
        request_max_body_size=MAX_REGISTRY_BODY,
        status_code=201,
        opt={"body": Registry, "also_body": {TOML: {"type": "string"}}, "problems": (422,)},
        responses={200: ResponseSpec(RegistryReceipt, description="Equal to the registry in force: nothing appended")},
    )
    async def publish(self, request: Request[Any, Any, Any], ledger: LedgerDep) -> Response[RegistryReceipt]:
        """Publish a purpose registry into the log (TOML as in LEDGER_PURPOSES, or the same as JSON).

        From the entry's index on, every replica decides with it and refuses grants below its
        minimum policy versions. 201 with the entry's receipt; 200 with the receipt of the
        registry in force, and nothing appended, when it is equal to it."""
        toml = not is_json(request.headers.get("content-type", ""))
        registry = decode_registry(await request.body(), toml)
        receipt, created = await ledger.registries.publish(registry)
        return Response(receipt, status_code=201 if created else 200)

    @get("/history", guards=[require("audit:read")], security=scope("audit:read"))
    async def history(self, ledger: LedgerDep) -> RegistryHistory:
        """Every published registry, oldest first, with what each changed; each read from the log and proven."""
        return await ledger.registries.history()

    @get(
        "/record",
        guards=[require("consent:check")],
        security=scope("consent:check"),
        responses={200: ResponseSpec(RecordOfProcessing, description="JSON, or CSV with Accept: text/csv")},
        opt={"also": {"text/csv": {"type": "string"}}},
    )
    async def record(self, request: Request[Any, Any, Any], ledger: LedgerDep) -> Response[Any]:
        """The registry as a record of processing: JSON, or CSV when the client asks for it."""
        registry = ledger.registry
        records = [purpose_record(k, p, registry.controller) for k, p in registry.purposes.items()]
        if "text/csv" in request.headers.get("accept", ""):
            return Response(
                records_csv(records),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="record-of-processing.csv"'},
            )
        return Response(RecordOfProcessing(records))
