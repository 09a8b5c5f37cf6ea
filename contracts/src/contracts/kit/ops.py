"""The ops port of a part (`PORTAL_OPS_PORT`): `/livez`, `/readyz` and `/metrics`.

A small Starlette application under uvicorn, run as a task in the part's own event loop, on a
port of its own: nothing of it is reachable through the gateway's public port, and a probe or a
scrape waits for nothing the part is doing. It starts before the part connects to NATS, so that
`/livez` answers while the part is still trying to reach NATS or its database.

- `/livez`: 200 while the process runs (the event loop turns).
- `/readyz`: 200 while the part's database (services) and NATS answer, else 503; the JSON body
  names each check and what is wrong with it.
- `/metrics`: the part's registry in Prometheus text format (`contracts.kit.metrics`); a scrape
  first reads the backlog (outbox, consumers) again, at most once a second.

Also here: what a service replica answers `portal status` (`service_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from contracts.base import utcnow
from contracts.kit.logs import describe_error, get_logger
from contracts.kit.tables import outbox
from contracts.rpc import ConsumerStatus, StatusReply

if TYPE_CHECKING:
    from contracts.kit.consumer import EventConsumer
    from contracts.kit.db import Database
    from contracts.kit.runtime import ServiceRuntime

log = get_logger("contracts.kit.ops")

# "ok", or a few words saying what is wrong.
Check = Callable[[], Awaitable[str]]
CHECK_TIMEOUT = 2.0
# A scrape reads the backlog again only when the last reading is older than this.
REFRESH_EVERY = 1.0


class OpsPortUnavailable(RuntimeError):
    """The ops port cannot be listened on (taken, or an address this machine does not have)."""


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the part's own (FastStream's, the gateway's uvicorn)
    decide when the process stops, and stop this server with it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OpsPortUnavailable(f"PORTAL_OPS_HOST {host!r}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OpsPortUnavailable(
            f"cannot listen on {host}:{port} for /livez, /readyz and /metrics ({exc.strerror or exc}): "
            "set PORTAL_OPS_PORT to a free port"
        ) from exc
    return sock


def check_port(host: str, port: int) -> None:
    """Raise `OpsPortUnavailable` now when `host:port` cannot be listened on (a start-up check)."""
    _bind(host, port).close()


async def _run_check(check: Check) -> str:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT)
    except TimeoutError:
        return f"no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"failed: {type(exc).__name__}"


class OpsServer:
    """`/livez`, `/readyz` and `/metrics` on `host:port`, until `stop`."""

    def __init__(
        self,
        *,
        part: str,
        host: str,
        port: int,
        registry: CollectorRegistry,
        checks: Mapping[str, Check],
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.part = part
        self.host = host
        self.port = port
        self.registry = registry
        self.checks = dict(checks)
        self._refresh = refresh
        # Set when the part starts stopping: not ready any more, while it finishes what it holds.
        self.stopping = False
        self._refreshed_at = -1e9
        self._refresh_lock = asyncio.Lock()
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.app = Starlette(
            routes=[
                Route("/livez", self.livez, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ]
        )

    async def livez(self, _: Request) -> Response:
        """200 while the process runs."""
        return PlainTextResponse("ok\n")

    async def readyz(self, _: Request) -> Response:
        """200 when every check says ok, else 503; the body names each check's state."""
        if self.stopping:
            return JSONResponse(
                {"status": "stopping", "part": self.part}, status_code=503, headers={"cache-control": "no-store"}
            )
        names = list(self.checks)
        states = await asyncio.gather(*(_run_check(self.checks[n]) for n in names))
        checks = dict(zip(names, states, strict=True))
        failed = [n for n, s in checks.items() if s != "ok"]
        body: dict[str, Any] = {"status": "not_ready" if failed else "ready", "part": self.part, "checks": checks}
        if failed:
            body["failed"] = failed
        return JSONResponse(body, status_code=503 if failed else 200, headers={"cache-control": "no-store"})

    async def metrics(self, _: Request) -> Response:
        """The registry in Prometheus text format."""
        await self.refresh()
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def refresh(self) -> None:
        """Read the backlog again unless it was read in the last second (scrapes at once share one reading)."""
        if self._refresh is None:
            return
        async with self._refresh_lock:
            now = time.monotonic()
            if now - self._refreshed_at < REFRESH_EVERY:
                return
            try:
                await asyncio.wait_for(self._refresh(), CHECK_TIMEOUT * 2)
            except Exception as exc:  # noqa: BLE001 - the scrape still answers, without what could not be read
                log.info("ops_refresh_failed", error=describe_error(exc))
            self._refreshed_at = time.monotonic()

    async def start(self) -> None:
        """Listen now (`OpsPortUnavailable` when the port cannot be had) and serve in the background."""
        if self._task is not None:
            return
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            access_log=False,
            # None: keep the part's own JSON logging and levels (the gateway's uvicorn shares them).
            log_config=None,
            log_level=None,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"ops-{self.part}")
        log.info("ops_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        """Stop listening; a probe in flight is answered first."""
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
        self._server = self._task = None


# -- what the checks and the backlog read ----------------------------------------------------------


def database_check(db: Database) -> Check:
    """ "ok" when the database answers a trivial query."""

    async def check() -> str:
        await db.ping()
        return "ok"

    return check


def nats_check(connection: Callable[[], Any]) -> Check:
    """ "ok" when the NATS connection is up and the server answers a ping."""

    async def check() -> str:
        try:
            nc = connection()
        except Exception:  # noqa: BLE001 - FastStream's broker raises until it has connected once
            nc = None
        if nc is None or not nc.is_connected:
            return "not connected"
        await nc.flush(timeout=CHECK_TIMEOUT)
        return "ok"

    return check


async def outbox_backlog(db: Database) -> tuple[int, float]:
    """How many events wait in the outbox, and the age in seconds of the oldest (0 when none)."""
    async with db.reader() as s:
        count, oldest = (await s.execute(select(func.count(), func.min(outbox.c.created_at)))).one()
    return int(count), _age(oldest)


def _age(at: datetime | None) -> float:
    if at is None:
        return 0.0
    if at.tzinfo is None:  # SQLite's min() bypasses the column's type: the stored UTC time, naive
        from datetime import UTC

        at = at.replace(tzinfo=UTC)
    return max(0.0, (utcnow() - at).total_seconds())


async def consumer_status(runtime: ServiceRuntime, consumer: EventConsumer) -> ConsumerStatus:
    """One consumer's backlog as JetStream reports it (`pending` None when it does not answer)."""
    try:
        info = await runtime.js.consumer_info(consumer.stream.name, consumer.durable, timeout=CHECK_TIMEOUT)
    except Exception:  # noqa: BLE001 - NATS away, or the consumer not made yet
        return ConsumerStatus(consumer=consumer.durable, stream=consumer.stream.name, pending=None)
    pending = (info.num_pending or 0) + (info.num_ack_pending or 0)
    last = info.ack_floor.last_active if info.ack_floor is not None else None
    return ConsumerStatus(
        consumer=consumer.durable, stream=consumer.stream.name, pending=pending, idle_seconds=_age(last or info.created)
    )


async def refresh_backlog(runtime: ServiceRuntime) -> None:
    """Read a service's outbox and consumers into its backlog gauges."""
    backlog = runtime.metrics.backlog
    try:
        backlog.outbox_pending, backlog.outbox_oldest_seconds = await outbox_backlog(runtime.db)
    except Exception:  # noqa: BLE001 - left out of the scrape rather than shown stale
        backlog.outbox_pending = backlog.outbox_oldest_seconds = None
    states = await asyncio.gather(*(consumer_status(runtime, c) for c in runtime.consumers))
    backlog.consumer_pending = {s.consumer: s.pending for s in states if s.pending is not None}


def service_ops(runtime: ServiceRuntime) -> OpsServer | None:
    """The ops server of a service replica, None without PORTAL_OPS_PORT."""
    settings = runtime.settings
    if settings.ops_port is None:
        return None
    return OpsServer(
        part=runtime.name,
        host=settings.ops_host,
        port=settings.ops_port,
        registry=runtime.metrics.registry,
        checks={"database": database_check(runtime.db), "nats": nats_check(lambda: runtime.broker.connection)},
        refresh=lambda: refresh_backlog(runtime),
    )


async def service_status(runtime: ServiceRuntime) -> StatusReply:
    """What a service replica answers `rpc.<service>.status.v1`."""
    checks = await runtime.health_checks()
    try:
        pending, oldest = await outbox_backlog(runtime.db)
    except Exception:  # noqa: BLE001 - the database check says why
        pending, oldest = None, None
    consumers = await asyncio.gather(*(consumer_status(runtime, c) for c in runtime.consumers))
    return StatusReply(
        part=runtime.name,
        instance=runtime.instance,
        version=runtime.version,
        status="ok" if all(v == "ok" for v in checks.values()) else "degraded",
        checks=checks,
        uptime_seconds=round(time.monotonic() - runtime.started_at, 1),
        outbox_pending=pending,
        outbox_oldest_seconds=None if oldest is None else round(oldest, 1),
        consumers=list(consumers),
    )
