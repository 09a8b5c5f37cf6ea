"""What every service is made of: settings, a database, a NATS broker, an outbox relay,
idempotent consumers, request handlers and a health request, wired by one builder.

A service's `create_app(settings)` builds a `ServiceRuntime`, registers its handlers on it,
and returns `runtime.app` (a FastStream application). Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import nats
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.nats.security import NatsNKey, NatsSecurity
from faststream.security import BaseSecurity
from faststream.specification import AsyncAPI
from nats.js.client import JetStreamContext

from contracts.base import Event, Rep, Req, Rpc
from contracts.kit.asyncapi import add_replies, document_rpc
from contracts.kit.consumer import BatchHandler, EventConsumer, EventHandler, Prepare
from contracts.kit.db import Database
from contracts.kit.logs import get_logger
from contracts.kit.metrics import ServiceMetrics
from contracts.kit.ops import service_ops, service_status
from contracts.kit.outbox import OutboxRelay, UnitOfWork, unit_of_work
from contracts.kit.permissions import NatsPermissionRefused, Needs, permission_refusal, runtime_needs
from contracts.kit.rpc import Handler, Responder
from contracts.kit.settings import ServiceSettings, nats_servers
from contracts.kit.streams import ensure_streams
from contracts.rpc import HealthReply, HealthRequest, StatusReply, StatusRequest
from contracts.rpc import health as rpc_health
from contracts.rpc import status as rpc_status
from contracts.streams import DEADLETTERS, StreamDef

log = get_logger("contracts.kit.runtime")

DEFAULT_LOCAL_NATS = "nats://127.0.0.1:4222"
# Seconds a stopping replica gives requests in flight and the batch being applied, then the
# outbox's last events (docs/operations.md, "Stopping").
STOP_GRACE = 4.0
RELAY_FLUSH = 1.5


# Seconds after a reconnect during which a refused reply is the request's, not a fault (below).
REPLY_LOST_WINDOW = 30.0


def _is_reply(refusal: str) -> bool:
    """Whether NATS refused a publish to a reply subject (`_INBOX.…`; the server writes it lower case)."""
    words = refusal.lower()
    return "for publish to" in words and '"_inbox.' in words


async def _quiet_error_cb(exc: Exception) -> None:
    # nats-py's default prints a traceback per failed reconnect; one line is enough.
    log.warning("nats_connection_error", error=type(exc).__name__)


def broker_security(options: dict[str, Any]) -> BaseSecurity | None:
    """A part's NATS user (its nkey seed) and TLS, from `nats_connect_options`, as FastStream takes them."""
    seed, tls = options.get("nkeys_seed_str"), options.get("tls")
    if seed is not None:
        return NatsNKey.from_seed(seed, ssl_context=tls)
    if tls is not None:
        return NatsSecurity(ssl_context=tls)
    return None


