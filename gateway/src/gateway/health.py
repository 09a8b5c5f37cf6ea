"""`/health` (the process runs) and `/ready` (every service answers over NATS)."""

from __future__ import annotations

import asyncio
from typing import Literal

from litestar import get
from litestar.datastructures import State
from msgspec import Struct
from nats.aio.client import Client as NatsClient

from contracts.kit import rpc
from contracts.rpc import SERVICES, HealthRequest
from contracts.rpc import health as health_rpc
from gateway.clients.nats import get_nats
from gateway.errors import ApiError
from gateway.openapi import error_responses
from gateway.settings import GatewaySettings

ServiceState = Literal["ok", "degraded", "missing"]


class Health(Struct):
    """The gateway process runs."""

    status: Literal["ok"]


class Readiness(Struct):
    """Every service answered its health request."""

    status: Literal["ready"]
    services: dict[str, str]


@get("/health", tags=["operations"], summary="The gateway runs")
async def health() -> Health:
    """Answers 200 while the process runs; NATS is not consulted."""
    return Health(status="ok")


async def _ask(nc: NatsClient, name: str, timeout: float) -> ServiceState:
    try:
        reply = await rpc.call(nc, health_rpc(name), HealthRequest(), timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to answer means "not ready", never a 500
        return "missing"
    return "ok" if reply.status == "ok" else "degraded"


async def service_states(nc: NatsClient, timeout: float) -> dict[str, ServiceState]:
    """Ask every service's health concurrently; each answer is ok, degraded or missing."""
    answers = await asyncio.gather(*(_ask(nc, name, timeout) for name in SERVICES))
    return dict(zip(SERVICES, answers, strict=True))


@get(
    "/ready",
    tags=["operations"],
    summary="Every service answers",
    responses=error_responses(503),
)
async def ready(state: State) -> Readiness:
    """200 when every service answers its health request over NATS; 503 naming those that do not."""
    settings: GatewaySettings = state.settings
    nc = get_nats(state)
    if not nc.is_connected:
        raise ApiError(
            503,
            "not_ready",
            "The gateway is not connected to NATS.",
            extra={"missing": list(SERVICES), "services": {name: "missing" for name in SERVICES}},
        )
    states = await service_states(nc, settings.ready_timeout)
    if all(s == "ok" for s in states.values()):
        return Readiness(status="ready", services=dict(states))
    missing = [name for name, s in states.items() if s != "ok"]
    silent = [name for name in missing if states[name] == "missing"]
    degraded = [name for name in missing if states[name] == "degraded"]
    parts = []
    if silent:
        parts.append("not answering: " + ", ".join(silent))
    if degraded:
        parts.append("degraded: " + ", ".join(degraded))
    raise ApiError(503, "not_ready", "; ".join(parts), extra={"missing": missing, "services": dict(states)})
