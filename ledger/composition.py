"""The composition root: every part of a serving process, built once and wired together.

Built in Litestar's lifespan (ledger/app.py) and torn down with it. The wiring order matters in
one place: the appender hands each committed batch to this process's projection before anything
else, so no receipt goes out before the answers of this process reflect it.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Self

from ledger import auth, metrics
from ledger.appender import Appender
from ledger.core.entry import format_time
from ledger.core.note import Signer
from ledger.core.purposes import Registry
from ledger.core.registry import same_registry
from ledger.errors import AppendOnlyViolation, LogCorrupted, MigrationError, StorageError
from ledger.integrity import Integrity, ProvenLog
from ledger.keys import KeyRing, check_signers, key_ring
from ledger.projection import Projection
from ledger.services.access import Access
from ledger.services.auditing import Auditing
from ledger.services.checking import Checking
from ledger.services.erasure import Erasure, tombstone_hasher
from ledger.services.position import Position
from ledger.services.recording import Recording
from ledger.services.registry import RegistryService
from ledger.services.webhook_admin import WebhookAdmin
from ledger.settings import Settings
from ledger.storage import Stores, create_pool, migrations, open_stores
from ledger.watch import Hub
from ledger.webhooks import Dispatcher, webhook_key, webhook_verifier

__all__ = ["ADMIN_TOKEN_NAME", "STARTUP_PATIENCE_SECONDS", "Services", "open_patiently", "report_drift"]

ADMIN_TOKEN_NAME = "LEDGER_ADMIN_TOKEN"
# How long a worker waits at start for a database that went away after `ledger serve` reached it.
STARTUP_PATIENCE_SECONDS = 60.0
log = logging.getLogger("ledger.registry")


class Services:
    """The use cases of one process, and the long-lived parts behind them."""

    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        signer: Signer,
        ring: KeyRing,
        appender: Appender,
        projection: Projection,
        dispatcher: Dispatcher,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.appender = appender
        self.projection = projection
        self.dispatcher = dispatcher
        tombstone: Callable[[str], bytes] = tombstone_hasher(settings.tombstone_key, signer)
        self.integrity = Integrity()
        proven = ProvenLog(stores.log, ring.log_keys, self.integrity)
        self.position = Position(lambda: projection.applied, lambda: appender.tree_size or 0)
        self.access = Access(stores.tokens, hearing=lambda: projection.listening)
        self.registries = RegistryService(appender, projection, stores.log, proven, self.position)
        self.recording = Recording(appender, proven, projection, self.position)
        self.checking = Checking(
            self.registries.versions,
            projection,
            stores.subjects,
            proven,
            self.integrity,
            tombstone,
            settings.consistency_wait_ms,
        )
        self.auditing = Auditing(
            lambda: projection.registry,
            self.registries.versions,
            stores.log,
            stores.subjects,
            proven,
            ring,
            self.position,
        )
        self.erasure = Erasure(appender, tombstone, self.position)
        self.webhooks = WebhookAdmin(
            lambda: projection.registry, stores.outbox, dispatcher, settings.webhook_allow_private
        )
        projection.token_listeners.append(self.access.forget)
        self.watch = Hub(
            projection,
            self.checking.current,
            stores.log,
            retention=settings.watch_retention,
            fresh=lambda: self.integrity.intact and projection.fresh(),
        )
        self.watch.start()

    @property
    def registry(self) -> Registry:
        """The registry in force, as this process has applied it from the log."""
        return self.projection.registry

    @classmethod
    async def open(cls, settings: Settings, database_url: str, signer: Signer) -> Self:
        await migrations.migrate(database_url)
        stores = open_stores(await create_pool(database_url))
        ring = key_ring(signer, settings.trusted_keys, webhook_verifier(signer))
        started: list[Appender | Projection | Dispatcher] = []
        try:
            await stores.log.register_key(signer.verifier)
            # Before anything is signed or served: a log that an untrusted key signed is refused.
            await check_signers(stores.log, ring.log_keys)
            if settings.admin_token:
                await bootstrap_admin_token(stores, settings.admin_token)
            appender = Appender(stores.log, signer, settings.log_origin)
            # LEDGER_PURPOSES (or the built-in registry) seeds a log that has none; afterwards
            # the log's registry is in force, whatever this process was started with.
            await appender.start(seed=settings.registry)
            started.append(appender)
            projection = Projection(
                stores.log,
                stores.subjects,
                database_url,
                cache_size=settings.cache_size,
                max_staleness_ms=settings.max_staleness_ms,
                tombstone=tombstone_hasher(settings.tombstone_key, signer),
                registry=settings.registry,
            )
            await projection.start()
            started.append(projection)
            report_drift(settings, projection.registry, projection.registry_index)
            # The webhook key is derived from the log key, so it rotates with it (README: Rotating
            # the log key); it is recorded beside the log keys but never signs a checkpoint.
            await stores.log.register_key(ring.webhook)
            dispatcher = Dispatcher(stores.outbox, webhook_key(signer), allow_private=settings.webhook_allow_private)
            projection.log_listeners.append(dispatcher.ring)
            # The projection first: it must hold the batch before any receipt of it goes out.
            appender.on_commit.append(projection.apply_committed)
            appender.on_commit.append(lambda _: dispatcher.ring())
            await dispatcher.start()
            started.append(dispatcher)
        except BaseException:
            # A failed start may be tried again (open_patiently): nothing of it may run on.
            for part in reversed(started):
                with contextlib.suppress(Exception):
                    await part.stop()
            await stores.pool.close()
            raise
        return cls(settings, stores, signer, ring, appender, projection, dispatcher)

    async def close(self) -> None:
        await self.watch.close()
        await self.dispatcher.stop()
        await self.projection.stop()
        await self.appender.stop()
        await self.stores.pool.close()

    def consistency_token(self) -> str:
        return self.position.token()

    async def ready(self) -> bool:
        try:
            await self.stores.pool.fetchval("SELECT 1")
        except Exception:
            return False
        return self.integrity.intact and self.appender.running and self.projection.fresh()


async def open_patiently(
    settings: Settings, database_url: str, signer: Signer, patience: float = STARTUP_PATIENCE_SECONDS
) -> Services:
    """Services.open, tried again while the database is unreachable, for up to `patience` seconds.

    `ledger serve` reached the database before it started any worker, so a worker that cannot is
    meeting an outage: the supervised embedded PostgreSQL being started again after a crash, or a
    managed one failing over. Giving up would be worse than waiting: a worker that exits stops the
    whole server (granian), and the workers already serving with it. What the database said
    against the log (corruption, refused writes, a failed migration) is not an outage.
    """
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return await Services.open(settings, database_url, signer)
        except (LogCorrupted, AppendOnlyViolation, MigrationError):
            raise
        except StorageError as exc:
            if time.monotonic() + delay > deadline:
                raise
            logging.getLogger("ledger").warning(
                "the database is unreachable while this worker starts (%s); next try in %.1f s", exc, delay
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def bootstrap_admin_token(stores: Stores, token: str) -> None:
    """LEDGER_ADMIN_TOKEN becomes the active token of that name. A new value revokes the token
    the previous value made, which would otherwise go unnoticed until its holders get 401."""
    replaced = await stores.tokens.ensure_token(ADMIN_TOKEN_NAME, auth.token_hash(token), ["admin"])
    if replaced is not None:
        logging.getLogger("ledger").warning(
            "LEDGER_ADMIN_TOKEN has a new value: the previous bootstrap admin token (created %s) is revoked, "
            "and whoever still uses it gets 401",
            format_time(replaced),
        )


def report_drift(settings: Settings, in_force: Registry, index: int) -> None:
    """A LEDGER_PURPOSES file that differs from the log's registry is not applied (that would
    roll a published change back on every restart from an old ConfigMap): say so once, and
    expose it as a gauge an alert can watch."""
    drifted = settings.purposes is not None and not same_registry(settings.registry, in_force)
    metrics.REGISTRY_DRIFT.set(1 if drifted else 0)
    if drifted:
        log.warning(
            "LEDGER_PURPOSES=%s differs from the registry in force (log entry %d), which stays in force; "
            "publish it with `ledger purposes publish` to change the registry",
            settings.purposes,
            index,
        )
