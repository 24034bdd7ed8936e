"""The ledger's use cases, between the HTTP layer and storage."""

import asyncio
import hashlib
import hmac
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import urlsplit

import msgspec
from nacl.signing import SigningKey

from ledger import auth, metrics
from ledger.appender import Appender, UnknownDevice
from ledger.core import consistency
from ledger.core.batch import Draft, Sealed
from ledger.core.consistency import consistency_token
from ledger.core.decision import ERASED, Decision, decide, deciding
from ledger.core.entry import ALL_PURPOSES, format_time, is_device_id, parse_time
from ledger.core.errors import ProofError
from ledger.core.idempotency import Claim, Replayed
from ledger.core.note import Signer, Verifier
from ledger.core.proof import consistency_nodes, consistency_proof, inclusion_nodes, inclusion_proof
from ledger.core.purposes import Registry, purpose_record
from ledger.core.tree import NodeId
from ledger.core.webhooks import DestinationRefused, check_destination, new_secret
from ledger.errors import InvalidRequest, LogCorrupted, NotFound, StorageError, UnprocessableRequest
from ledger.integrity import Integrity, Proven, ProvenLog, SignedTree
from ledger.models import (
    AttemptOut,
    ConsentIn,
    ConsentRecord,
    DeliveryOut,
    PersonalExport,
    Receipt,
    SecretRotated,
    WebhookCreated,
    WebhookIn,
    WebhookOut,
    consent_decoder,
    decode_body,
)
from ledger.projection import Projection
from ledger.settings import Settings
from ledger.storage import Stores, create_pool, migrations, open_stores
from ledger.storage.outbox import SubscriptionRecord
from ledger.storage.tokens import TokenRecord
from ledger.webhooks import Dispatcher

ADMIN_TOKEN_NAME = "LEDGER_ADMIN_TOKEN"
ENTRIES_PAGE = 1000
# A device clock a little ahead is normal; an action dated further in the future is a bug or a lie.
MAX_CLOCK_SKEW = timedelta(minutes=5)
TOKEN_CACHE_SECONDS = 5.0
TOKEN_CACHE_LIMIT = 10_000
# After a rotation the old secret keeps signing for this long, so receivers can switch over.
SECRET_OVERLAP = timedelta(hours=24)
TOMBSTONE_LABEL = "consent-ledger tombstones v1"

NodesFor = Callable[[int, int], list[NodeId]]
BuildProof = Callable[[int, int, Mapping[NodeId, bytes]], list[bytes]]
_canonical = msgspec.json.Encoder(order="sorted")


class KeyInfo(NamedTuple):
    key_name: str
    key_id: str
    vkey: str
    active: bool


class ConsistencyTimeout(StorageError):
    """This replica could not apply what a consistency token covers within the allowed wait."""


def parse_consistency_token(token: str) -> int:
    try:
        return consistency.parse_consistency_token(token)
    except consistency.BadToken as exc:
        raise InvalidRequest(f"consistency={exc}") from None


