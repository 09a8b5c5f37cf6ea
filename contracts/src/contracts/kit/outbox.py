"""Transactional outbox: an event is written in the same transaction as the change it records,
and a relay publishes it to JetStream after commit, with `Nats-Msg-Id` set to the event id.

No change without its event, no event without its change: if the process dies after commit,
the row is still there and the next relay publishes it; if it dies after publishing but before
deleting the row, the stream's duplicate window drops the second copy and consumers, which are
idempotent on `event_id`, drop anything older.

When NATS answers that no stream takes a subject (its store was wiped, a new cluster), the relay
has the part's streams and consumers created again and carries on. A row that can never be
published (larger than NATS accepts, or for a subject no stream takes even then) is moved to
`deadletter.<service>.outbox` (listed by `portal dead-letters list`) and logged at error level,
instead of holding back every row behind it.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import nats.errors
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from pydantic import BaseModel
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Event, utcnow
from contracts.kit import tracing
from contracts.kit.db import Database
from contracts.kit.deadletters import (
    DL_PREFIX,
    H_AT,
    H_CONSUMER,
    H_DELIVERIES,
    H_ERROR,
    H_MSG_ID,
    H_REDACTED,
    H_SERVICE,
    H_SUBJECT,
)
from contracts.kit.failing import FailureClock
from contracts.kit.logs import describe_error, get_logger
from contracts.kit.tables import outbox, outbox_lease

log = get_logger("contracts.kit.outbox")

# JetStream's "message size exceeds maximum allowed" (the stream's own limit).
_ERR_MESSAGE_TOO_LARGE = 10054
# What a dead letter of the outbox names as its consumer in `portal dead-letters list`.
OUTBOX_CONSUMER = "outbox"


class Unpublishable(Exception):
    """An outbox row NATS will never take: it is dead-lettered rather than retried."""


class StreamMissing(Exception):
    """No stream takes a row's subject and it could not be made again yet (NATS still
    starting, JetStream unavailable): the row waits and the relay tries again."""


def _max_payload(js: JetStreamContext) -> int:
    """The largest message (headers included) the connected server accepts."""
    return int(js._nc.max_payload)  # noqa: SLF001 - nats-py keeps the context's connection private


def _headers_size(headers: dict[str, str]) -> int:
    # NATS counts the header block in max_payload: "NATS/1.0\r\n", "k: v\r\n" each, "\r\n".
    return 12 + sum(len(k.encode()) + len(str(v).encode()) + 4 for k, v in headers.items())


class UnitOfWork:
    """One database transaction, plus the events it will publish once committed."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.emitted: list[str] = []
        self._rows: list[dict] = []
        self.on_commit: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once this transaction has committed (not if it rolls back)."""
        self.on_commit.append(callback)

    async def emit(
        self,
        subject: str,
        event: Event | BaseModel,
        *,
        aggregate: str = "",
        headers: dict[str, str] | None = None,
        event_id: str | None = None,
    ) -> str:
        """Record `event` for publication on `subject` when this transaction commits.

        `aggregate` names what the event is about (a pupil, a parent); events of one
        aggregate are published in the order they were emitted.
        """
        eid = event_id or getattr(event, "event_id", None) or uuid.uuid4().hex
        if tracing.ENABLED:
            # The trace of the work that wrote the row goes on where the event is applied.
            headers = tracing.inject(dict(headers or {})) or None
        self._rows.append(
            {
                "event_id": eid,
                "subject": subject,
                "aggregate": aggregate,
                "payload": event.model_dump_json().encode(),
                "headers": json.dumps(headers) if headers else None,
                "created_at": utcnow(),
            }
        )
        self.emitted.append(eid)
        return eid

    async def flush(self) -> None:
        """Write the events emitted so far (one statement for all; done before commit)."""
        if self._rows:
            rows, self._rows = self._rows, []
            await self.session.execute(insert(outbox), rows)


class OutboxRelay:
    """Publishes committed outbox rows to JetStream, oldest first, from one replica at a time.

    Replicas of a service share one outbox; a lease row elects the one that relays, so events
    of an aggregate keep their order. The lease is renewed while the holder lives and taken
    over by another replica once it lapses.
    """

    def __init__(
        self,
        db: Database,
        js_provider: Callable[[], JetStreamContext],
        *,
        name: str,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        lease_seconds: float = 10.0,
        publish_timeout: float = 5.0,
        recover: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self._js = js_provider
        self.name = name
        self.holder = f"{name}-{uuid.uuid4().hex[:12]}"
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lease = timedelta(seconds=lease_seconds)
        self.publish_timeout = publish_timeout
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.published_total = 0
        self.dead_lettered_total = 0
        # Re-creates the part's streams and consumers (`ServiceRuntime.recover`).
        self._recover = recover
        self.failing = FailureClock()
        self._subject = ""  # the subject being published, for what health says
        self.metrics: Any = None  # the part's `ServiceMetrics`, set by its runtime

    def wake(self) -> None:
        """Tell the relay that a transaction with events just committed."""
        self._wake.set()

    def start(self) -> None:
        """Run the relay in the background."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.name}")

    async def stop(self, *, flush: float = 0.0) -> None:
        """Stop relaying. With `flush`, first publish what is committed (for at most that many
        seconds: a stopping part leaves no event of the work it finished waiting for a restart).
        Whatever is left is published by the next relay."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            if flush > 0:
                await asyncio.wait({task}, timeout=flush)  # the round in progress ends, then the loop
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - shutting down
                pass
            if flush > 0 and loop.time() < deadline:
                try:
                    await asyncio.wait_for(self._flush(), deadline - loop.time())
                except (TimeoutError, Exception) as exc:  # noqa: BLE001 - the next relay publishes what is left
                    log.info("outbox_flush_incomplete", error=type(exc).__name__)
        await self._release_lease()

    async def _flush(self) -> None:
        while await self.relay_once():
            pass

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                self._subject = ""
                more = await self.relay_once()
                failures = 0
                self.failing.ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the relay must outlive any outage
                failures += 1
                self.failing.failed(self._describe(exc))
                delay = min(5.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                log.warning(
                    "outbox_relay_failed",
                    error=type(exc).__name__,
                    subject=self._subject or None,
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                continue
            if more:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _hold_lease(self) -> bool:
        now = utcnow()
        async with self.db.session() as s:
            row = (await s.execute(select(outbox_lease).where(outbox_lease.c.name == self.name))).first()
            if row is None:
                await s.execute(
                    insert(outbox_lease).values(name=self.name, holder=self.holder, expires_at=now + self.lease)
                )
                return True
            if row.holder != self.holder and row.expires_at > now:
                return False
            await s.execute(
                update(outbox_lease)
                .where(outbox_lease.c.name == self.name)
                .values(holder=self.holder, expires_at=now + self.lease)
            )
            return True

    async def _release_lease(self) -> None:
        try:
            async with self.db.session() as s:
                await s.execute(
                    delete(outbox_lease).where(outbox_lease.c.name == self.name, outbox_lease.c.holder == self.holder)
                )
        except Exception:  # noqa: BLE001, S110 - the lease lapses by itself anyway
            pass

    async def relay_once(self) -> bool:
        """Publish one batch; True when more rows may be waiting."""
        async with self.db.reader() as s:
            pending = (await s.execute(select(outbox.c.id).order_by(outbox.c.id).limit(1))).first()
        if pending is None:
            return False
        if not await self._hold_lease():
            # Another replica relays; look again after the lease could have lapsed.
            await asyncio.sleep(min(1.0, self.lease.total_seconds() / 4))
            return False
        async with self.db.reader() as s:
            rows = (await s.execute(select(outbox).order_by(outbox.c.id).limit(self.batch_size))).all()
        js = self._js()
        done: list[int] = []
        dead = 0
        try:
            for row in rows:
                self._subject = row.subject
                headers = json.loads(row.headers) if row.headers else {}
                headers["Nats-Msg-Id"] = row.event_id
                # Sequential on purpose: a failed publish stops the batch, so nothing of an
                # aggregate is ever published after an earlier event of it that failed.
                try:
                    with tracing.publishing(row.subject, headers, event_id=row.event_id):
                        await self._publish(js, row.subject, row.payload, headers)
                except Unpublishable as exc:
                    await self._dead_letter(js, row, str(exc))
                    dead += 1
                done.append(row.id)
        finally:
            if done:
                async with self.db.session() as s:
                    await s.execute(delete(outbox).where(outbox.c.id.in_(done)))
                self.published_total += len(done) - dead
                self.dead_lettered_total += dead
        return len(rows) == self.batch_size

    async def _publish(self, js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish one row; `Unpublishable` when NATS will never take it."""
        limit = _max_payload(js)
        size = len(payload) + _headers_size(headers)
        if size > limit:
            # Sent anyway, the server would close the connection ("maximum payload violation").
            raise Unpublishable(f"too large: {size} bytes, NATS takes at most {limit}")
        try:
            await js.publish(subject, payload, headers=headers, timeout=self.publish_timeout)
            return
        except nats.errors.MaxPayloadError as exc:
            raise Unpublishable(f"too large: {size} bytes, NATS takes at most {limit}") from exc
        except APIError as exc:
            if exc.err_code == _ERR_MESSAGE_TOO_LARGE:
                raise Unpublishable(f"too large for its stream: {exc.description}") from exc
            raise
        except NoStreamResponseError:
            if self._recover is None:
                raise
        # No stream answered: NATS lost its streams (or never had this one). Have them made
        # again, then try once more.
        try:
            await self._recover(f"no stream for {subject}")
        except Exception as exc:  # reported as what blocks the relay
            raise StreamMissing(f"no stream for {subject} (creating it failed: {describe_error(exc)})") from exc
        try:
            await js.publish(subject, payload, headers=headers, timeout=self.publish_timeout)
            return
        except NoStreamResponseError:
            try:
                await js.find_stream_name_by_subject(subject)
            except NotFoundError as exc:
                # JetStream answered, and no stream takes this subject even after the set-up.
                raise Unpublishable(f"no stream for {subject}") from exc
            raise

    async def _dead_letter(self, js: JetStreamContext, row: Any, error: str) -> None:
        """Move an unpublishable row to `deadletter.<service>.outbox` (its body when it fits)."""
        headers = {
            H_SUBJECT: row.subject,
            H_CONSUMER: OUTBOX_CONSUMER,
            H_SERVICE: self.name,
            H_ERROR: error,
            H_DELIVERIES: "1",
            H_AT: utcnow().isoformat(),
            H_MSG_ID: row.event_id,
            "Nats-Msg-Id": f"dl:{OUTBOX_CONSUMER}:{self.name}:{row.event_id}",
        }
        data = row.payload
        if len(data) + _headers_size(headers) + 64 > _max_payload(js):
            # Only its ids and subject are kept: it cannot be replayed.
            data = b""
            headers[H_REDACTED] = "true"
        await js.publish(
            f"{DL_PREFIX}.{self.name}.{OUTBOX_CONSUMER}", data, headers=headers, timeout=self.publish_timeout
        )
        if self.metrics is not None:
            self.metrics.dead_letters.labels(OUTBOX_CONSUMER).inc()
        log.error(
            "outbox_event_dead_lettered",
            subject=row.subject,
            event_id=row.event_id,
            size=len(row.payload),
            error=error,
        )

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, NoStreamResponseError):
            return f"no stream for {self._subject}"
        if isinstance(exc, StreamMissing):
            return str(exc)
        where = f" publishing {self._subject}" if self._subject else ""
        return f"{describe_error(exc)}{where}"

    async def pending(self) -> int:
        """How many events wait to be published."""
        from sqlalchemy import func

        async with self.db.reader() as s:
            return (await s.execute(select(func.count()).select_from(outbox))).scalar_one()


@asynccontextmanager
async def unit_of_work(db: Database, relay: OutboxRelay | None) -> AsyncIterator[UnitOfWork]:
    """A transaction whose emitted events are relayed as soon as it commits."""
    async with db.session() as session:
        uow = UnitOfWork(session)
        yield uow
        await uow.flush()
    if uow.emitted and relay is not None:
        relay.wake()
    for callback in uow.on_commit:
        callback()
