"""What every client asks through: one declared request (`contracts.base.Rpc`) in, its typed
reply out, or an `RpcError` (`contracts.kit.rpc`) carrying the service's code, fields and
`retry_after`. The gateway's own runs over its NATS connection (`NatsTransport`); tests may
give `create_app` clients over a `FakeTransport` instead.
"""

from __future__ import annotations

from typing import Any, Protocol

from contracts.base import Rep, Req, Rpc


class Transport(Protocol):
    """Asks the services; raises `RpcError` (`RpcUnavailable`, `RpcTimeout` when none answers)."""

    @property
    def connected(self) -> bool:
        """Whether requests can be sent at all right now."""
        ...

    async def call(self, rpc: Rpc[Req, Rep], request: Req, *, timeout: float | None = None) -> Rep:
        """Ask `rpc` and parse the reply as its declared type."""
        ...

    async def call_raw(self, rpc: Rpc[Req, Any], request: Req, *, timeout: float | None = None) -> bytes:
        """Ask `rpc` and return the reply's body unparsed (the hot path passes it through)."""
        ...
