"""A gateway replica served by uvicorn on a real socket, for tests that speak HTTP to it.

uvicorn runs in a thread with its own event loop, so the services the test runs in its own loop
can answer the gateway meanwhile. The client's cookie jar keeps nothing: each request says which
credential it carries (login's session cookie would otherwise sign in every later request).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
import uvicorn
from helpers import eventually
from litestar import Litestar
from litestar.types import ControllerRouterHandler

from gateway.app import create_app
from gateway.caches.sessions import SessionCache
from gateway.settings import GatewaySettings


class Gateway:
    """One gateway replica: its app (for its state) and an HTTP client for it."""

    def __init__(self, app: Litestar, http: httpx.AsyncClient) -> None:
        self.app = app
        self.http = http

    @property
    def cache(self) -> SessionCache:
        return self.app.state["auth"].cache

    @property
    def nats_connected(self) -> bool:
        return self.app.state["nats"].is_connected


@asynccontextmanager
async def running_gateway(
    settings: GatewaySettings,
    *,
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
    wait_until_live: bool = True,
    timeout: float = 10,
) -> AsyncIterator[Gateway]:
    """Serve a gateway until the block ends.

    With `wait_until_live` (the default) the block starts once the gateway is connected to NATS
    and subscribed to session revocations; without it, as soon as uvicorn answers (for gateways
    with no NATS to reach, or tests that watch the connection themselves). `timeout` is the
    client's, per request.
    """
    app = create_app(settings, extra_route_handlers=extra_route_handlers)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", access_log=False, log_config=None, loop="asyncio", proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        await eventually(lambda: server.started, timeout=10, message="uvicorn started")
        jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout, cookies=jar) as http:
            gw = Gateway(app, http)
            if wait_until_live:
                await eventually(lambda: gw.cache.live, timeout=10, message="gateway subscribed to revocations")
            yield gw
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
        sock.close()


def bearer(token: str) -> dict[str, str]:
    """The header that carries a session token."""
    return {"Authorization": f"Bearer {token}"}
