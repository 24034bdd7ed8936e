"""Recording consent: a request becomes a draft, the appender makes it an entry, the caller gets a receipt."""

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from ledger.appender import Appender
from ledger.core.batch import Draft
from ledger.core.entry import format_time
from ledger.core.idempotency import Claim, Replayed
from ledger.errors import UnprocessableRequest
from ledger.integrity import ProvenLog
from ledger.models import ConsentIn, Receipt, consent_decoder, decode_body
from ledger.projection import Projection
from ledger.services.position import Position
from ledger.services.validation import request_time, unknown_purpose

__all__ = ["MAX_CLOCK_SKEW", "Recording"]

# A device clock a little ahead is normal; an action dated further in the future is a bug or a lie.
MAX_CLOCK_SKEW = timedelta(minutes=5)
_canonical = msgspec.json.Encoder(order="sorted")


class Recording:
    def __init__(self, appender: Appender, log: ProvenLog, projection: Projection, position: Position) -> None:
        self.appender = appender
        self.log = log
        self.projection = projection
        self.position = position

    async def record(self, body: bytes, idempotency_key: str | None, token_name: str) -> tuple[Receipt, bool]:
        """Append one consent action; return its receipt and whether it was new (False: a replay)."""
        request = decode_body(consent_decoder, body)
        draft = self.draft(request, datetime.now(UTC))
        claim = None
        if idempotency_key is not None:
            claim = Claim(token_name, idempotency_key, hashlib.sha256(_canonical.encode(request)).digest())
        outcome = await self.appender.append(draft, claim)
        if isinstance(outcome, Replayed):
            receipt = await self.replayed_receipt(request.device_id, outcome)
            # The first attempt may have been recorded by another replica: hold it here too.
            self.projection.apply_replayed(receipt.entry, request.device_id, outcome.tree_size)
            return receipt, False
        return self.position.receipt(request.device_id, outcome), True

    def draft(self, request: ConsentIn, now: datetime) -> Draft:
        """The request checked against every rule of the registry and the privacy statement.

        The registry is this process's view of the one in force: a fast first filter. What
        decides is the appender's check against the log's registry, under the log lock."""
        registry = self.projection.registry
        purpose = registry.purposes.get(request.purpose)
        if purpose is None:
            raise UnprocessableRequest(unknown_purpose(registry, request.purpose))
        occurred = request_time(request.occurred_at, "occurred_at") if request.occurred_at is not None else now
        if occurred > now + MAX_CLOCK_SKEW:
            raise UnprocessableRequest("occurred_at is in the future")
        expires = None
        if request.expires_at is not None:
            if request.action != "grant":
                raise UnprocessableRequest("expires_at applies to a grant only")
            expires = request_time(request.expires_at, "expires_at")
            if expires <= now:
                raise UnprocessableRequest("expires_at must be after now")
        if request.action == "grant" and request.evidence.get("age_band") == "minor":
            # The privacy statement (section 5): minors only with a guardian's consent.
            if request.actor != "guardian":
                raise UnprocessableRequest(
                    "a grant for a minor (evidence.age_band=minor) must be given with actor=guardian"
                )
            if not request.evidence.get("guardian_verification", "").strip():
                raise UnprocessableRequest(
                    "a grant for a minor needs evidence.guardian_verification: how the guardian was verified"
                )
        if request.action == "grant" and request.policy_version < purpose.min_policy_version:
            raise UnprocessableRequest(
                f"policy_version {request.policy_version} is below {request.purpose}'s min_policy_version "
                f"{purpose.min_policy_version}: show the current privacy statement and ask again"
            )
        return Draft(
            id=str(uuid.uuid4()),
            device_id=request.device_id,
            purpose=request.purpose,
            action=request.action,
            policy_version=request.policy_version,
            occurred_at=format_time(occurred),
            actor=request.actor,
            method=request.method,
            evidence=request.evidence,
            expires_at=format_time(expires) if expires else None,
        )

    async def replayed_receipt(self, device_id: str, replayed: Replayed) -> Receipt:
        """The first receipt again, rebuilt from the log and proven: same entry, checkpoint and proof."""
        tree = await self.log.at_size(replayed.tree_size)
        proven = (await self.log.read([replayed.entry_index], tree))[replayed.entry_index]
        return self.position.receipt(device_id, proven.sealed(tree))
