"""Who is calling: the session token of a request, resolved to identity's `Principal`.

A token comes as `Authorization: Bearer <token>` or in the session cookie. Identity answers
`rpc.identity.session.v1` for it; the answer is kept for some minutes per process, keyed by
a hash of the token, and dropped as soon as `identity.session.revoked.v1` names the session (or
its account), so that logging out or changing a password takes effect on every replica at once,
or when `identity.account.changed.v1` says what the account stands for changed (a member of
staff's school or role).

Routes get the caller by declaring `principal: NamedDependency[Principal]` (401 when there is
none) or `maybe_principal: NamedDependency[Principal | None]`; `guards=[require_role("school_admin")]` limits a route
to some roles. A cookie-authenticated unsafe request must carry the CSRF token (`X-CSRF-Token`
header, or a `csrf_token` form field) that login and `GET /me` return.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders, State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.types import Message as AsgiMessage
from litestar.types import Scope
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts import identity
from contracts.identity import Principal
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError
from gateway.errors import ApiError
from gateway.rpc import ask
from gateway.settings import GatewaySettings

log = get_logger("gateway.auth")

STATE_KEY = "auth"
COOKIE_NAME = "portal_session"
SECURE_COOKIE_NAME = "__Host-portal_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TOKEN_LENGTH = 256  # identity's SessionRequest refuses longer ones

# Per-request memo in the scope's state, shared by guards, dependencies and `before_send`.
_PRINCIPAL = "portal_principal"
_COOKIE_REFRESH = "portal_cookie_refresh"


def _request_state(connection: ASGIConnection) -> dict[str, Any]:
    return connection.scope.setdefault("state", {})  # type: ignore[typeddict-item]

# OpenAPI security requirements for routes that need a caller.
SECURITY = [{"bearer": []}, {"session_cookie": []}]


def cookie_name(settings: GatewaySettings) -> str:
    """The session cookie's name: `__Host-` prefixed when served over https."""
    return SECURE_COOKIE_NAME if settings.secure_cookies else COOKIE_NAME


