"""Who is calling: the session token of a request, resolved to identity's `Principal`.

A token comes as `Authorization: Bearer <token>` or in the session cookie. Identity says whose
it is (`IdentityClient.session`); the answer is kept for some minutes per process and dropped
as soon as identity's events say the session ended or the account changed (see
`gateway.caches.sessions`), so that logging out or changing a password takes effect on every
replica at once.

Routes get the caller by declaring `principal: NamedDependency[Principal]` (401 when there is
none) or `maybe_principal: NamedDependency[Principal | None]`; `guards=[require_role("school_admin")]` limits a route
to some roles. A cookie-authenticated unsafe request must carry the CSRF token (`X-CSRF-Token`
header, or a `csrf_token` form field) that login and `GET /me` return.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, get_args

from litestar import Request
from litestar._parsers import parse_cookie_string
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders, State
from litestar.di import Provide
from litestar.handlers import BaseRouteHandler
from litestar.types import HTTPResponseStartEvent, Scope

from contracts import identity
from contracts.identity import Principal
from contracts.kit.logs import get_logger
from gateway.caches.sessions import get_auth, token_key
from gateway.clients import Clients, StaffLinking, get_clients
from gateway.errors import ApiError, not_found
from gateway.settings import GatewaySettings

COOKIE_NAME = "portal_session"
SECURE_COOKIE_NAME = "__Host-portal_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FORM_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

log = get_logger("gateway.auth")

# Per-request memo in the scope's state, shared by guards, dependencies and the cookie renewal.
_PRINCIPAL = "portal_principal"
_COOKIE_REFRESH = "portal_cookie_refresh"


def _request_state(connection: ASGIConnection) -> dict[str, Any]:
    return connection.scope.setdefault("state", {})


# OpenAPI security requirements for routes that need a caller.
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"session_cookie": []}]


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


def csrf_token_for(token: str) -> str:
    """The CSRF token of a session."""
    # Derived from the secret token: nothing to store, and a page of another site, which
    # cannot read the cookie, cannot compute it.
    return hashlib.sha256(b"csrf:" + token.encode()).hexdigest()


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The session token a request carries, and where it came from."""

    token: str
    source: Literal["bearer", "cookie"]


def credentials(connection: ASGIConnection) -> Credentials | None:
    """The request's token, from the Authorization header, else the session cookie."""
    # Read from the raw headers (the first of each, as `connection.headers.get` gives): on the
    # hottest routes this is all that is read of them, and Litestar's `Headers` and cookie
    # parsing of every header cost more than the rest of the lookup.
    authorization = cookies = None
    for name, value in connection.scope["headers"]:
        name = name.lower()
        if name == b"authorization":
            if authorization is None:
                authorization = value
        elif name == b"cookie" and cookies is None:
            cookies = value
    # The header wins: an API client may run in a browser that also holds a cookie.
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        # A malformed header is a wrong credential, not an anonymous caller.
        return Credentials(token.strip() if scheme.lower() == "bearer" else "", "bearer")
    if cookies:
        settings: GatewaySettings = connection.app.state.settings
        cookie = parse_cookie_string(cookies.decode("latin-1")).get(cookie_name(settings))
        if cookie:
            return Credentials(cookie, "cookie")
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


def known_principal(connection: ASGIConnection) -> Principal | None:
    """The caller, if this request has already been authenticated (no lookup: for an error page)."""
    memo = _request_state(connection).get(_PRINCIPAL)
    return memo if isinstance(memo, Principal) else None


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
        principal, fresh = await get_auth(connection.app.state).resolve(creds.token)
        if principal is not None and fresh and creds.source == "cookie":
            _request_state(connection)[_COOKIE_REFRESH] = (creds.token, principal.expires_in)
    _request_state(connection)[_PRINCIPAL] = principal
    if principal is None and required:
        raise unauthorized("Your session has ended: sign in again." if creds else "You need to sign in to do this.")
    return principal


def forget_principal(connection: ASGIConnection) -> None:
    """After logout: this request's cookie must not be renewed on the way out."""
    _request_state(connection).pop(_COOKIE_REFRESH, None)


async def end_session(request: Request) -> None:
    """End the request's session on every replica before returning (401 without one)."""
    creds = credentials(request)
    if creds is None:
        raise unauthorized()
    if creds.source == "cookie":
        await check_csrf(request, creds.token)
    auth = get_auth(request.app.state)
    principal, _ = await auth.resolve(creds.token)
    # This replica stops accepting the token now, whatever identity and the event do next.
    auth.cache.drop_token(token_key(creds.token))
    if principal is not None:
        await auth.until_revoked(auth.identity.logout(creds.token), session_id=principal.session_id)
        log.info("logout", account_id=principal.account_id, session_id=principal.session_id)
    forget_principal(request)


