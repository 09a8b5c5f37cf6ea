"""`/health` (the process runs) and `/ready` (every service answers)."""

from __future__ import annotations

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency

from contracts.rpc import SERVICES
from gateway.clients import Clients
from gateway.errors import ApiError
from gateway.models import Health, Readiness
from gateway.openapi import error_responses
from gateway.settings import GatewaySettings


@get("/health", tags=["operations"], summary="The gateway runs", operation_id="health")
async def health() -> Health:
    """Answers 200 while the process runs; NATS is not consulted."""
    return Health(status="ok")


@get(
    "/ready",
    tags=["operations"],
    summary="Every service answers",
    operation_id="ready",
    responses=error_responses(503),
)
async def ready(state: State, clients: NamedDependency[Clients]) -> Readiness:
    """200 when every service answers its health request over NATS; 503 naming those that do not."""
    settings: GatewaySettings = state.settings
    if not clients.health.connected:
        raise ApiError(
            503,
            "not_ready",
            "The gateway is not connected to NATS.",
            extra={"missing": list(SERVICES), "services": dict.fromkeys(SERVICES, "missing")},
        )
    states = await clients.health.states(settings.ready_timeout)
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


ROUTES = [health, ready]
