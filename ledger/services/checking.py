"""Answering "is this allowed now?": from the projection, after a consistency token, or as of a past time."""

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from ledger import metrics
from ledger.core import consistency
from ledger.core.decision import ERASED, Basis, Decision, decide, deciding
from ledger.core.entry import format_time, is_device_id
from ledger.core.purposes import Registry
from ledger.core.registry import Version, in_force_at
from ledger.errors import ConsistencyTimeout, InvalidRequest, LogCorrupted
from ledger.integrity import Integrity, ProvenLog, SignedTree
from ledger.projection import MISSING, Projection
from ledger.services.stores import SubjectReads
from ledger.services.validation import check_device, check_purpose, request_time

__all__ = ["Checking", "parse_consistency_token"]


class Checking:
    """Decides with the registry the projection has applied; `at=` with the one in force then."""

    def __init__(
        self,
        versions: Callable[[SignedTree], Awaitable[list[Version]]],
        projection: Projection,
        subjects: SubjectReads,
        log: ProvenLog,
        integrity: Integrity,
        tombstone: Callable[[str], bytes],
        consistency_wait_ms: int,
    ) -> None:
        self.versions = versions
        self.projection = projection
        self.subjects = subjects
        self.log = log
        self.integrity = integrity
        self.tombstone = tombstone
        self.consistency_wait = consistency_wait_ms / 1000

    def answer_cached(self, device_id: str, purpose: str) -> Decision | None:
        """The decision now, if this process can give it from memory alone (a valid request, a
        fresh projection, a cache hit); None sends the caller down the full path instead, which
        answers every other case, errors included."""
        spec = self.projection.registry.purposes.get(purpose)
        if spec is None or not is_device_id(device_id) or not self.projection.fresh():
            return None
        basis = self.projection.peek(device_id, purpose)
        if basis is MISSING:
            return None
        assert basis is None or isinstance(basis, Basis)
        decision = decide(purpose, spec, basis, _now)
        metrics.count_decision(purpose, decision.reason)
        metrics.count_lookups(1, 0)
        self.projection.hits += 1
        return decision

    @staticmethod
    def check_devices(pairs: Sequence[tuple[str, str]]) -> None:
        for n, (device_id, _) in enumerate(pairs):
            check_device(device_id, f"checks[{n}]: " if len(pairs) > 1 else "")

    @staticmethod
    def check_purposes(pairs: Sequence[tuple[str, str]], registry: Registry) -> None:
        for n, (_, purpose) in enumerate(pairs):
            check_purpose(registry, purpose, f"checks[{n}]: " if len(pairs) > 1 else "")

    async def decide(
        self, pairs: Sequence[tuple[str, str]], consistency: str | None = None, at: str | None = None
    ) -> list[Decision]:
        # Purposes are checked against the registry the answer is given under: after waiting for
        # a token (which may cover a publish), or the one in force at `at`.
        self.check_devices(pairs)
        if at is not None:
            return await self._decide_at(pairs, format_time(request_time(at, "at")))
        if consistency is not None:
            size = parse_consistency_token(consistency)
            if not await self.projection.wait_for(size, self.consistency_wait):
                raise ConsistencyTimeout(f"this replica has not applied log size {size} yet")
        registry = self.projection.registry
        self.check_purposes(pairs, registry)
        decisions = await self._from_projection(pairs, registry)
        metrics.count_decisions(decisions)
        return decisions

    async def current(self, pairs: Sequence[tuple[str, str]]) -> list[Decision | None]:
        """What `decide` would answer now for each pair, for pairs read from the log (the watch
        stream's): None for a purpose the registry in force no longer has (a check would be 422).
        Fails with Stale as checks do; not counted as answers."""
        registry = self.projection.registry
        known = [pair for pair in pairs if pair[1] in registry.purposes]
        decided = iter(await self._from_projection(known, registry) if known else [])
        return [next(decided) if purpose in registry.purposes else None for _, purpose in pairs]

    async def _from_projection(self, pairs: Sequence[tuple[str, str]], registry: Registry) -> list[Decision]:
        try:
            bases = await self.projection.lookup(pairs)
        except LogCorrupted as exc:
            raise self.integrity.corrupted(exc, "state") from None
        now = format_time(datetime.now(UTC))
        purposes = registry.purposes
        return [decide(p, purposes[p], basis, now) for (_, p), basis in zip(pairs, bases, strict=True)]

    async def registry_at(self, at: str | None) -> Registry:
        """The registry answers are given under: in force now, or at the RFC 3339 time `at`."""
        if at is None:
            return self.projection.registry
        return await self._registry_at(await self.log.head(), format_time(request_time(at, "at")))

    async def _registry_at(self, tree: SignedTree, at: str) -> Registry:
        versions = await self.versions(tree)
        # Before the first registry entry (a log older than registry entries) the first one
        # published is the best evidence there is of what was in force.
        then = in_force_at(versions, at=at) or (versions[0] if versions else None)
        return then.registry if then is not None else self.projection.registry

    async def _decide_at(self, pairs: Sequence[tuple[str, str]], at: str) -> list[Decision]:
        """As of `at`, from the log itself: the entries recorded by then decide, each proven
        against the signed tree first. An erased device is `erased` at any time: nothing links
        it to its old entries any more."""
        tree = await self.log.head()
        registry = await self._registry_at(tree, at)
        self.check_purposes(pairs, registry)
        stones = [self.tombstone(device_id) for device_id, _ in pairs]
        histories = await self.subjects.pair_histories(pairs, stones, tree.checkpoint.size)
        proven = await self.log.verify(tree, {i: d for h in histories for i, d in h.entries.items()})
        decisions = []
        for (_, purpose), history in zip(pairs, histories, strict=True):
            spec = registry.purposes[purpose]
            if history.erased:
                decisions.append(decide(purpose, spec, ERASED, at))
                continue
            basis = deciding((proven[i] for i in history.entries), as_of=at)
            decisions.append(decide(purpose, spec, basis, at))
        metrics.count_decisions(decisions)
        return decisions


def _now() -> str:
    return format_time(datetime.now(UTC))


def parse_consistency_token(token: str) -> int:
    try:
        return consistency.parse_consistency_token(token)
    except consistency.BadToken as exc:
        raise InvalidRequest(f"consistency={exc}") from None
