"""The gateway's one NATS connection, opened and closed with the application, and the
transport the clients ask the services through over it.

The connection is made in the background: `/health` must answer while NATS is still starting
or away, and `/ready` says so meanwhile. nats-py retries the first connection itself when
`max_reconnect_attempts=-1`, so all that is left to do here is not to wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import nats
import nats.errors
from litestar import Litestar
from litestar.datastructures import State
from nats.aio.client import Client as NatsClient

from contracts.base import Rep, Req, Rpc
from contracts.kit import rpc as rpc_kit
from contracts.kit.logs import get_logger
from contracts.kit.permissions import NatsPermissionRefused, permission_refusal
from contracts.kit.rpc import RpcUnavailable
from contracts.kit.settings import NatsNotFound, NatsUrlInvalid
from gateway.settings import GatewaySettings

log = get_logger("gateway.nats")

STATE_KEY = "nats"


class NatsTransport:
    """Requests over the application's NATS client, with `PORTAL_RPC_TIMEOUT` as the deadline
    unless a call names its own."""

    def __init__(self, settings: GatewaySettings, nc: NatsClient | None = None) -> None:
        self.timeout = settings.rpc_timeout
        # Set by `nats_lifespan` when the application starts; until then nothing answers.
        self.nc = nc

    @property
    def connected(self) -> bool:
        """Whether the connection is up."""
        return self.nc is not None and self.nc.is_connected

    def _client(self, rpc: Rpc[Any, Any]) -> NatsClient:
        if self.nc is None:
            raise RpcUnavailable(rpc.subject)
        return self.nc

    async def call(self, rpc: Rpc[Req, Rep], request: Req, *, timeout: float | None = None) -> Rep:
        """Ask `rpc`; its reply, parsed."""
        return await rpc_kit.call(self._client(rpc), rpc, request, timeout=timeout or self.timeout)

    async def call_raw(self, rpc: Rpc[Req, Any], request: Req, *, timeout: float | None = None) -> bytes:
        """Ask `rpc`; its reply's body as sent."""
        return await rpc_kit.call_raw(self._client(rpc), rpc, request, timeout=timeout or self.timeout)


ConnectHook = Callable[[NatsClient], Awaitable[None]]
ReconnectHook = Callable[[], Awaitable[None]]


async def _connect(
    nc: NatsClient,
    settings: GatewaySettings,
    on_connect: Sequence[ConnectHook] = (),
    on_reconnect: Sequence[ReconnectHook] = (),
) -> None:
    while True:
        try:
            servers = settings.resolve_nats_servers()
            break
        except NatsUrlInvalid:
            raise  # waiting would not mend it (`serve` refuses it before this)
        except NatsNotFound as exc:
            # `portal up` may not have written DATA_DIR/nats.url yet.
            log.warning("nats_not_found", detail=str(exc))
            await asyncio.sleep(1)

    async def forget_everything() -> None:
        for hook in on_reconnect:
            try:
                await hook()
            except Exception as exc:  # noqa: BLE001 - one hook's failure must not stop the others
                log.error("nats_reconnect_hook_failed", error=type(exc).__name__, detail=str(exc)[:200])

    async def reconnected() -> None:
        log.info("nats_reconnected")
        await forget_everything()

    refused: list[str] = []

    async def error_cb(exc: Exception) -> None:
        refusal = permission_refusal(exc)
        if refusal is not None:
            # The gateway's NATS user lacks something it needs (it names the subject).
            refused.append(refusal)
            log.error("nats_permission_refused", detail=refusal)
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            # nats-py dropped messages of a subscription that fell behind: if one was a
            # revocation or a link change, the caches cannot tell, so they start afresh as
            # after a reconnect.
            log.error("nats_slow_consumer", subject=exc.subject)
            await forget_everything()
            return
        # nats-py's default prints a traceback per failed reconnect; one line is enough.
        log.warning("nats_connection_error", error=type(exc).__name__, detail=str(exc)[:200])

    await nc.connect(
        servers,
        name="gateway",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        error_cb=error_cb,
        reconnected_cb=reconnected,
        **settings.nats_connect_options("gateway"),
    )
    log.info("nats_connected")
    # Subscriptions made here are renewed by nats-py itself after every reconnect.
    for hook in on_connect:
        await hook(nc)
    # A refused subscription is answered before the flush: say so at start-up, not at first use.
    # Twice: nats-py may read a refusal sent before the first flush's answer only after it.
    await nc.flush(timeout=5)
    await nc.flush(timeout=5)
    if refused:
        # Not ready, rather than ready with caches that hear nothing: /ready says NATS is away.
        await nc.close()
        raise NatsPermissionRefused(f"NATS refused the gateway's user what it needs: {'; '.join(refused)}")


def _report_failure(task: asyncio.Task[None]) -> None:
    # Only a bad URL or option ends the connecting early; say so at once, not at shutdown.
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("nats_connect_failed", error=type(exc).__name__, detail=str(exc)[:200])


def nats_lifespan(
    settings: GatewaySettings,
    transport: NatsTransport,
    *,
    on_connect: Sequence[ConnectHook] = (),
    on_reconnect: Sequence[ReconnectHook] = (),
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """A Litestar lifespan that keeps one NATS client for `transport` (and in `app.state.nats`);
    `on_connect` hooks run once connected (to subscribe), `on_reconnect` hooks after every
    reconnect."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        nc = nats.NATS()
        transport.nc = nc
        app.state[STATE_KEY] = nc
        task = asyncio.create_task(_connect(nc, settings, on_connect, on_reconnect), name="gateway-nats-connect")
        task.add_done_callback(_report_failure)
        try:
            yield
        finally:
            if not task.done():
                task.cancel()
            # wait() neither re-raises the task's error nor swallows our own cancellation.
            await asyncio.wait([task])
            with contextlib.suppress(Exception):
                await nc.close()

    return lifespan


def get_nats(state: State) -> NatsClient:
    """The application's NATS client (may still be connecting: check `is_connected`)."""
    return state[STATE_KEY]