class Ledger:
    def __init__(
        self,
        settings: Settings,
        store: Stores,
        appender: Appender,
        signer: Signer,
        projection: Projection,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.settings = settings
        self.registry: Registry = settings.registry
        self.store = store
        self.appender = appender
        self.signer = signer
        self.projection = projection
        self.dispatcher = dispatcher
        self.tombstone = tombstone_hasher(settings, signer)
        self.webhook_verifier = Verifier(f"{signer.name}/webhooks", bytes(webhook_key(signer).verify_key))
        self.integrity = Integrity()
        self.log = ProvenLog(store.log, [signer.verifier], self.integrity)
        self._seen = 0
        self._tokens: dict[bytes, tuple[TokenRecord, float]] = {}
        projection.token_listeners.append(self.forget_tokens)

    @classmethod
    async def open(cls, settings: Settings, database_url: str, signer: Signer) -> "Ledger":
        await migrations.migrate(database_url)
        store = open_stores(await create_pool(database_url))
        try:
            await store.log.register_key(signer.verifier)
            if settings.admin_token:
                await store.tokens.ensure_token(ADMIN_TOKEN_NAME, auth.token_hash(settings.admin_token), ["admin"])
            appender = Appender(store.log, signer, settings.log_origin)
            await appender.start()
            projection = Projection(
                store.log,
                store.subjects,
                database_url,
                cache_size=settings.cache_size,
                max_staleness_ms=settings.max_staleness_ms,
                tombstone=tombstone_hasher(settings, signer),
            )
            await projection.start()
            key = webhook_key(signer)
            await store.log.register_key(Verifier(f"{signer.name}/webhooks", bytes(key.verify_key)))
            dispatcher = Dispatcher(store.outbox, key, allow_private=settings.webhook_allow_private)
            projection.log_listeners.append(dispatcher.ring)
            # The projection first: it must hold the batch before any receipt of it goes out.
            appender.on_commit.append(projection.apply_committed)
            appender.on_commit.append(lambda _: dispatcher.ring())
            await dispatcher.start()
        except BaseException:
            await store.pool.close()
            raise
        return cls(settings, store, appender, signer, projection, dispatcher)

    async def close(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        await self.projection.stop()
        await self.appender.stop()
        await self.store.pool.close()

    # -- tokens and freshness ----------------------------------------------------------------

    def consistency_token(self) -> str:
        """Names the largest log this process knows is committed; a read elsewhere can wait for it."""
        return consistency_token(max(self._seen, self.projection.applied, self.appender.tree_size or 0))

    async def ready(self) -> bool:
        try:
            await self.store.pool.fetchval("SELECT 1")
        except Exception:
            return False
        return self.integrity.intact and self.appender.running and self.projection.fresh()

    async def authenticate(self, token: str) -> TokenRecord | None:
        presented = auth.token_hash(token)
        cached = self._tokens.get(presented)
        if cached is not None and time.monotonic() - cached[1] < TOKEN_CACHE_SECONDS:
            return cached[0]
        record = await self.store.tokens.token(presented)
        # The lookup is by hash (which says nothing useful about the token); comparing the stored
        # hash in constant time as well keeps any timing out of the final decision.
        if record is None or not auth.same_hash(record.token_hash, presented):
            self._tokens.pop(presented, None)
            return None
        if len(self._tokens) >= TOKEN_CACHE_LIMIT:
            self._tokens.clear()
        self._tokens[presented] = (record, time.monotonic())
        return record

    def cached_token(self, presented: bytes) -> TokenRecord | None:
        """A token this process validated within TOKEN_CACHE_SECONDS; never asks the database."""
        cached = self._tokens.get(presented)
        if cached is None or time.monotonic() - cached[1] >= TOKEN_CACHE_SECONDS:
            return None
        return cached[0]

    def forget_tokens(self, _: str = "") -> None:
        self._tokens.clear()

    # -- recording ---------------------------------------------------------------------------

    async def record(self, body: bytes, idempotency_key: str | None, token_name: str) -> tuple[Receipt, bool]:
        """Append one consent action; return its receipt and whether it was new (False: a replay)."""
        request = decode_consent(body)
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
        return self.receipt(request.device_id, outcome), True

    def draft(self, request: ConsentIn, now: datetime) -> Draft:
        purpose = self.registry.purposes.get(request.purpose)
        if purpose is None:
            raise UnprocessableRequest(self._unknown_purpose(request.purpose))
        occurred = _time(request.occurred_at, "occurred_at") if request.occurred_at else now
        if occurred > now + MAX_CLOCK_SKEW:
            raise UnprocessableRequest("occurred_at is in the future")
        expires = None
        if request.expires_at is not None:
            if request.action != "grant":
                raise UnprocessableRequest("expires_at applies to a grant only")
            expires = _time(request.expires_at, "expires_at")
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

    def receipt(self, device_id: str, sealed: Sealed) -> Receipt:
        self._seen = max(self._seen, sealed.tree_size)
        return Receipt(
            device_id=device_id,
            index=sealed.entry.index,
            entry=sealed.entry,
            leaf=sealed.leaf.decode(),
            leaf_hash=sealed.leaf_hash.hex(),
            checkpoint=sealed.checkpoint,
            inclusion_proof=[h.hex() for h in sealed.inclusion_proof],
            consistency_token=consistency_token(sealed.tree_size),
        )

    async def replayed_receipt(self, device_id: str, replayed: Replayed) -> Receipt:
        """The first receipt again, rebuilt from the log: same entry, checkpoint and proof."""
        tree = await self.log.at_size(replayed.tree_size)
        proven = await self.log.read([replayed.entry_index], tree)
        return self._proven_receipt(device_id, proven[replayed.entry_index], tree)

    def _proven_receipt(self, device_id: str, proven: Proven, tree: SignedTree) -> Receipt:
        sealed = Sealed(proven.entry, proven.leaf, proven.leaf_hash, proven.proof, tree.note, tree.checkpoint.size)
        return self.receipt(device_id, sealed)

    # -- deciding ----------------------------------------------------------------------------

    def check_pairs(self, pairs: Sequence[tuple[str, str]]) -> None:
        for n, (device_id, purpose) in enumerate(pairs):
            where = f"checks[{n}]: " if len(pairs) > 1 else ""
            check_device(device_id, where)
            if purpose not in self.registry.purposes:
                raise UnprocessableRequest(where + self._unknown_purpose(purpose))

    async def decide(
        self, pairs: Sequence[tuple[str, str]], consistency: str | None = None, at: str | None = None
    ) -> list[Decision]:
        self.check_pairs(pairs)
        if at is not None:
            return await self._decide_at(pairs, format_time(_time(at, "at")))
        if consistency is not None:
            size = parse_consistency_token(consistency)
            if not await self.projection.wait_for(size, self.settings.consistency_wait_ms / 1000):
                raise ConsistencyTimeout(f"this replica has not applied log size {size} yet")
        try:
            bases = await self.projection.lookup(pairs)
        except LogCorrupted as exc:
            raise self.integrity.corrupted(exc, "state") from None
        now = format_time(datetime.now(UTC))
        purposes = self.registry.purposes
        decisions = [decide(p, purposes[p], basis, now) for (_, p), basis in zip(pairs, bases, strict=True)]
        metrics.count_decisions(decisions)
        return decisions

    async def _decide_at(self, pairs: Sequence[tuple[str, str]], at: str) -> list[Decision]:
        """As of `at`, from the log itself: the entries recorded by then decide, each proven
        against the signed tree first. An erased device is `erased` at any time: nothing links
        it to its old entries any more."""
        tree = await self.log.head()
        stones = [self.tombstone(device_id) for device_id, _ in pairs]
        histories = await self.store.subjects.pair_histories(pairs, stones, tree.checkpoint.size)
        proven = await self.log.prove(tree, {i: d for h in histories for i, d in h.entries.items()})
        decisions = []
        for (_, purpose), history in zip(pairs, histories, strict=True):
            spec = self.registry.purposes[purpose]
            if history.erased:
                decisions.append(decide(purpose, spec, ERASED, at))
                continue
            basis = deciding((proven[i].entry for i in history.entries), as_of=at)
            decisions.append(decide(purpose, spec, basis, at))
        metrics.count_decisions(decisions)
        return decisions

    async def erase(self, device_id: str) -> Receipt:
        """Append an erase entry for the device's subject and crypto-shred it (salt, device_id,
        state, and whatever else names the device), keeping only the keyed tombstone."""
        check_device(device_id)
        draft = Draft(
            id=str(uuid.uuid4()),
            device_id=device_id,
            purpose=ALL_PURPOSES,
            action="erase",
            policy_version=1,
            occurred_at=format_time(datetime.now(UTC)),
            actor="operator",
            method="support_request",
            evidence={},
        )
        try:
            sealed = await self.appender.erase(draft, self.tombstone(device_id))
        except UnknownDevice:
            raise NotFound("the ledger holds no consent for this device (never recorded, or already erased)") from None
        return self.receipt(device_id, sealed)

    async def personal_export(self, device_id: str) -> PersonalExport | None:
        """The person's own record: every entry proved against one checkpoint, the salt to
        recompute the pseudonym, and per purpose its record of processing and current standing."""
        check_device(device_id)
        found = await self.store.subjects.subject_salt(device_id)
        if found is None:
            return None
        subject, salt = found
        receipts = await self.history(device_id)
        now = format_time(datetime.now(UTC))
        methods = {r.entry.index: r.entry.method for r in receipts}
        purposes = {}
        for key, purpose in self.registry.purposes.items():
            basis = deciding(r.entry for r in receipts if r.entry.purpose == key)
            d = decide(key, purpose, basis, now)
            purposes[key] = ConsentRecord(
                purpose_record(key, purpose, self.registry.controller),
                d.allowed, d.reason, d.policy_version, d.since, d.expires_at, d.index,
                None if d.index is None else methods[d.index],
            )  # fmt: skip
        return PersonalExport(device_id, subject, salt.hex(), receipts, purposes)

    async def history(self, device_id: str) -> list[Receipt]:
        """The device's receipts, oldest first, each proven against the latest checkpoint."""
        check_device(device_id)
        subject = await self.store.subjects.subject_of(device_id)
        if subject is None:
            return []
        tree = await self.log.head()
        proven = await self.log.prove(tree, await self.store.subjects.history(subject, tree.checkpoint.size))
        return [self._proven_receipt(device_id, p, tree) for _, p in sorted(proven.items())]

    # -- webhooks ----------------------------------------------------------------------------

    async def create_webhook(self, body: WebhookIn) -> WebhookCreated:
        unknown = sorted(set(body.purposes or ()) - set(self.registry.purposes))
        if unknown:
            raise UnprocessableRequest(self._unknown_purpose(unknown[0]))
        await check_webhook_url(body.url, self.settings.webhook_allow_private)
        secret = new_secret()
        record = await self.store.outbox.create_subscription(
            body.url, list(dict.fromkeys(body.events)), body.purposes, body.description, secret
        )
        return WebhookCreated(**msgspec.structs.asdict(_webhook_out(record)), secret=secret)

    async def webhooks(self) -> list[WebhookOut]:
        return [_webhook_out(r) for r in await self.store.outbox.subscriptions()]

    async def webhook(self, webhook_id: uuid.UUID) -> WebhookOut | None:
        record = await self.store.outbox.subscription(webhook_id)
        return None if record is None else _webhook_out(record)

    async def rotate_webhook_secret(self, webhook_id: uuid.UUID) -> SecretRotated | None:
        secret = new_secret()
        if not await self.store.outbox.rotate_secret(webhook_id, secret, SECRET_OVERLAP):
            return None
        record = await self.store.outbox.subscription(webhook_id)
        assert record is not None
        assert record.previous_secret_until is not None
        return SecretRotated(str(webhook_id), secret, format_time(record.previous_secret_until))

    async def deliveries(self, webhook_id: uuid.UUID) -> list[DeliveryOut]:
        return [
            DeliveryOut(
                d.id,
                d.event_type,
                d.idx,
                d.status,
                [
                    AttemptOut(a.attempt, format_time(a.started_at), a.status_code, a.latency_ms, a.error)
                    for a in d.attempts
                ],
                _time_or_none(d.next_attempt_at),
                format_time(d.created_at),
                _time_or_none(d.completed_at),
                d.last_error,
            )
            for d in await self.store.outbox.deliveries(webhook_id)
        ]

    def _unknown_purpose(self, purpose: str) -> str:
        return f"unknown purpose {purpose!r}; known: {', '.join(sorted(self.registry.purposes))}"

    # -- the log -----------------------------------------------------------------------------

    async def tree_size(self) -> int:
        head = await self.store.log.head()
        if head is None:
            raise StorageError("the log has no checkpoint yet")
        self._seen = max(self._seen, head.size)
        return head.size

    async def checkpoint(self) -> str:
        head = await self.store.log.head()
        if head is None:
            raise StorageError("the log has no checkpoint yet")
        self._seen = max(self._seen, head.size)
        return head.note

    async def keys(self) -> list[KeyInfo]:
        active = {self.signer.verifier.id.hex(), self.webhook_verifier.id.hex()}
        return [KeyInfo(k.key_name, k.key_id, k.vkey, k.key_id in active) for k in await self.store.log.keys()]

    async def entries(self, start: int, end: int | None) -> tuple[int, int, AsyncIterator[bytes]]:
        """Entries start <= index < end, the end clamped to the log's size, read page by page."""
        size = await self.tree_size()
        end = size if end is None else min(end, size)
        if start < 0 or start > size:
            raise InvalidRequest(f"start={start} is outside the log (size {size})")
        if end < start:
            raise InvalidRequest(f"end={end} is before start={start}")

        async def pages() -> AsyncIterator[bytes]:
            for page in range(start, end, ENTRIES_PAGE):
                for data in await self.store.log.entries(page, min(page + ENTRIES_PAGE, end)):
                    yield data + b"\n"

        return start, end, pages()

    async def inclusion(self, index: int, tree_size: int) -> list[bytes]:
        return await self._prove(inclusion_nodes, inclusion_proof, index, tree_size, "tree_size")

    async def consistency(self, size1: int, size2: int) -> list[bytes]:
        return await self._prove(consistency_nodes, consistency_proof, size1, size2, "to")

    async def _prove(self, nodes_for: NodesFor, build: BuildProof, a: int, size: int, name: str) -> list[bytes]:
        current = await self.tree_size()
        if size > current:
            raise InvalidRequest(f"{name}={size} is beyond the log's current size {current}")
        try:
            ids = nodes_for(a, size)
        except ProofError as exc:
            raise InvalidRequest(str(exc)) from None
        return build(a, size, await self.store.log.nodes(ids))


def _time_or_none(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _webhook_out(r: SubscriptionRecord) -> WebhookOut:
    return WebhookOut(
        r.id, r.url, r.events, r.purposes, r.description, format_time(r.created_at),
        _time_or_none(r.disabled_at), r.disabled_reason, _time_or_none(r.failing_since),
    )  # fmt: skip


async def check_webhook_url(url: str, allow_private: bool) -> None:
    """Refuse at subscription time what the dispatcher would refuse at send time."""
    parts = urlsplit(url)
    if not parts.hostname or parts.scheme not in ("https", "http"):
        raise UnprocessableRequest("url must be an absolute https URL")
    if parts.username or parts.password:
        raise UnprocessableRequest("url must not carry credentials; sign with the webhook secret instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise UnprocessableRequest(f"url: cannot resolve {parts.hostname}: {exc}") from None
    try:
        check_destination(parts.scheme, [str(i[4][0]) for i in infos], allow_private)
    except DestinationRefused as exc:
        raise UnprocessableRequest(f"url: {exc}") from None


def tombstone_hasher(settings: Settings, signer: Signer) -> Callable[[str], bytes]:
    """HMAC-SHA256 of a device_id under LEDGER_TOMBSTONE_KEY, or a key derived from the log's."""
    key = settings.tombstone_key.encode() if settings.tombstone_key else bytes(signer.derive(TOMBSTONE_LABEL))

    def tombstone(device_id: str) -> bytes:
        return hmac.new(key, device_id.encode(), hashlib.sha256).digest()

    return tombstone


def webhook_key(signer: Signer) -> SigningKey:
    """The Ed25519 key behind webhook `v1a` signatures, derived from the log's key."""
    return signer.derive("consent-ledger webhook signatures v1")


def check_device(device_id: str, where: str = "") -> None:
    if not is_device_id(device_id):
        raise UnprocessableRequest(f"{where}device_id must match [A-Za-z0-9._:-]{{1,128}}")


def decode_consent(body: bytes) -> ConsentIn:
    return decode_body(consent_decoder, body)


def _time(text: str, name: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise UnprocessableRequest(f"{name}: {exc}") from None
