"""The gateway's metrics and ops port.

Every HTTP request is counted by its route template (`/api/v1/children/{child_id}/overview`),
never by its path: paths carry ids of children and parents, and a caller sending random paths
would otherwise make a new series per request; what no route serves counts as `unmatched`.

`/livez`, `/readyz` and `/metrics` are served on `PORTAL_OPS_PORT` only (`contracts.kit.ops`), a
listener of its own: the public application has no such routes. Readiness is the gateway's own
(its NATS connection answers), not the services': a service that is away must not take every
gateway out of its load balancer (`/ready` on the public port still says which service is away).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

from litestar import Litestar
from nats.aio.client import Client as NatsClient

from contracts.kit.logs import get_logger
from contracts.kit.metrics import GatewayMetrics
from contracts.kit.ops import OpsPortUnavailable, OpsServer, nats_check
from contracts.kit.rpc import Responder
from contracts.rpc import StatusReply, StatusRequest, status
from gateway import __version__
from gateway.clients.nats import STATE_KEY as NATS_KEY
from gateway.settings import GatewaySettings

if TYPE_CHECKING:
    pass

STATE_KEY = "metrics"

log = get_logger("gateway.ops")


def ops_lifespan(
    settings: GatewaySettings, metrics: GatewayMetrics
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """A Litestar lifespan serving `/livez`, `/readyz` and `/metrics` on PORTAL_OPS_PORT."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        assert settings.ops_port is not None
        server = OpsServer(
            part="gateway",
            host=settings.ops_host,
            port=settings.ops_port,
            registry=metrics.registry,
            checks={"nats": nats_check(lambda: app.state.get(NATS_KEY))},
        )
        try:
            await server.start()
        except OpsPortUnavailable as exc:
            # uvicorn then stops the gateway ("Application startup failed"): say why first.
            log.error("ops_port_unavailable", detail=str(exc))
            raise
        app.state["ops"] = server
        try:
            yield
        finally:
            await server.stop()

    return lifespan


class StatusResponder:
    """Answers `rpc.gateway.status.v1` from every gateway replica, so `portal status` counts them."""

    def __init__(self) -> None:
        self.instance = f"gateway-{uuid.uuid4().hex[:8]}"
        self.started_at = time.monotonic()
        self.responder = Responder(status("gateway"), "", self.answer, concurrency=4)

    async def answer(self, _: StatusRequest) -> StatusReply:
        """This replica's state: it answers, so its NATS connection works."""
        return StatusReply(
            part="gateway",
            instance=self.instance,
            version=__version__,
            status="ok",
            checks={"nats": "ok"},
            uptime_seconds=round(time.monotonic() - self.started_at, 1),
        )

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen on the connection (renewed by nats-py after every reconnect)."""
        await self.responder.start(nc)
