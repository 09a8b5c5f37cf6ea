"""A transport without NATS, for tests: each declared request answered by a function.

`FakeTransport({identity.LOGIN: login, ...})` serves each `Rpc` the way a service would: the
request goes through its JSON form and is parsed as the service would parse it, and a handler's
`RpcFailure` (or any other exception) comes back as the same error reply the real responder
sends. A request nobody answers raises `RpcUnavailable`, as with no service listening.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from contracts.base import Rep, Req, Rpc
from contracts.kit.rpc import RawReply, Responder, RpcError, RpcUnavailable
from contracts.rpc import ErrorReply

Handler = Callable[[Any], Awaitable[Any]]


class FakeTransport:
    """Answers requests with local functions; records what was asked in `calls`."""

    def __init__(self, handlers: Mapping[Rpc[Any, Any], Handler] | None = None) -> None:
        self._responders: dict[Rpc[Any, Any], Responder[Any, Any]] = {}
        self.calls: list[tuple[Rpc[Any, Any], Any]] = []
        self.connected = True
        for rpc, handler in (handlers or {}).items():
            self.on(rpc, handler)

    def on(self, rpc: Rpc[Req, Rep], handler: Callable[[Req], Awaitable[Rep | RawReply]]) -> None:
        """Answer `rpc` with `handler` from now on."""
        self._responders[rpc] = Responder(rpc, "fake", handler)

    def off(self, rpc: Rpc[Any, Any]) -> None:
        """Nobody answers `rpc` any more (a service away)."""
        self._responders.pop(rpc, None)

    def asked(self, rpc: Rpc[Req, Any]) -> list[Req]:
        """The requests made of `rpc` so far, oldest first."""
        return [request for asked, request in self.calls if asked is rpc]

    async def call_raw(self, rpc: Rpc[Req, Any], request: Req, *, timeout: float | None = None) -> bytes:
        """Answer as the service would, unparsed."""
        responder = self._responders.get(rpc)
        if responder is None or not self.connected:
            raise RpcUnavailable(rpc.subject)
        self.calls.append((rpc, request))
        body, error = await responder.answer(request.model_dump_json().encode())
        if error is not None:
            raise RpcError(rpc.subject, ErrorReply.model_validate_json(body))
        return body

    async def call(self, rpc: Rpc[Req, Rep], request: Req, *, timeout: float | None = None) -> Rep:
        """Answer as the service would, parsed as the declared reply."""
        return rpc.reply.model_validate_json(await self.call_raw(rpc, request, timeout=timeout))
