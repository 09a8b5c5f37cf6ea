"""What every response gets: security headers, a request id and one access log line.

Both work on every response, unknown paths and errors included. Litestar's own `middleware`
runs only for requests that matched a route, so the access log wraps the application's ASGI
handler instead (see `wrap_access_log`), and the headers use a `before_send` hook.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType

from contracts.kit.logs import get_logger

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = get_logger("gateway.access")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# A year: browsers that saw it keep to https for that long (the preload list asks as much).
HSTS = "max-age=31536000; includeSubDomains"

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
}

# Personal data and one-time links: no browser or proxy may keep a copy.
NO_STORE_PREFIXES = ("/api/v1", "/dev/mail")

REQUEST_ID_HEADER = "x-request-id"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + ".")


def security_headers(*, https: bool) -> Callable[[Message, Scope], Awaitable[None]]:
    """A `before_send` hook adding the security headers to every answer (a response's own CSP
    is kept), and HSTS to every answer when the portal is served over https."""

    async def add_headers(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        for name, value in SECURITY_HEADERS.items():
            if name not in headers:
                headers[name] = value
        if https:
            headers["strict-transport-security"] = HSTS
        path = scope.get("path", "")
        if any(_under(path, prefix) for prefix in NO_STORE_PREFIXES):
            headers["cache-control"] = "no-store"

    return add_headers


class AccessLog:
    """ASGI wrapper: one log line per HTTP request (method, route, status, duration), never a
    body or a query string; binds a request id to every log line written meanwhile."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:16]
        raw_path = scope.get("path", "")
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableScopeHeaders.from_message(message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                # A matched route is logged by its template: paths carry link codes and ids
                # of people; an unknown path is logged as sent, cut short.
                template = scope.get("path_template")
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=template or raw_path[:200],
                    status=status,
                    duration_ms=round((time.perf_counter() - start) * 1000, 2),
                )


def wrap_access_log(app: Litestar) -> Litestar:
    """Put `AccessLog` around the app's ASGI handler, outside routing and error handling."""
    app.asgi_handler = AccessLog(app.asgi_handler)
    return app
