"""What every request and response goes through: the browser checks, security headers, a
request id and one access log line.

The headers and the access log work on every response, unknown paths and errors included.
Litestar's own `middleware` runs only for requests that matched a route, so they wrap the
application's ASGI handler instead (`Edge`, with the metrics of every request). The browser
checks (`BrowserChecks`) are that middleware: they run once the route is known, so that a
page's refusal is a page and the API's is JSON, and before any body is read, any guard runs or
any service is asked.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import structlog
from litestar.enums import ScopeType
from litestar.middleware import DefineMiddleware

from contracts.kit.logs import get_logger
from gateway.errors import ApiError

if TYPE_CHECKING:
    from collections.abc import Callable

    from litestar import Litestar
    from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

    from contracts.kit.metrics import GatewayMetrics

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
_NO_STORE_STARTS = tuple(f"{prefix}{sep}" for prefix in NO_STORE_PREFIXES for sep in "/.")

REQUEST_ID_HEADER = "x-request-id"


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + ".")


# -- browser checks ----------------------------------------------------------------------------

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What a browser says of a request another site's page made. "same-site" is refused too: a
# sibling host under the same registrable domain is another party's page all the same.
_OTHER_SITES = frozenset({"cross-site", "same-site"})
JSON_TYPE = "application/json"


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL as browsers send it in `Origin` (lower case, default port
    left out); None when it has none (`null`, not a URL)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    if ":" in host:
        host = f"[{host}]"  # IPv6, as it is written in a URL
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


# RFC 8058's one-click unsubscribe: a webmail may POST it from its own page; all the request can
# do is turn off the digest its URL's token was made for (gateway.pages.unsubscribe_pages).
ONE_CLICK_PREFIX = "/unsubscribe"

# What the checks read of a request; the rest of its headers are passed over.
_CHECKED = frozenset({b"sec-fetch-site", b"origin", b"transfer-encoding", b"content-length", b"content-type"})


class BrowserChecks:
    """Refuses what a page of another site could make a visitor's browser send.

    - An unsafe request (POST, PUT, PATCH, DELETE) whose `Origin` is not the portal's own (the
      origin of `PORTAL_PUBLIC_URL`), or which says `Sec-Fetch-Site: cross-site` or
      `same-site`: 403 `cross_origin`, signed in or not. Without either header the request is
      not a browser's (an app, a script) and goes on as before. Except the digest's one-click
      unsubscribe (`/unsubscribe/…`), which RFC 8058 has mail programs POST from anywhere.
    - A request to the API with a body that is not `Content-Type: application/json`: 415
      `unsupported_media_type`. A page of another site can send a form (`text/plain` included)
      without asking, but JSON only after a CORS preflight, which the portal never grants.

    A plain ASGI layer (`define(...)`, Litestar's `DefineMiddleware`) reading the raw headers:
    Litestar's `ASGIMiddleware` and `Headers` cost the overview a tenth of its time a request.
    """

    def __init__(self, app: ASGIApp, origin: str, api_prefix: str) -> None:
        self.app = app
        self.origin = origin
        self.api_prefix = api_prefix

    @staticmethod
    def define(public_url: str, api_prefix: str) -> DefineMiddleware:
        """The layer as Litestar's `middleware` takes it (checking the public URL now)."""
        own = origin_of(public_url)
        if own is None:
            raise ValueError(f"the public URL has no origin: {public_url!r}")
        return DefineMiddleware(BrowserChecks, origin=own, api_prefix=api_prefix)

    def cross_origin(self, sites: list[str], origins: list[str]) -> bool:
        """Whether a browser says another site's page made this request (from the values of its
        `Sec-Fetch-Site` and `Origin` headers)."""
        if any(site.strip().lower() in _OTHER_SITES for site in sites):
            return True
        # "null" (a sandboxed frame, a file, some redirects) has no origin: never ours.
        return any(origin_of(sent) != self.origin for sent in origins)

    def check(self, scope: Scope) -> None:
        """Raise the refusal of this request, if any."""
        method = scope.get("method")
        path = scope.get("path", "")
        unsafe = method in UNSAFE_METHODS
        api = _under(path, self.api_prefix)
        if not unsafe and not api:
            return
        found: dict[bytes, list[str]] = {}
        for name, value in scope["headers"]:
            name = name.lower()
            if name in _CHECKED:
                found.setdefault(name, []).append(value.decode("latin-1"))
        if (
            unsafe
            and self.cross_origin(found.get(b"sec-fetch-site", []), found.get(b"origin", []))
            and not _under(path, ONE_CLICK_PREFIX)
        ):
            log.warning("cross_origin_refused", method=method, path=scope.get("path_template"))
            raise ApiError(
                403,
                "cross_origin",
                "This request came from another website, so nothing was done: "
                f"use Parent Portal from its own pages at {self.origin}.",
            )
        if api and _has_body(found):
            media_type = (found.get(b"content-type", [""])[0] or "").split(";", 1)[0].strip().lower()
            if media_type != JSON_TYPE:
                raise ApiError(
                    415, "unsupported_media_type", "Send the request body as JSON, with Content-Type: application/json."
                )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            self.check(scope)
        await self.app(scope, receive, send)


def _has_body(found: dict[bytes, list[str]]) -> bool:
    if b"transfer-encoding" in found:
        return True
    try:
        return int(found.get(b"content-length", [""])[0] or 0) > 0
    except ValueError:
        return True  # garbled: judge it as a body


class Edge:
    """ASGI wrapper, one layer for what every HTTP answer gets: a request id (bound to every log
    line written meanwhile, and sent back in `X-Request-Id`), the security headers (a response's
    own CSP is kept; HSTS when served over https; `no-store` on personal data), the request's
    count and duration in the metrics, and one access log line (method, route, status,
    duration), never a body or a query string.

    One layer, one `send` wrapper and one pass over the headers: each of these as a layer of
    its own cost a fifth of the overview's rate.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        https: bool,
        metrics: GatewayMetrics | None = None,
        on_start: Callable[[HTTPResponseStartEvent, Scope], None] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Called with every response's start once its headers are in (the session cookie's
        # renewal): one `send` wrapper rather than a `before_send` hook's own.
        self.on_start = on_start
        extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        if https:
            extra.append((b"strict-transport-security", HSTS.encode()))
        self._extra = extra
        # A response's own value of these is kept; HSTS is always the portal's.
        self._kept = frozenset(k for k, _ in extra if k != b"strict-transport-security")
        # What nearly every response gets (`_extra`, or this), encoded once: appended as they
        # are unless the response names one of these headers itself.
        self._tail_no_store = (*extra, (b"cache-control", b"no-store"))
        self._ours = frozenset(k for k, _ in self._tail_no_store)

    def _headers(self, message: HTTPResponseStartEvent, path: str, request_id: str) -> None:
        raw = message.get("headers") or ()
        headers: list[tuple[bytes, bytes]] = raw if isinstance(raw, list) else list(raw)
        # `_under(path, prefix)` for any of NO_STORE_PREFIXES, in one call each.
        no_store = path in NO_STORE_PREFIXES or path.startswith(_NO_STORE_STARTS)
        ours = self._ours
        for name, _ in headers:
            if name.lower() in ours:
                break
        else:
            headers.extend(self._tail_no_store if no_store else self._extra)
            headers.append((b"x-request-id", request_id.encode()))
            message["headers"] = headers
            return
        present = {k.lower() for k, _ in headers}
        if no_store and b"cache-control" in present:
            headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
        for name, value in self._extra:
            if name not in present or name not in self._kept:
                if name in present:
                    headers = [(k, v) for k, v in headers if k.lower() != name]
                headers.append((name, value))
        if no_store:
            headers.append((b"cache-control", b"no-store"))
        headers.append((b"x-request-id", request_id.encode()))
        message["headers"] = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        # Not a secret, only a handle for support: no system call for it.
        request_id = f"{random.getrandbits(64):016x}"
        raw_path = scope.get("path", "")
        method = scope.get("method", "")
        status = 500
        start = time.perf_counter()
        # HEAD is GET without the body (RFC 9110 9.3.2): link checkers and monitors ask it, and
        # every GET route answers it with the same status and headers, Content-Length included.
        head = method == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}

        on_start = self.on_start

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self._headers(message, raw_path, request_id)
                if on_start is not None:
                    on_start(message, scope)
            elif head and message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": b""}
            await send(message)

        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            seconds = time.perf_counter() - start
            # A matched route is logged by its template: paths carry link codes and ids of
            # people; an unknown path is logged as sent, cut short.
            template = scope.get("path_template")
            if self.metrics is not None:
                self.metrics.answered(template, str(method), status, seconds)
            log.info(
                "request",
                method=method,
                path=template or raw_path[:200],
                status=status,
                duration_ms=round(seconds * 1000, 2),
            )
            structlog.contextvars.reset_contextvars(**tokens)


def wrap_edge(
    app: Litestar,
    *,
    https: bool,
    metrics: GatewayMetrics | None = None,
    on_start: Callable[[HTTPResponseStartEvent, Scope], None] | None = None,
) -> Litestar:
    """Put `Edge` around the app's ASGI handler, outside routing and error handling."""
    app.asgi_handler = Edge(app.asgi_handler, https=https, metrics=metrics, on_start=on_start)
    return app
