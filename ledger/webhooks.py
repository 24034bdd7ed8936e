"""The webhook dispatcher: leases due deliveries from the outbox and sends them.

Every server process runs one. A delivery is leased in a committed transaction before its HTTP
call and settled in another after it, so no transaction is open while a receiver takes its time;
if the process dies in between, the lease runs out and another dispatcher sends it again with the
same webhook-id (at-least-once). Destinations are resolved here and checked after resolution,
and the request goes to the checked address itself (with the original Host header and TLS name),
so a DNS answer that changes between the check and the connection cannot redirect it inward.
"""

import asyncio
import contextlib
import logging
import random
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
from nacl.signing import SigningKey

from ledger import metrics
from ledger.core.note import Signer, Verifier
from ledger.core.webhooks import (
    DestinationRefused,
    check_destination,
    next_step,
    parse_retry_after,
    signature_header,
)
from ledger.errors import StorageError
from ledger.storage.outbox import ClaimedDelivery, OutboxStore

WEBHOOK_KEY_SUFFIX = "/webhooks"

log = logging.getLogger("ledger.webhooks")
TIMEOUT = httpx.Timeout(15.0)
USER_AGENT = "consent-ledger-webhooks/1"


class Dispatcher:
    def __init__(
        self,
        outbox: OutboxStore,
        key: SigningKey,
        *,
        allow_private: bool,
        lease: timedelta = timedelta(seconds=30),
        poll_interval: float = 0.5,
        batch: int = 32,
    ) -> None:
        self.outbox = outbox
        self.key = key
        self.allow_private = allow_private
        self.lease = lease
        self.poll_interval = poll_interval
        self.batch = batch
        self._doorbell = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client = httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False, trust_env=False)

    def ring(self, _: str = "") -> None:
        """New entries were committed: there may be deliveries to send."""
        self._doorbell.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ledger-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.aclose()

    async def _run(self) -> None:
        last_stats = 0.0
        while True:
            try:
                claimed = await self.outbox.claim_deliveries(self.batch, self.lease)
                if claimed:
                    await asyncio.gather(*(self.deliver(d) for d in claimed))
                if time.monotonic() - last_stats > 1:
                    pending, age = await self.outbox.outbox_stats()
                    metrics.observe_outbox(pending, age)
                    last_stats = time.monotonic()
                if claimed:
                    continue  # there may be more due right now
            except asyncio.CancelledError:
                raise
            except StorageError as exc:
                log.warning("webhook dispatcher cannot reach the database: %s", exc)
            except Exception:
                # One bad delivery must not stop every subscription's deliveries.
                log.exception("webhook dispatcher error; carrying on")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._doorbell.wait()
            self._doorbell.clear()

    async def deliver(self, delivery: ClaimedDelivery) -> None:
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        retry_after = None
        error: str | None = None
        try:
            status, retry_header = await self._send(delivery)
            retry_after = parse_retry_after(retry_header, datetime.now(UTC))
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except DestinationRefused as exc:
            error = f"destination refused: {exc}"
        except (httpx.HTTPError, OSError, ValueError) as exc:
            # OSError: the name does not resolve (socket.gaierror) or the socket failed.
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        latency_ms = (time.perf_counter() - started) * 1000
        failing_for = None if delivery.failing_since is None else datetime.now(UTC) - delivery.failing_since
        step = next_step(status, retry_after, delivery.attempts, failing_for, random.uniform(-1, 1))  # noqa: S311
        metrics.count_delivery(step.outcome)
        await self.outbox.finish_attempt(
            delivery, started_at, status, latency_ms, error, step.outcome, step.next_attempt_in, step.reason
        )
        if step.outcome == "disabled":
            log.warning("webhook subscription %s disabled: %s", delivery.subscription_id, step.reason)

    async def _send(self, delivery: ClaimedDelivery) -> tuple[int, str | None]:
        """POST the delivery; return the status and Retry-After. The body is never read: only the
        status matters, and a receiver must not be able to make us hold a large answer."""
        url = httpx.URL(delivery.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        check_destination(url.scheme, addresses, self.allow_private)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "host": url.netloc.decode("ascii"),
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(delivery.id, timestamp, delivery.payload, delivery.secrets, self.key),
        }
        pinned = url.copy_with(host=addresses[0])
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        async with self._client.stream(
            "POST", pinned, content=delivery.payload, headers=headers, extensions=extensions
        ) as response:
            return response.status_code, response.headers.get("retry-after")


def webhook_key(signer: Signer) -> SigningKey:
    """The Ed25519 key behind webhook `v1a` signatures, derived from the log's key (so a webhook
    signature can never pass for a checkpoint signature)."""
    return signer.derive("consent-ledger webhook signatures v1")


def webhook_verifier(signer: Signer) -> Verifier:
    """The webhook key as /v1/keys publishes it: named after the log key, with `/webhooks`."""
    return Verifier(signer.name + WEBHOOK_KEY_SUFFIX, bytes(webhook_key(signer).verify_key))