async def end_replaced_sessions(request: Request) -> None:
    """After a login: end, on every replica, the sessions the request still carried (its bearer
    token and its cookie), so that one browser holds one session."""
    # Whoever used this browser before (a shared computer, or a session planted in it) must
    # not stay signed in behind the new session. Ended after the new login succeeded: a
    # mistyped password signs nobody out.
    tokens = {creds.token for creds in _all_credentials(request) if creds.token}
    auth = get_auth(request.app.state)
    for token in tokens:
        principal, _ = await auth.resolve(token)
        auth.cache.drop_token(token_key(token))
        if principal is not None:
            await auth.until_revoked(auth.identity.logout(token), session_id=principal.session_id)
            log.info("session_replaced", account_id=principal.account_id, session_id=principal.session_id)
    forget_principal(request)


def _all_credentials(connection: ASGIConnection) -> list[Credentials]:
    found = []
    header = credentials(connection)
    if header is not None:
        found.append(header)
    settings: GatewaySettings = connection.app.state.settings
    cookie = connection.cookies.get(cookie_name(settings))
    if cookie and (header is None or header.source != "cookie"):
        found.append(Credentials(cookie, "cookie"))
    return found


async def change_password(state: State, token: str, password: str) -> None:
    """Set a new password with a reset token; every session of the account ends, on every
    replica, before this returns (the web page's reset does the same)."""
    auth = get_auth(state)
    await auth.until_account_revoked(auth.identity.password_reset_confirm(token, password))


async def provide_principal(request: Request) -> Principal:
    """Dependency `principal`: the caller, or 401."""
    principal = await authenticate(request)
    assert principal is not None
    return principal


async def provide_maybe_principal(request: Request) -> Principal | None:
    """Dependency `maybe_principal`: the caller, or None for an anonymous one."""
    return await authenticate(request, required=False)


def provide_clients(request: Request) -> Clients:
    """Dependency `clients`: the application's service clients."""
    return get_clients(request.app.state)


async def provide_staff(request: Request) -> StaffLinking:
    """Dependency `staff`: linking's staff requests within the caller's scope (401 without one)."""
    # Only ever built from the signed-in caller's own principal: a route cannot ask linking
    # for a member of staff with a scope of its choosing.
    principal = await authenticate(request)
    assert principal is not None
    return get_clients(request.app.state).linking.staff(principal)


def dependencies() -> dict[str, Provide]:
    """What any handler may declare: `principal`, `maybe_principal`, `clients`, `staff`."""
    return {
        "principal": Provide(provide_principal),
        "maybe_principal": Provide(provide_maybe_principal),
        "clients": Provide(provide_clients, sync_to_thread=False),
        "staff": Provide(provide_staff),
    }


Guard = Callable[[ASGIConnection, BaseRouteHandler], Coroutine[Any, Any, None]]


def require_role(*roles: str, status: int = 404) -> Guard:
    """A guard: signed in (else 401) with one of `roles` (else 404, or 403 `forbidden`)."""
    # 404 by default: staff routes answer 404 to anyone else (docs/http-api.md), so a caller
    # learns nothing of what exists.
    allowed = frozenset(roles)
    unknown = allowed - set(get_args(identity.Role))
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")

    async def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        assert principal is not None
        if principal.role not in allowed:
            if status == 404:
                raise not_found()
            raise ApiError(status, "forbidden", "Your account cannot do this.")

    guard.__name__ = f"require_role({', '.join(sorted(allowed))})"
    return guard


parents_only = require_role("parent")
staff_only = require_role(*identity.STAFF_ROLES)
# School settings, the audit trail and safeguarding bars: school admins and the trust's admins.
admins_only = require_role("school_admin", "trust_admin")


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


def cookie_refresher(settings: GatewaySettings) -> Callable[[HTTPResponseStartEvent, Scope], None]:
    """Renews the session cookie when identity extended the session: called by `gateway.edge.Edge`
    with every response's start, after the portal's own headers."""
    # Each use extends a session's idle lifetime; the cookie must not expire before it. A
    # response that sets the cookie itself (login, logout) is left alone.
    name = cookie_name(settings).encode()

    def refresh(message: HTTPResponseStartEvent, scope: Scope) -> None:
        state = scope.get("state")
        pending = state.get(_COOKIE_REFRESH) if state else None
        if pending is None or message["status"] >= 400:
            return
        raw = message.get("headers") or []
        if any(k.lower() == b"set-cookie" and v.startswith(name + b"=") for k, v in raw):
            return
        token, max_age = pending
        MutableScopeHeaders.from_message(message).add(
            "set-cookie", session_cookie(settings, token, max_age).to_header(header="")
        )

    return refresh
