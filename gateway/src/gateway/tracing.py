"""The gateway's server span: one per HTTP request, named by its route template
(`POST /api/v1/auth/login`), in which every request the gateway makes over NATS is a child.

Not Litestar's OpenTelemetry plugin: the ASGI instrumentation under it records the path and the
query string as sent, and those carry link codes, verification tokens and ids of people. Here a
span knows the method, the route template and the status, nothing else.

The gateway faces the internet, so a `traceparent` a caller sends does not make the request part
of the caller's trace (anyone could join their requests to another's trace, or force every one
of theirs to be sampled): the request starts a trace of its own, linked to the caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog
from litestar.enums import ScopeType

from contracts.kit import tracing

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send


# Not traced: liveness and readiness probes.
PROBES = frozenset({"/health", "/ready"})


def _caller_context(scope: Scope) -> dict[str, str]:
    wanted = {b"traceparent", b"tracestate"}
    return {k.decode(): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in wanted}


class TracedRequests:
    """ASGI wrapper: a server span around each HTTP request (outside routing, so that unknown
    paths and refusals have theirs too), its trace id bound to the log lines written meanwhile."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        if scope.get("path") in PROBES:
            # A load balancer's probe every few seconds, and the health requests `/ready` makes
            # of every service, would fill the traces with nothing worth seeing.
            with tracing.unsampled():
                await self.app(scope, receive, send)
            return
        from opentelemetry import trace

        tracer = trace.get_tracer("parent-portal.gateway")
        method = str(scope.get("method", ""))
        links: list[Any] = []
        caller = _caller_context(scope)
        if caller:
            from opentelemetry.propagate import extract

            caller_span = trace.get_current_span(extract(caller)).get_span_context()
            if caller_span.is_valid:
                links.append(trace.Link(caller_span))
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        # A new root, whatever the caller sent (see the module's docstring).
        with tracer.start_as_current_span(
            method,
            context=trace.set_span_in_context(trace.INVALID_SPAN),
            kind=trace.SpanKind.SERVER,
            links=links,
            attributes={"http.request.method": method},
            # An exception's text may quote what the request carried.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            with structlog.contextvars.bound_contextvars(trace_id=trace_id):
                try:
                    await self.app(scope, receive, send_wrapper)
                finally:
                    # Known only once routed; an unknown path is named by its method alone.
                    template = scope.get("path_template")
                    if template:
                        span.update_name(f"{method} {template}")
                        span.set_attribute("http.route", template)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.Status(trace.StatusCode.ERROR))


def wrap_tracing(app: Litestar) -> Litestar:
    """Put `TracedRequests` around the app's ASGI handler when tracing is on (outermost, so the
    access log line is written inside the span)."""
    if tracing.ENABLED:
        app.asgi_handler = TracedRequests(app.asgi_handler)
    return app
