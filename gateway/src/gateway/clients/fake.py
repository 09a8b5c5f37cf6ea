"""A transport without NATS, for tests: each declared request answered by a function.

`FakeTransport({identity.LOGIN: login, ...})` serves each `Rpc` the way a service would: the
request goes through its JSON form and is parsed as the service would parse it, and a handler's
`RpcFailure` (or any other exception) comes back as the same error reply the real responder
sends. A request nobody answers raises `RpcUnavailable`, as with no service listening.

The gateway asks who holds a session, and which pupils a parent may see, for many at once
(`identity.SESSIONS`, `linking.ACTIVE_PUPILS_MANY`); a fake serving the one-at-a-time request
(`identity.SESSION`, `linking.ACTIVE_PUPILS`) serves the batched one too, asking it once per
token or parent and recording each such request as asked of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from contracts import identity, linking
from contracts.base import Rep, Req, Rpc
from contracts.kit.rpc import INVALID_REQUEST, RawReply, Responder, RpcError, RpcUnavailable
from contracts.rpc import ErrorReply

Handler = Callable[[Any], Awaitable[Any]]

# The batched request a fake serves through each one-at-a-time request's handler.
_BATCHED: dict[Rpc[Any, Any], Rpc[Any, Any]] = {
    identity.SESSION: identity.SESSIONS,
    linking.ACTIVE_PUPILS: linking.ACTIVE_PUPILS_MANY,
}


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
        if rpc is identity.SESSION:
            self._responders[identity.SESSIONS] = Responder(identity.SESSIONS, "fake", self._sessions)
        elif rpc is linking.ACTIVE_PUPILS:
            self._responders[linking.ACTIVE_PUPILS_MANY] = Responder(
                linking.ACTIVE_PUPILS_MANY, "fake", self._active_pupils_many
            )

    def off(self, rpc: Rpc[Any, Any]) -> None:
        """Nobody answers `rpc` any more (a service away)."""
        self._responders.pop(rpc, None)
        if (batched := _BATCHED.get(rpc)) is not None:
            self._responders.pop(batched, None)

    async def _sessions(self, req: identity.SessionsRequest) -> identity.SessionsReply:
        found: list[identity.Principal | None] = []
        for token in req.tokens:
            try:
                found.append(await self.call(identity.SESSION, identity.SessionRequest(token=token)))
            except RpcError as exc:
                if exc.code not in (identity.E_INVALID_SESSION, INVALID_REQUEST):
                    raise
                found.append(None)
        return identity.SessionsReply(sessions=found)

    async def _active_pupils_many(self, req: linking.ParentsRequest) -> linking.ActivePupilsManyReply:
        found = {}
        for parent_id in req.parent_ids:
            reply = await self.call(linking.ACTIVE_PUPILS, linking.ParentRequest(parent_id=parent_id))
            if reply.pupil_ids:
                found[parent_id] = reply.pupil_ids
        return linking.ActivePupilsManyReply(pupil_ids=found)

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
