"""Durable, idempotent JetStream consumers with acknowledgement on purpose.

- Every message is acknowledged explicitly, after its effect is committed.
- Its effect and a processed-event record (consumer, event_id) are written in one
  transaction, so redelivery, a replay of the stream, or the same event published again under
  another message id changes nothing. A consumer whose writes are keyed by what they are about
  and give the same rows whatever the order or repetition of its events (`claims=False`:
  overview's projections) keeps no such record: it would only repeat what its keys ensure.
- A batch is applied in one transaction (thousands of events a second); when it fails, each
  message is retried alone so one poison message cannot hold back the rest. The next batch is
  pulled while one is applied (`Puller`: pull requests of our own, cheaper than nats-py's fetch).
- A failure is retried with exponential backoff and jitter (FastStream's NATS default would
  reject it for good). An infrastructure failure (the database or NATS away) is retried for as
  long as it lasts; any other failure is retried a bounded number of times, after which the
  message goes to `deadletter.<service>.<consumer>` for operators to inspect and replay. A
  message that is not valid JSON for its schema goes there at once.
- When NATS answers that the consumer is not there (its store was wiped, a new cluster), the
  part's streams and consumers are created again (`ServiceRuntime.recover`) and pulling goes on;
  while fetching fails, the part's health request says so (`failing`).
"""

import asyncio
import contextlib
import contextvars
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from faststream.nats import JStream, PullSub
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, ConsumerConfig, DeliverPolicy
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.errors import ServiceUnavailableError
from pydantic import ValidationError
from sqlalchemy import String, bindparam, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.base import Event, utcnow
from contracts.kit import tracing
from contracts.kit.db import UtcDateTime, dialect_name
from contracts.kit.deadletters import (
    DL_PREFIX,
    H_AT,
    H_CONSUMER,
    H_DELIVERIES,
    H_ERROR,
    H_MSG_ID,
    H_REDACTED,
    H_SEQ,
    H_SERVICE,
    H_STREAM,
    H_SUBJECT,
)
from contracts.kit.failing import FailureClock
from contracts.kit.logs import describe_error, get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.streams import StreamDef

log = get_logger("contracts.kit.consumer")

EventHandler = Callable[[UnitOfWork, Event, str], Awaitable[None]]
# Given `prepare`, a batch handler receives what `prepare` made of the batch's events instead.
BatchHandler = Callable[[UnitOfWork, Any], Awaitable[None]]
Prepare = Callable[[list[tuple[str, Event]]], Any]


class Transient(Exception):
    """Raised by a handler for a failure worth retrying for as long as it lasts."""


TRANSIENT = (
    Transient,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
    TimeoutError,
    ConnectionError,
    OSError,
    nats.errors.Error,
)


# PostgreSQL's deadlock_detected and serialization_failure: a transaction chosen to fail so
# that others can go on, which succeeds when run again.
_RACES = frozenset({"40P01", "40001"})


