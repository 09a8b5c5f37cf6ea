"""Every service's health request (`contracts.rpc.health`), for `/ready`."""

from __future__ import annotations

import asyncio
from typing import Literal

from contracts.rpc import SERVICES, HealthRequest, health
from gateway.clients.transport import Transport

ServiceState = Literal["ok", "degraded", "missing"]


class HealthClient:
    """Asks each service whether it can do its work."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    @property
    def connected(self) -> bool:
        """Whether any request can be sent right now."""
        return self._t.connected

    async def state(self, service: str, timeout: float) -> ServiceState:
        """One service's answer: ok, degraded, or missing when it does not answer."""
        try:
            reply = await self._t.call(health(service), HealthRequest(), timeout=timeout)
        except Exception:  # noqa: BLE001 - any failure to answer means "not ready", never a 500
            return "missing"
        return "ok" if reply.status == "ok" else "degraded"

    async def states(self, timeout: float) -> dict[str, ServiceState]:
        """Every service's state, asked concurrently."""
        answers = await asyncio.gather(*(self.state(name, timeout) for name in SERVICES))
        return dict(zip(SERVICES, answers, strict=True))