def session_cookie(settings: GatewaySettings, token: str, max_age: int) -> Cookie:
    """The session cookie carrying `token` (an empty token with max_age 0 clears it)."""
    # Path=/ and no Domain are what `__Host-` requires; browsers refuse it otherwise, even
    # when the cookie is being cleared.
    return Cookie(
        key=cookie_name(settings),
        value=token,
        max_age=max_age,
        path="/",
        secure=settings.secure_cookies,
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(settings: GatewaySettings) -> Cookie:
    """A cookie that makes the browser forget the session cookie."""
    return session_cookie(settings, "", 0)


def token_key(token: str) -> str:
    """The cache key of a token: a hash, so no raw token sits in memory longer than a request."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(token: str) -> str:
    """The CSRF token of a session."""
    # Derived from the secret token: nothing to store, and a page of another site, which
    # cannot read the cookie, cannot compute it.
    return hashlib.sha256(b"csrf:" + token.encode()).hexdigest()


# -- the cache --------------------------------------------------------------------------------


# A cached principal is kept as a tuple of its fields, with strings, numbers and None only:
# the garbage collector stops tracking such tuples, so a cache of 100,000 sessions does not
# lengthen every full collection (each one a pause of every request in flight).
_FIELDS = tuple(Principal.model_fields)
_ACCOUNT = _FIELDS.index("account_id")
_SESSION = _FIELDS.index("session_id")


class SessionCache:
    """Validated sessions by token hash, for a few minutes at most."""

    # `generation` changes with every revocation: an answer from identity asked for before a
    # revocation arrived is not cached, since it may predate it.

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.generation = 0
        # False until the revocation subscription exists: without it nothing may be cached.
        self.live = False
        self._entries: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._by_session: dict[str, str] = {}
        self._by_account: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Principal | None:
        """The cached principal of a token hash, if still fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._remove(key)
            return None
        return Principal.model_construct(**dict(zip(_FIELDS, entry[1], strict=True)))

    def put(self, key: str, principal: Principal, generation: int) -> bool:
        """Cache an answer asked for at `generation`; False when it may be stale or is not kept."""
        ttl = min(self.ttl, float(principal.expires_in))
        if not self.live or generation != self.generation or ttl <= 0 or self.max_entries <= 0:
            return False
        self._remove(key)
        while len(self._entries) >= self.max_entries:
            self._remove(next(iter(self._entries)))  # the oldest: dicts keep insertion order
        # Up to a fifth shorter at random: sessions cached together (a morning's first visits)
        # do not all go back to identity in the same second.
        ttl *= 1 - 0.2 * random.random()
        self._entries[key] = (time.monotonic() + ttl, tuple(getattr(principal, f) for f in _FIELDS))
        self._by_session[principal.session_id] = key
        self._by_account[principal.account_id] = (*self._by_account.get(principal.account_id, ()), key)
        return True

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        session_id, account_id = entry[1][_SESSION], entry[1][_ACCOUNT]
        if self._by_session.get(session_id) == key:
            del self._by_session[session_id]
        keys = tuple(k for k in self._by_account.get(account_id, ()) if k != key)
        if keys:
            self._by_account[account_id] = keys
        else:
            self._by_account.pop(account_id, None)

    def drop_token(self, key: str) -> None:
        """Forget one token (this replica's own logout)."""
        self.generation += 1
        self._remove(key)

    def drop_sessions(self, session_ids: list[str]) -> None:
        """Forget the given sessions."""
        self.generation += 1
        for session_id in session_ids:
            key = self._by_session.get(session_id)
            if key is not None:
                self._remove(key)

    def drop_account(self, account_id: str) -> None:
        """Forget every session of an account."""
        self.generation += 1
        for key in list(self._by_account.get(account_id, ())):
            self._remove(key)

    def clear(self) -> None:
        """Forget everything (after a reconnect: revocations may have been missed)."""
        self.generation += 1
        self._entries.clear()
        self._by_session.clear()
        self._by_account.clear()


# -- revocations ----------------------------------------------------------------------------


class SessionAuth:
    """The per-process session cache, fed by identity and emptied by its revocation events."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.cache = SessionCache(settings.session_cache_seconds, settings.session_cache_entries)
        self._session_waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._account_waiters: dict[str, set[asyncio.Future[None]]] = {}
        # Accounts whose sessions all ended lately: their event may arrive before the reply.
        self._recent_accounts: dict[str, float] = {}

    # Hooks of gateway.clients.nats.nats_lifespan.

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen to revocation events (the `on_connect` hook)."""
        # A core subscription, not a durable consumer: every replica must hear every event,
        # and core subscribers receive what JetStream stores as well.
        try:
            await nc.subscribe(identity.SESSION_REVOKED, cb=self._on_revoked)
            await nc.subscribe(identity.ACCOUNT_CHANGED, cb=self._on_account_changed)
        except Exception as exc:  # noqa: BLE001 - the gateway still works, asking identity each time
            log.error("session_revocations_not_subscribed", error=type(exc).__name__)
            return
        self.cache.clear()
        self.cache.live = True
        log.info("session_revocations_subscribed")

    async def on_reconnect(self) -> None:
        """Empty the cache (the `on_reconnect` hook)."""
        # Revocations sent while we were away were missed: trust nothing cached before.
        self.cache.clear()
        log.info("session_cache_cleared", reason="nats_reconnected")

    async def _on_revoked(self, msg: Msg) -> None:
        try:
            event = identity.SessionRevoked.model_validate_json(msg.data)
        except ValidationError:
            # Unreadable: the safe reading is "anything may have been revoked".
            self.cache.clear()
            log.warning("session_revoked_unreadable")
            return
        if event.all_sessions:
            self.cache.drop_account(event.account_id)
        if event.session_ids:
            self.cache.drop_sessions(event.session_ids)
        if not event.all_sessions and not event.session_ids:
            self.cache.drop_account(event.account_id)
        self._wake(event)

    async def _on_account_changed(self, msg: Msg) -> None:
        try:
            event = identity.AccountChanged.model_validate_json(msg.data)
        except ValidationError:
            self.cache.clear()
            log.warning("account_changed_unreadable")
            return
        self.cache.drop_account(event.account_id)

    def _wake(self, event: identity.SessionRevoked) -> None:
        for session_id in event.session_ids:
            for fut in self._session_waiters.pop(session_id, ()):
                if not fut.done():
                    fut.set_result(None)
        if event.all_sessions:
            now = time.monotonic()
            self._recent_accounts[event.account_id] = now
            for account_id, seen in list(self._recent_accounts.items()):
                if now - seen > 30:
                    del self._recent_accounts[account_id]
            for fut in self._account_waiters.pop(event.account_id, ()):
                if not fut.done():
                    fut.set_result(None)

    async def until_revoked(self, action: Coroutine[Any, Any, Any], *, session_id: str) -> Any:
        """Run `action` (an rpc ending session `session_id`), then wait briefly for its event."""
        # Identity replies before its outbox relays the event; answering only once the event
        # is back means every replica has been sent it too, so the caller's next request,
        # wherever it lands, finds the session gone. Registered before the action: the event
        # may overtake the rpc's reply.
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._session_waiters.setdefault(session_id, set()).add(fut)
        try:
            result = await action
            await self._wait(fut)
            return result
        finally:
            waiters = self._session_waiters.get(session_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._session_waiters[session_id]

    async def until_account_revoked(self, action: Coroutine[Any, Any, Any]) -> Any:
        """Run `action` (an rpc ending every session of the account its reply names), then wait
        briefly for that account's revocation event."""
        result = await action
        account_id = result.account_id
        if account_id in self._recent_accounts:
            return result  # the event overtook the reply
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._account_waiters.setdefault(account_id, set()).add(fut)
        try:
            await self._wait(fut)
            return result
        finally:
            waiters = self._account_waiters.get(account_id)
            if waiters is not None:
                waiters.discard(fut)
                if not waiters:
                    del self._account_waiters[account_id]

    async def _wait(self, fut: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.settings.revocation_wait_seconds)
        except TimeoutError:
            log.warning("session_revocation_not_seen", waited_s=self.settings.revocation_wait_seconds)
        finally:
            if not fut.done():
                fut.cancel()

    async def resolve(self, state: State, token: str) -> tuple[Principal | None, bool]:
        """The principal of `token` or None, and whether identity was asked for it."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None, False
        key = token_key(token)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, False
        generation = self.cache.generation
        try:
            principal = await ask(state, identity.SESSION, identity.SessionRequest(token=token))
        except RpcError as exc:
            if exc.code in (identity.E_INVALID_SESSION, "invalid_request"):
                return None, True
            raise
        self.cache.put(key, principal, generation)
        return principal, True


def get_auth(state: State) -> SessionAuth:
    """The application's `SessionAuth`."""
    return state[STATE_KEY]


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The session token a request carries, and where it came from."""

    token: str
    source: Literal["bearer", "cookie"]


def credentials(connection: ASGIConnection) -> Credentials | None:
    """The request's token, from the Authorization header, else the session cookie."""
    # The header wins: an API client may run in a browser that also holds a cookie.
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        # A malformed header is a wrong credential, not an anonymous caller.
        return Credentials(token.strip() if scheme.lower() == "bearer" else "", "bearer")
    settings: GatewaySettings = connection.app.state.settings
    token = connection.cookies.get(cookie_name(settings))
    if token:
        return Credentials(token, "cookie")
    return None


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def check_csrf(connection: ASGIConnection, token: str) -> None:
    """403 `csrf_failed` unless the request carries the CSRF token of `token`."""
    sent = connection.headers.get(CSRF_HEADER)
    if sent is None and isinstance(connection, Request) and connection.content_type[0] in _FORM_TYPES:
        # Litestar keeps the parsed form: the handler reads the same one.
        sent = (await connection.form()).get(CSRF_FORM_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), csrf_token_for(token).encode()):
        raise ApiError(
            403,
            "csrf_failed",
            f"This request needs the {CSRF_HEADER} header from your sign-in: reload the page and try again.",
        )


def unauthorized(detail: str = "You need to sign in to do this.") -> ApiError:
    """401 `unauthorized`, with the challenge RFC 6750 asks for."""
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="portal"'})


async def authenticate(connection: ASGIConnection, *, required: bool = True) -> Principal | None:
    """The caller of this request (CSRF checked; 401 when `required` and there is none)."""
    memo = _request_state(connection).get(_PRINCIPAL, ...)
    if memo is not ...:
        if memo is None and required:
            raise unauthorized()
        return memo
    creds = credentials(connection)
    principal = None
    if creds is not None:
        if creds.source == "cookie" and connection.scope.get("method") in UNSAFE_METHODS:
            await check_csrf(connection, creds.token)
        auth = get_auth(connection.app.state)
        principal, fresh = await auth.resolve(connection.app.state, creds.token)
        if principal is not None and fresh and creds.source == "cookie":
            _request_state(connection)[_COOKIE_REFRESH] = (creds.token, principal.expires_in)
    _request_state(connection)[_PRINCIPAL] = principal
    if principal is None and required:
        raise unauthorized("Your session has ended: sign in again." if creds else "You need to sign in to do this.")
    return principal


def forget_principal(connection: ASGIConnection) -> None:
    """After logout: this request's cookie must not be renewed on the way out."""
    _request_state(connection).pop(_COOKIE_REFRESH, None)


async def provide_principal(request: Request) -> Principal:
    """Dependency `principal`: the caller, or 401."""
    principal = await authenticate(request)
    assert principal is not None
    return principal


async def provide_maybe_principal(request: Request) -> Principal | None:
    """Dependency `maybe_principal`: the caller, or None for an anonymous one."""
    return await authenticate(request, required=False)


def dependencies() -> dict[str, Provide]:
    """The application's auth dependencies (`principal`, `maybe_principal`)."""
    return {
        "principal": Provide(provide_principal),
        "maybe_principal": Provide(provide_maybe_principal),
    }


Guard = Callable[[ASGIConnection, BaseRouteHandler], Coroutine[Any, Any, None]]


def require_role(*roles: str, status: int = 404) -> Guard:
    """A guard: signed in (else 401) with one of `roles` (else 404, or 403 `forbidden`)."""
    # 404 by default: API.md answers staff routes with 404 for anyone else, so a caller
    # learns nothing of what exists.
    allowed = frozenset(roles)
    unknown = allowed - set(identity.Role.__args__)  # type: ignore[attr-defined]
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        assert principal is not None
        if principal.role not in allowed:
            if status == 404:
                raise ApiError(404, "not_found", "Nothing was found at this address.")
            raise ApiError(status, "forbidden", "Your account cannot do this.")

    guard.__name__ = f"require_role({', '.join(sorted(allowed))})"
    return guard


# -- client address -------------------------------------------------------------------------


def _parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_ip(connection: ASGIConnection) -> str:
    """The caller's address for the guessing limits."""
    # The socket peer, unless it is a trusted proxy: then the nearest X-Forwarded-For entry
    # that is not one (entries further left may be forged by the client).
    settings: GatewaySettings = connection.app.state.settings
    peer = connection.client.host if connection.client else ""
    networks = settings.trusted_proxy_networks
    peer_ip = _parse_ip(peer)
    if not networks or peer_ip is None or not any(peer_ip in n for n in networks):
        return peer[:64]
    hops = [hop for header in connection.headers.getall("x-forwarded-for", []) for hop in header.split(",")]
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            break  # a forged or garbled entry: nothing left of it can be believed
        if not any(ip in n for n in networks):
            return str(ip)
    return peer[:64]


# -- the cookie refresh -----------------------------------------------------------------------


def cookie_refresher(settings: GatewaySettings) -> Callable[[AsgiMessage, Scope], Coroutine[Any, Any, None]]:
    """A `before_send` hook renewing the session cookie when identity extended the session."""
    # Each use extends a session's idle lifetime; the cookie must not expire before it. A
    # response that sets the cookie itself (login, logout) is left alone.
    name = cookie_name(settings).encode()

    async def refresh(message: AsgiMessage, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        pending = scope.get("state", {}).get(_COOKIE_REFRESH)
        if pending is None or message["status"] >= 400:
            return
        raw = message.get("headers") or []
        if any(k.lower() == b"set-cookie" and v.startswith(name + b"=") for k, v in raw):
            return
        token, max_age = pending
        MutableScopeHeaders.from_message(message).add("set-cookie", session_cookie(settings, token, max_age).to_header(header=""))

    return refresh