def _lost_a_race(exc: sa_exc.DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _RACES


class ConsumerMissing(nats.errors.Error):
    """Nothing answered a pull request: the consumer (or its stream) is not there."""


class PoisonMessage(Exception):
    """A message that can never be applied (not JSON, or not its schema)."""


def backoff_delay(deliveries: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Exponential backoff with jitter: about 1 s, 2 s, 4 s, … up to `cap`."""
    return min(cap, base * 2 ** max(0, deliveries - 1)) * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


_CLAIM_SQL = {
    # One statement and one parameter whatever the batch size: a JSON list rather than a bind
    # parameter per event (nothing to compile or plan per batch) or an array (encoded element
    # by element by the driver). PostgreSQL answers with the ids that were there already, as a
    # rule none: sending back every id just claimed, thousands a second, cost more than the
    # insert. `ins` is run whether or not the outer query reads all of it.
    "postgresql": (
        "WITH ids AS (SELECT json_array_elements_text(CAST(:ids AS JSON)) AS id),"
        " ins AS (INSERT INTO processed_events (consumer, event_id, processed_at)"
        " SELECT :consumer, id, :at FROM ids ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id)"
        " SELECT id FROM ids EXCEPT SELECT event_id FROM ins"
    ),
    # `WHERE true`: without it SQLite reads ON CONFLICT as part of the SELECT's join.
    "sqlite": (
        "INSERT INTO processed_events (consumer, event_id, processed_at)"
        " SELECT :consumer, value, :at FROM json_each(:ids) WHERE true"
        " ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
    ),
}


async def claim_events(session: AsyncSession, consumer: str, event_ids: list[str]) -> set[str]:
    """Record `event_ids` as processed by `consumer`; the ones not recorded before.

    An insert that skips what is already there, rather than a look-up then an insert: the
    primary key answers per event whatever the table's statistics say (a planner that
    believed the table empty made the look-up scan it), and a replica applying the same
    event at the same time waits on the row and then skips it instead of failing. Called in
    the transaction that applies the events, so a rollback forgets the claims too.
    """
    if not event_ids:
        return set()
    dialect = dialect_name(session)
    stmt = text(_CLAIM_SQL[dialect]).bindparams(
        bindparam("consumer", consumer, type_=String()),
        bindparam("ids", json.dumps(event_ids), type_=String()),
        bindparam("at", utcnow(), type_=UtcDateTime()),
    )
    rows = (await session.execute(stmt)).scalars()
    if dialect == "postgresql":
        # The ids already claimed (by an earlier batch, or another replica meanwhile).
        return set(event_ids).difference(rows)
    return set(rows)


class Puller:
    """Pull requests to a durable JetStream consumer, answered on an inbox of our own.

    nats-py's `fetch` waits for every message with a task, a timer and a uuid of its own: a
    third of the consumer's CPU at thousands of events a second. Here the subscription's
    callback appends to a list and a fetch waits once. Messages do not say which request
    they answer (they carry their own subject); the status that ends a request (404 nothing
    more now, 408 expired, 409 a limit) comes on the request's own reply subject. Whatever a
    request brings after its fetch returned waits in the buffer for the next fetch.
    """

    def __init__(self, nc: Any, stream: str, durable: str) -> None:
        self._nc = nc
        self._next_subject = f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = nc.new_inbox()
        self._sub: Any = None
        self._buffer: list[Msg] = []
        self._requests = 0
        self._received = 0  # data messages since the start
        self._asked = ""  # reply subject of the request a fetch waits on
        self._asked_ended = False  # that request got its final status
        # The one long poll that may still be open: messages it may still bring, until when.
        self._poll_subject = ""
        self._poll_left = 0
        self._poll_until = 0.0
        self._refused = ""  # a status other than "nothing now" or "expired" during this fetch
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def drain(self) -> None:
        """Unsubscribe, and wait until what NATS sent before it heard so is in the buffer: a
        pull request still open then brings nothing more (NATS delivers only while someone
        listens on its reply subject)."""
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await asyncio.wait_for(self._sub.drain(), 2)
            self._sub = None

    def take(self) -> list[Msg]:
        """Every buffered message (received and not fetched), leaving none."""
        out, self._buffer = self._buffer, []
        return out

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self._buffer.append(msg)
            self._received += 1
            # Counted even when an earlier request brought it: at worst the poll is taken for
            # done too early and one more is sent, never a wait on a poll that is over.
            self._poll_left -= 1
        elif status != "100":  # 100: an idle heartbeat
            if status not in ("404", "408"):
                self._refused = status
            if msg.subject == self._asked:
                self._asked_ended = True
            if msg.subject == self._poll_subject:
                self._poll_left = 0
        self._wake.set()

    def _poll_open(self, now: float) -> bool:
        return self._poll_left > 0 and now < self._poll_until

    async def _ask(self, batch: int, *, expires: float | None = None) -> str:
        self._requests += 1
        reply = self._asked = f"{self._inbox}.{self._requests}"
        self._asked_ended = False
        # no_wait: the server sends what it has now, then a 404, rather than holding the
        # request open; `expires` holds it open until messages come (a long poll).
        req = {"batch": batch, "expires": int(expires * 1e9)} if expires else {"batch": batch, "no_wait": True}
        await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=reply)
        return reply

    async def _until(self, done: Callable[[], bool], deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages: what is there now, else the first to come within `timeout`
        (else an empty list)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._refused = ""
        if len(self._buffer) < batch:
            wanted, since = batch - len(self._buffer), self._received
            await self._ask(wanted)
            await self._until(lambda: self._asked_ended or self._received - since >= wanted, deadline)
        if not self._buffer:
            now = loop.time()
            if not self._poll_open(now):
                self._poll_left, self._poll_until = batch, deadline
                self._poll_subject = await self._ask(batch, expires=max(0.05, deadline - now))
            await self._until(lambda: bool(self._buffer) or not self._poll_open(loop.time()), deadline)
        out, self._buffer = self._buffer[:batch], self._buffer[batch:]
        if not out and self._refused:
            # The consumer gone, no responders, a limit: the caller backs off before asking again.
            if self._refused == "503":
                raise ConsumerMissing(f"pull request refused with status 503: nothing answers {self._next_subject}")
            raise nats.errors.Error(f"pull request refused with status {self._refused}")
        return out


class Parsed:
    """A fetched batch, decoded: its events, and the messages that are not (an unknown subject,
    or not valid for its schema)."""

    __slots__ = ("items", "prepared", "raws", "rejects", "unique")

    def __init__(self, raws: Sequence[Msg]) -> None:
        self.raws = raws
        self.items: list[tuple[Msg, Event]] = []
        self.rejects: list[tuple[Msg, ValidationError | None]] = []
        # What the consumer's `prepare` made of the events, when it has one (see `EventConsumer`).
        self.prepared: Any = None
        self.unique: list[tuple[str, Event]] | None = None  # the events once each, when prepared


# The spans of the batch being applied (tracing on): one per writing task, each in its own
# context, so that batches written at once (`EventConsumer.writers`) keep theirs apart.
_SPANS: contextvars.ContextVar[tracing.Consuming | None] = contextvars.ContextVar("consumer_spans", default=None)


class _Traced:
    """A handler run inside its event's span, so that what it emits continues the event's trace."""

    def __init__(self, handler: EventHandler) -> None:
        self.handler = handler

    async def __call__(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        with tracing.using(_SPANS.get(), event.event_id):
            await self.handler(uow, event, subject)


@dataclass
class EventConsumer:
    """One durable consumer: a subject (wildcards allowed) of a stream, applied idempotently."""

    runtime: Any  # contracts.kit.runtime.ServiceRuntime (avoids an import cycle)
    stream: StreamDef
    subject: str
    durable: str
    schemas: Mapping[str, type[Event]]
    handler: EventHandler | None = None
    batch_handler: BatchHandler | None = None
    title: str = ""
    max_deliveries: int = 5
    batch_size: int = 200
    poll_timeout: float = 5.0
    # Messages in flight when a connection drops come back only after this long.
    ack_wait: float = 15.0
    # Set for messages that carry secrets (an email's link or code): what a dead letter keeps
    # of them, since the DEADLETTERS stream keeps its messages for weeks.
    redact: Callable[[bytes], bytes] | None = None
    # False: the handler is idempotent by its own natural keys, in any order (see the module's
    # docstring); applying an event twice is then harmless, and no processed-event record is
    # written. At overview's rate the record was a third of each batch's time in PostgreSQL.
    claims: bool = True
    # With `claims=False`: the work on a batch that needs no database (overview folds its events
    # per row), done by the fetching task while the batch before is written, so that it runs
    # while the process would otherwise wait for the database. `batch_handler` then receives its
    # result rather than the events.
    prepare: Prepare | None = None
    # With `claims=False`: how many batches are written at once, each in its own transaction,
    # so that one batch's round trips to the database overlap the next one's rather than the
    # process waiting on each in turn. The handler then takes its rows' locks in one order
    # (overview sorts each statement's rows by key): two transactions taking the same rows in
    # opposite orders would deadlock, and the database would fail one of them.
    writers: int = 1
    _sub: Any = field(default=None, init=False, repr=False)
    _task: asyncio.Task | None = field(default=None, init=False, repr=False)
    _running: bool = field(default=False, init=False, repr=False)
    # For a stop that hands back what was pulled and not applied (see `stop`).
    _fetcher: asyncio.Task | None = field(default=None, init=False, repr=False)
    _ready: asyncio.Queue[Parsed] | None = field(default=None, init=False, repr=False)
    # The batches being written, by their task: handed back when `stop` cannot wait for them.
    _writing: dict[asyncio.Task[None], Sequence[Msg]] = field(default_factory=dict, init=False, repr=False)
    _acking: set[asyncio.Task[None]] = field(default_factory=set, init=False, repr=False)
    _unstarted: list[Msg] = field(default_factory=list, init=False, repr=False)
    failing: FailureClock = field(default_factory=FailureClock, init=False, repr=False)

    @property
    def dead_letter_subject(self) -> str:
        """Where this consumer's poison messages go."""
        return f"{DL_PREFIX}.{self.runtime.name}.{self.durable}"

    def parse(self, raws: Sequence[Msg]) -> Parsed:
        """Decode and validate a batch; nothing is acknowledged yet (`apply_parsed` does)."""
        parsed = Parsed(raws)
        schemas = self.schemas
        items = parsed.items
        for raw in raws:
            schema = schemas.get(raw.subject)
            if schema is None:
                parsed.rejects.append((raw, None))
                continue
            try:
                items.append((raw, schema.model_validate_json(raw.data)))
            except ValidationError as exc:
                parsed.rejects.append((raw, exc))
        if self.prepare is not None and items:
            parsed.unique = self._unique(items)
            try:
                parsed.prepared = self.prepare(parsed.unique)
            except Exception:  # noqa: BLE001 - prepared again when applied, where a failure is handled
                parsed.prepared = None
        return parsed

    @staticmethod
    def _unique(items: Sequence[tuple[Msg, Event]]) -> list[tuple[str, Event]]:
        # The same event twice in a batch (published again under another message id) once.
        unique: dict[str, tuple[str, Event]] = {}
        for raw, ev in items:
            unique.setdefault(ev.event_id, (raw.subject, ev))
        return list(unique.values())

    async def on_batch(self, raws: Sequence[Msg]) -> None:
        """Apply a batch: parse, apply in one transaction, fall back to one at a time."""
        await self.apply_parsed(self.parse(raws))

    async def apply_parsed(self, parsed: Parsed) -> None:
        """Apply a parsed batch (`parse`)."""
        for raw, exc in parsed.rejects:
            if exc is None:
                # A subject this version does not know (a newer version's event): not ours.
                await raw.ack()
            else:
                await self._dead_letter(raw, exc)
        items = parsed.items
        if not items:
            return
        # Each event's trace goes on here (tracing on, and the event carries one).
        spans = tracing.consuming(self.durable, ((r.subject, r.headers, e.event_id) for r, e in items))
        token = _SPANS.set(spans)
        try:
            await self._apply_batch(items, spans, parsed)
        finally:
            _SPANS.reset(token)
            if spans is not None:
                spans.end()

    async def _apply_batch(
        self, items: list[tuple[Msg, Event]], spans: tracing.Consuming | None, parsed: Parsed | None = None
    ) -> None:
        try:
            try:
                await self._apply(items, parsed)
            except sa_exc.DBAPIError as exc:
                if not _lost_a_race(exc):
                    raise
                # The database failed this transaction to end a deadlock, or to keep a snapshot
                # consistent: nothing in the batch is at fault, so the whole of it goes again.
                log.info("batch_retried_after_conflict", consumer=self.durable, error=describe_error(exc))
                await self._apply(items, parsed)
        except Exception as exc:  # noqa: BLE001 - sorted out message by message below
            if len(items) == 1:
                if spans is not None:
                    spans.failed(items[0][1].event_id, exc)
                await self._failed(items[0][0], exc)
                return
            log.info("batch_failed_retrying_singly", consumer=self.durable, size=len(items), error=describe_error(exc))
            for item in items:
                try:
                    await self._apply([item])
                except Exception as one_exc:  # noqa: BLE001 - any failure is counted, retried, then dead-lettered
                    if spans is not None:
                        spans.failed(item[1].event_id, one_exc)
                    await self._failed(item[0], one_exc)
            return
        while len(self._acking) >= self.writers:
            # One batch's acknowledgements in flight at most, for each batch written at once.
            await asyncio.wait(self._acking, return_when=asyncio.FIRST_COMPLETED)
        # Sent while the next batch is written, rather than before it starts: the database's
        # time and this process's no longer one after the other.
        acking = asyncio.create_task(self._ack([raw for raw, _ in items]))
        self._acking.add(acking)
        acking.add_done_callback(self._acking.discard)

    async def _ack(self, raws: list[Msg]) -> None:
        try:
            for raw in raws:
                await raw.ack()
        except Exception as exc:  # noqa: BLE001 - unacknowledged, they come back and change nothing
            log.warning("consumer_ack_failed", consumer=self.durable, error=describe_error(exc))

    async def _apply(self, items: list[tuple[Msg, Event]], parsed: Parsed | None = None) -> None:
        # The fetching task's work (`parse`) is not done again, but for a message retried alone.
        prepared = parsed.prepared if parsed is not None else None
        fresh = parsed.unique if parsed is not None and parsed.unique is not None else self._unique(items)
        async with self.runtime.unit_of_work() as uow:
            if self.claims:
                claimed = await claim_events(uow.session, self.durable, [ev.event_id for _, ev in fresh])
                if not claimed:
                    return
                fresh = [pair for pair in fresh if pair[1].event_id in claimed]
            if self.prepare is not None:
                assert self.batch_handler is not None  # `prepare` goes with a batch handler
                # Prepared by the fetching task (`parse`), or here for a message retried alone.
                await self.batch_handler(uow, prepared if prepared is not None else self.prepare(fresh))
            elif self.batch_handler is not None:
                await self.batch_handler(uow, fresh)
            else:
                assert self.handler is not None
                for subject, ev in fresh:
                    await self.handler(uow, ev, subject)
        self.runtime.metrics.events_applied.labels(self.durable).inc(len(fresh))
        # Thousands of events a second pass here: build no log events unless someone reads them.
        if logging.getLogger("contracts.kit.consumer").isEnabledFor(logging.DEBUG):
            for subject, ev in fresh:
                log.debug("event_applied", consumer=self.durable, subject=subject, event_id=ev.event_id)

    async def _failed(self, raw: Msg, exc: BaseException) -> None:
        deliveries = raw.metadata.num_delivered or 1
        if isinstance(exc, TRANSIENT):
            delay = backoff_delay(deliveries)
            log.warning(
                "event_retry_transient",
                consumer=self.durable,
                subject=raw.subject,
                deliveries=deliveries,
                retry_in=round(delay, 2),
                error=describe_error(exc),
            )
            await raw.nak(delay=delay)
            return
        if deliveries >= self.max_deliveries:
            await self._dead_letter(raw, exc)
            return
        delay = backoff_delay(deliveries)
        log.warning(
            "event_retry",
            consumer=self.durable,
            subject=raw.subject,
            deliveries=deliveries,
            retry_in=round(delay, 2),
            error=describe_error(exc),
        )
        await raw.nak(delay=delay)

    async def _dead_letter(self, raw: Msg, exc: BaseException) -> None:
        meta = raw.metadata
        headers = {
            H_SUBJECT: raw.subject,
            H_STREAM: meta.stream or self.stream.name,
            H_SEQ: str(meta.sequence.stream),
            H_CONSUMER: self.durable,
            H_SERVICE: self.runtime.name,
            H_ERROR: describe_error(exc),
            H_DELIVERIES: str(meta.num_delivered),
            H_AT: utcnow().isoformat(),
            # The same message dead-lettered twice (a crash before the ack) is stored once.
            "Nats-Msg-Id": f"dl:{meta.stream}:{meta.sequence.stream}:{self.durable}",
        }
        if raw.headers and raw.headers.get("Nats-Msg-Id"):
            headers[H_MSG_ID] = raw.headers["Nats-Msg-Id"]
        data = raw.data
        if self.redact is not None:
            data = self.redact(raw.data)
            headers[H_REDACTED] = "true"
        try:
            await self.runtime.js.publish(self.dead_letter_subject, data, headers=headers, timeout=5)
        except Exception as pub_exc:  # noqa: BLE001 - keep the message; try again later
            log.warning("dead_letter_publish_failed", consumer=self.durable, error=describe_error(pub_exc))
            await raw.nak(delay=backoff_delay(meta.num_delivered or 1))
            return
        self.runtime.metrics.dead_letters.labels(self.durable).inc()
        log.error(
            "event_dead_lettered",
            consumer=self.durable,
            subject=raw.subject,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
            error=headers[H_ERROR],
        )
        await raw.ack()

    async def declare(self) -> None:
        """Create (or update) the durable consumer; idempotent, so replicas may all do it."""
        js = self.runtime.js
        await js.add_consumer(
            self.stream.name,
            ConsumerConfig(
                durable_name=self.durable,
                filter_subject=self.subject,
                ack_policy=JsAckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=-1,
                deliver_policy=DeliverPolicy.ALL,
                # Room for every batch in the pipeline (fetched, waiting, written, being
                # acknowledged): at the limit, NATS refuses pull requests until acks come in.
                max_ack_pending=max(10_000, self.batch_size * (2 * self.writers + 3)),
                description=f"{self.runtime.name}: {self.title}",
            ),
        )

    async def _declare_patiently(self, attempts: int = 20) -> None:
        """`declare`, asked again while a NATS cluster cannot answer yet: the stream just made may
        still be electing its leader, or a server has just gone (seen taking over 5 s on a busy
        3-server cluster). As the streams are (`ensure_streams`): retried for about half a
        minute rather than failing the start-up."""
        for attempt in range(attempts):
            try:
                await self.declare()
                return
            except (TimeoutError, ServiceUnavailableError) as exc:
                if attempt == attempts - 1:
                    raise
                log.info("consumer_declare_retry", consumer=self.durable, error=type(exc).__name__)
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))

    async def start(self) -> None:
        """Create (or update) the durable consumer and start pulling from it."""
        if tracing.ENABLED and self.handler is not None and not isinstance(self.handler, _Traced):
            self.handler = _Traced(self.handler)
        await self._declare_patiently()
        self._sub = Puller(self.runtime.broker.connection, self.stream.name, self.durable)
        await self._sub.start()
        self._running = True
        self._task = asyncio.create_task(self._loop(), name=f"consumer-{self.durable}")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop pulling, let the batch being applied finish (for at most `grace` seconds), and
        hand back every message pulled and not applied: another replica has it at once, rather
        than after `ack_wait` (15 s), which is how long a message nobody acknowledges waits."""
        self._running = False
        if self._fetcher is not None:
            # What it had pulled stays in the puller's buffer (or `_unstarted`).
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._fetcher
            self._fetcher = None
        if self._sub is not None:
            # Once NATS has our unsubscription, an open pull request brings nothing more; what
            # it sent before then is in the buffer when this returns.
            await self._sub.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self._task is not None:
            # With its fetcher gone, the loop ends at once, handing back a batch it had just
            # taken rather than starting it.
            done, _ = await asyncio.wait({self._task}, timeout=grace)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            self._task = None
        writing = dict(self._writing)
        if writing:
            _, late = await asyncio.wait(writing, timeout=grace)
            for task in late:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                # Its transaction rolled back, or committed without every ack sent: either way
                # the batch goes back, and what was committed is recognised when it comes again.
                self._unstarted.extend(writing[task])
        if self._acking:
            await asyncio.wait(self._acking, timeout=max(0.1, deadline - loop.time()))
        await self._hand_back()
        self._sub = None

    async def _hand_back(self) -> None:
        msgs = list(self._unstarted)
        self._unstarted.clear()
        if self._ready is not None:
            while not self._ready.empty():
                msgs.extend(self._ready.get_nowait().raws)
        if self._sub is not None:
            msgs.extend(self._sub.take())
        if not msgs:
            return
        nc = self.runtime.broker.connection
        handed = 0
        for msg in msgs:
            try:
                await msg.nak()
                handed += 1
            except Exception:  # noqa: BLE001, S112 - acknowledged already, or NATS gone: it comes back after ack_wait
                continue
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        log.info("consumer_handed_back", consumer=self.durable, messages=handed)

    async def _loop(self) -> None:
        # The next batch is fetched while this one is applied: fetching is mostly waiting for
        # nats-server, applying mostly waiting for the database, and one after the other left
        # each idle half the time. One batch waits at most (a bounded queue), so a fetched
        # message is acknowledged within a few batches' time, far inside ack_wait. Each batch
        # is written by a task of its own, `writers` of them at once.
        ready = self._ready = asyncio.Queue(maxsize=1)
        fetcher = self._fetcher = asyncio.create_task(self._fetch_loop(ready), name=f"consumer-fetch-{self.durable}")
        try:
            while self._running:
                if fetcher.done():
                    fetcher.result()  # it only ends by raising: let that surface
                if len(self._writing) >= self.writers:
                    # A batch is taken once it can be written: until then it waits in `ready`.
                    await asyncio.wait((*self._writing, fetcher), return_when=asyncio.FIRST_COMPLETED)
                    continue
                get = asyncio.ensure_future(ready.get())
                await asyncio.wait((get, fetcher), return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    continue
                batch = get.result()
                if not self._running:
                    self._unstarted.extend(batch.raws)  # stopping: handed back, not started
                    break
                writing = asyncio.create_task(self._write(batch), name=f"consumer-write-{self.durable}")
                self._writing[writing] = batch.raws
                writing.add_done_callback(self._writing.pop)
        finally:
            fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await fetcher

    async def _write(self, batch: Parsed) -> None:
        try:
            await self.apply_parsed(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - unacked messages come back after ack_wait
            log.warning("consumer_batch_failed", consumer=self.durable, error=describe_error(exc))

    async def _fetch_loop(self, ready: asyncio.Queue[Parsed]) -> None:
        failures = 0
        while self._running:
            try:
                # A long poll: returns as soon as at least one message is there, so latency
                # stays low when idle and batches fill up under load.
                msgs = await self._sub.fetch(self.batch_size, timeout=self.poll_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS away: wait for the reconnect
                failures += 1
                delay = min(5.0, 0.1 * 2**failures)
                missing = isinstance(exc, ConsumerMissing)
                self.failing.failed(
                    f"consumer {self.durable} of {self.stream.name} not found" if missing else describe_error(exc)
                )
                log.info("consumer_fetch_failed", consumer=self.durable, error=type(exc).__name__, retry_in=delay)
                if missing:
                    await self._recover()
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.failing.ok()
            if msgs:
                # Parsed here, while the batch before is applied (mostly waiting for the
                # database), rather than after it by the applying task.
                try:
                    parsed = self.parse(msgs)
                except Exception as exc:  # noqa: BLE001 - unacked messages come back after ack_wait
                    log.warning("consumer_batch_failed", consumer=self.durable, error=describe_error(exc))
                    continue
                try:
                    await ready.put(parsed)
                except asyncio.CancelledError:
                    self._unstarted.extend(msgs)  # stopping: `stop` hands them back
                    raise

    async def _recover(self) -> None:
        try:
            await self.runtime.recover(f"consumer {self.durable} of {self.stream.name} not found")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS still away: the next failed fetch tries again
            log.warning("consumer_recovery_failed", consumer=self.durable, error=describe_error(exc))

    def document(self, spec_broker: Any, *, description: str) -> None:
        """Describe this consumer in the service's AsyncAPI document.

        The subscriber is registered on a broker that is never started: the pull loop above
        is ours (FastStream 0.7.8's pull loop misses nats-py's `asyncio.TimeoutError` and
        waits out its full timeout to fill a batch), the document is FastStream's.
        """
        schema = next(iter(self.schemas.values()))

        async def handle(body: Any) -> None:
            """Documentation only."""

        # Set after the fact: FastStream reads the message's schema from the annotation.
        handle.__annotations__ = {"body": schema, "return": None}
        handle.__doc__ = description
        spec_broker.subscriber(
            self.subject,
            stream=JStream(self.stream.name, declare=False),
            durable=self.durable,
            pull_sub=PullSub(batch_size=self.batch_size, batch=False),
            title=self.title,
            description=description,
        )(handle)