class ServiceRuntime:
    """The wiring of one service replica."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        version: str,
        description: str,
        streams: Iterable[StreamDef],
        nats_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.service_name
        self.version = version
        self.started_at = time.monotonic()
        # Prometheus metrics of this replica, served on PORTAL_OPS_PORT by `self.ops` (None without it).
        self.metrics = ServiceMetrics(self.name, version)
        self.instance = settings.instance_id or f"{self.name}-{uuid.uuid4().hex[:8]}"
        self.streams = tuple(dict.fromkeys([*streams, DEADLETTERS]))
        url = nats_url or settings.nats_url
        if url is None:
            try:
                url = settings.resolve_nats_url()
            except Exception:  # noqa: BLE001 - documents can be generated without NATS
                url = DEFAULT_LOCAL_NATS
        self.nats_url = url
        # Every server of the cluster the URL lists: the connection moves to another when one goes.
        self.nats_servers = nats_servers(url)
        self.db = Database(settings.resolved_database_url(), pool_size=settings.db_pool_size)
        self.on_reconnect: list[Callable[[], None]] = []

        self._reconnected_at = -REPLY_LOST_WINDOW

        async def disconnected() -> None:
            # The new server's refusal of a reply may come before `reconnected` is called:
            # the window of replies lost to a move opens when the connection goes.
            self._reconnected_at = time.monotonic()

        async def reconnected() -> None:
            self._reconnected_at = time.monotonic()
            log.info("nats_reconnected", instance=self.instance)
            for callback in self.on_reconnect:
                callback()

        # What NATS refused this replica (the server's words, naming the subject).
        self.refused: list[str] = []

        async def error_cb(exc: Exception) -> None:
            refusal = permission_refusal(exc)
            if refusal is None:
                await _quiet_error_cb(exc)
                return
            if _is_reply(refusal) and time.monotonic() - self._reconnected_at < REPLY_LOST_WINDOW:
                # A request that came before this replica moved to another server of the
                # cluster: that server never saw it, so its user may not answer it (NATS allows
                # a reply only to a request received). Nothing is wrong; the caller's deadline
                # passes and it asks again.
                log.warning("nats_reply_lost_on_reconnect", instance=self.instance, detail=refusal)
                return
            self.refused.append(refusal)
            log.error("nats_permission_refused", instance=self.instance, detail=refusal)

        options = self._nats_options = settings.nats_connect_options(self.name)
        inbox = {"inbox_prefix": options["inbox_prefix"]} if "inbox_prefix" in options else {}
        self.broker = NatsBroker(
            self.nats_servers,
            name=self.instance,
            security=broker_security(options),
            **inbox,
            error_cb=error_cb,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=5,
            log_level=logging.DEBUG,
            # Through our JSON handler, at WARNING: FastStream's own default prints task
            # supervision chatter to stdout in a format of its own.
            logger=logging.getLogger("portal.broker"),
        )
        self.relay = OutboxRelay(self.db, lambda: self.js, name=self.name, recover=self.recover)
        self.relay.metrics = self.metrics
        self._relay_flush_hooked = False
        # One re-creation of streams and consumers at a time; those who asked while it ran
        # are served by it (see `recover`).
        self._recover_lock = asyncio.Lock()
        self._recovery_started = -1.0
        self.consumers: list[EventConsumer] = []
        # name -> check returning "ok" or what is wrong; reported by the health request.
        self.extra_checks: dict[str, Callable[[], str]] = {}
        self.responders: list[Responder[Any, Any]] = []
        # Never connected: it only carries the consumers' descriptions into the AsyncAPI
        # document (the consumers pull with their own loop, see contracts.kit.consumer).
        self._spec_broker = NatsBroker(self.nats_servers)
        self.app = FastStream(
            self.broker,
            logger=logging.getLogger(f"portal.{self.name}"),
            on_startup=[self._on_startup],
            after_startup=[self._after_startup],
            on_shutdown=[self._on_shutdown],
            after_shutdown=[self._after_shutdown],
            specification=AsyncAPI(
                self.broker,
                self._spec_broker,
                title=f"Parent Portal {self.name}",
                version=version,
                description=description,
            ),
        )
        self._register_health()
        self.ops = service_ops(self)

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context of the broker's connection."""
        return self.broker.connection.jetstream()

    def unit_of_work(self) -> AbstractAsyncContextManager[UnitOfWork]:
        """A transaction whose events are relayed after it commits."""
        return unit_of_work(self.db, self.relay)

    def consume(
        self,
        *,
        stream: StreamDef,
        subject: str,
        durable: str,
        schemas: Mapping[str, type[Event]],
        title: str,
        description: str,
        handler: EventHandler | None = None,
        batch_handler: BatchHandler | None = None,
        max_deliveries: int = 5,
        batch_size: int = 200,
        claims: bool = True,
        prepare: Prepare | None = None,
        writers: int = 1,
    ) -> EventConsumer:
        """Register a durable idempotent consumer (see `contracts.kit.consumer`). `claims=False`
        only for a handler whose writes give the same rows whatever the order or repetition of
        its events: no processed-event record is kept. `prepare`, with `claims=False` and a
        batch handler: the work on a batch that needs no database, done while the batch before
        is written (the handler receives its result). `writers`, with `claims=False` and a batch
        handler that takes its rows' locks in one order: batches written at once."""
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        if prepare is not None and (claims or batch_handler is None):
            # With claims, which events are new is only known inside the transaction.
            raise ValueError("prepare goes with claims=False and a batch_handler")
        if writers < 1 or (writers > 1 and (claims or batch_handler is None)):
            # Claims taken by two transactions at once would wait on each other's rows.
            raise ValueError("writers is at least 1, and more only with claims=False and a batch_handler")
        consumer = EventConsumer(
            runtime=self,
            stream=stream,
            subject=subject,
            durable=durable,
            schemas=schemas,
            handler=handler,
            batch_handler=batch_handler,
            max_deliveries=max_deliveries,
            batch_size=batch_size,
            title=title,
            claims=claims,
            prepare=prepare,
            writers=writers,
        )
        consumer.document(self._spec_broker, description=description)
        self.metrics.consumer_declared(durable)
        self.consumers.append(consumer)
        return consumer

    def publishes(self, subject: str, schema: type, *, title: str, description: str) -> None:
        """Document an event this service emits (through its outbox) in its AsyncAPI."""
        self._spec_broker.publisher(subject, schema=schema, title=title, description=description)

    def publishes_events(self, schemas: Mapping[str, type[Event]]) -> None:
        """Document each `<service>.<entity>.<verb>.v1` event this service emits, titled
        "<entity> <verb>" and described by its schema's docstring."""
        for subject, schema in schemas.items():
            _, entity, verb, _ = subject.split(".")
            title = f"{entity} {verb}".replace("_", " ")
            self.publishes(subject, schema, title=title, description=schema.__doc__ or title)

    def serve(self, rpc: Rpc[Req, Rep], handler: Handler[Req, Rep], *, concurrency: int = 64) -> None:
        """Answer `rpc` with `handler(request) -> reply` in this service's queue group.

        Every request is served by `contracts.kit.rpc.Responder` (one path: errors are answered
        alike everywhere) and documented, reply included, in the service's AsyncAPI document.
        """
        if rpc.service != self.name:
            raise ValueError(f"{self.name} cannot serve {rpc.subject}")
        queue = "" if rpc.every_replica else self.name
        self.responders.append(Responder(rpc, queue, handler, concurrency=concurrency, metrics=self.metrics))
        document_rpc(self._spec_broker, rpc, queue=queue)

    async def health_checks(self) -> dict[str, str]:
        """Each check of this replica: "ok", or what is wrong."""
        checks = {}
        try:
            await self.db.ping()
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = f"failed: {type(exc).__name__}"
        for name, check in self.extra_checks.items():
            checks[name] = check()
        # An outbox relay or consumer failing for more than a few seconds: events stall.
        checks["outbox"] = self.relay.failing.check()
        for consumer in self.consumers:
            state = consumer.failing.check()
            if state != "ok":
                checks[f"consumer {consumer.durable}"] = state
        return checks

    def _register_health(self) -> None:
        async def health(_: HealthRequest) -> HealthReply:
            checks = await self.health_checks()
            status = "ok" if all(v == "ok" for v in checks.values()) else "degraded"
            return HealthReply(service=self.name, status=status, version=self.version, checks=checks)

        async def status(_: StatusRequest) -> StatusReply:
            return await service_status(self)

        self.serve(rpc_health(self.name), health, concurrency=4)
        # Every replica answers: `portal status` counts them.
        self.serve(rpc_status(self.name), status, concurrency=4)

    def specification(self) -> dict[str, Any]:
        """The service's AsyncAPI 3 document: FastStream's, with each request's reply added."""
        doc: dict[str, Any] = json.loads(self.app.schema.to_specification().to_json())
        add_replies(doc, [r.rpc for r in self.responders])
        return doc

    async def ensure_streams(self, *, attempts: int = 20) -> None:
        """Create this part's streams, or bring them to their definitions and the settings."""
        await ensure_streams(
            self.js,
            self.streams,
            replicas=self.settings.stream_replicas,
            max_bytes=self.settings.stream_max_bytes,
            attempts=attempts,
        )

    async def recover(self, reason: str) -> None:
        """Create this part's streams and consumers again: NATS answered that one is missing
        (its store was wiped, a new cluster). Idempotent, as every replica of every part may do
        it at once; raises while NATS cannot do it yet (the caller tries again later)."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        async with self._recover_lock:
            if self._recovery_started >= asked:
                return  # a recovery that began after this was asked for has just finished
            started = loop.time()
            log.warning("bus_recovering", instance=self.instance, reason=reason)
            await self.ensure_streams(attempts=3)
            for consumer in self.consumers:
                await consumer.declare()
            self._recovery_started = started
            log.info("bus_recovered", instance=self.instance, streams=[d.name for d in self.streams])

    def needs(self) -> Needs:
        """What this replica publishes and subscribes to (see `contracts.kit.permissions`)."""
        return runtime_needs(self)

    async def check_permissions(self) -> None:
        """Fail now, naming the subject, when this replica's NATS user lacks something it needs.

        Every subscription is tried, and the JetStream API is asked about each stream and
        consumer (harmless questions); NATS answers a refusal before it answers a flush. What
        cannot be tried without doing it (publishing an event or a request) is refused later,
        in the log as `nats_permission_refused`.
        """
        # A connection of its own, whose error callback is nats-py's own (FastStream's wrapper of
        # the broker's passes errors on later).
        refused: list[str] = []

        async def error_cb(exc: Exception) -> None:
            refusal = permission_refusal(exc)
            if refusal is not None:
                refused.append(refusal)

        nc = await nats.connect(
            self.nats_servers,
            name=f"{self.instance}-check",
            error_cb=error_cb,
            allow_reconnect=False,
            connect_timeout=5,
            **self._nats_options,
        )
        try:
            for subject in self.needs().subscribe:
                await nc.subscribe(subject)
            for stream in self.streams:
                await nc.publish(f"$JS.API.STREAM.INFO.{stream.name}", b"", reply=nc.new_inbox())
            for consumer in self.consumers:
                await nc.publish(
                    f"$JS.API.CONSUMER.INFO.{consumer.stream.name}.{consumer.durable}", b"", reply=nc.new_inbox()
                )
            # Twice: nats-py may read a refusal sent before the first flush's answer only after it.
            await nc.flush(timeout=5)
            await nc.flush(timeout=5)
        finally:
            await nc.close()
        if refused:
            raise NatsPermissionRefused(
                f"NATS refused {self.name}'s user what it needs ({'; '.join(dict.fromkeys(refused))}): "
                f"is PORTAL_NATS_CREDS_DIR's {self.name}.nk this part's seed, from the same `portal nats-config`?"
            )

    async def _on_startup(self) -> None:
        if self.ops is not None:
            await self.ops.start()  # first: /livez answers while NATS is still being reached
        await self.broker.connect()
        await self.check_permissions()
        await self.ensure_streams()

    async def _after_startup(self) -> None:
        for consumer in self.consumers:
            await consumer.start()
        for responder in self.responders:
            await responder.start(self.broker.connection)
        if self.responders:
            # The server knows the subscriptions once this returns: "started" means answering,
            # not "about to", so a caller right behind it finds a responder.
            await self.broker.connection.flush(timeout=10)
        if not self._relay_flush_hooked:
            # The last shutdown hook, after the ones the service added (its sender, ...), whose
            # last events it publishes.
            self.app.on_shutdown(self._stop_relay)
            self._relay_flush_hooked = True
        self.relay.start()
        log.info("service_started", instance=self.instance, version=self.version)

    async def _on_shutdown(self) -> None:
        # SIGTERM: take no more work anywhere at once, then finish what is held and hand back
        # what was pulled and not started; every step is bounded, so a part is gone well
        # inside the 10 seconds an orchestrator waits before it kills.
        log.info("service_stopping", instance=self.instance)
        if self.ops is not None:
            self.ops.stopping = True
        await asyncio.gather(
            *(responder.stop(grace=STOP_GRACE) for responder in self.responders),
            *(consumer.stop(grace=STOP_GRACE) for consumer in self.consumers),
        )

    async def _stop_relay(self) -> None:
        await self.relay.stop(flush=RELAY_FLUSH)

    async def _after_shutdown(self) -> None:
        await self.db.dispose()
        if self.ops is not None:
            await self.ops.stop()
        log.info("service_stopped", instance=self.instance)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ServiceRuntime]:
        """Run in the current event loop (tests, embedding) until the block ends."""
        await self.app.start()
        try:
            yield self
        finally:
            await self.app.stop()
