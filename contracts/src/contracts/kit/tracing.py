"""Traces with OpenTelemetry: on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, exported over OTLP/HTTP with protobuf.

Off, nothing of the SDK is imported or set up: every call site checks `ENABLED` (a module
attribute) first, or calls a helper here that returns at once. On, every part's spans carry
`service.name` = the part's name, and the W3C trace context (`traceparent`, `tracestate`) goes
along with the work wherever it goes over NATS:

- a request (`contracts.kit.rpc.call`) sends it in its headers; the responder's span continues it;
- an event written to the outbox keeps the context of the transaction that wrote it (in the row's
  `headers`, as JSON), and the relay publishes it as headers of the event;
- a consumer applying an event continues the event's trace (one span per event, even when a
  batch is applied in one transaction); what its handler emits continues it further;
- notify keeps it with the email it records, and its sending is a span of the same trace.

Everything else is the SDK's standard environment: `OTEL_TRACES_SAMPLER` (parent-based, always on
by default), `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_RESOURCE_ATTRIBUTES`.
Spans never carry a path, a query string, a message body or an address: only route templates,
subjects, ids of events and error codes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

# Read on hot paths (every request, every event): true once `setup` turned tracing on.
ENABLED = False

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_provider: Any = None
_tracer: Any = None
# The API modules, imported by `setup` only: off, none of OpenTelemetry is imported.
_trace: Any = None
_propagate: Any = None
_context: Any = None

# Outcomes of a request that are the system's failure rather than the caller's mistake: a span
# that ends so is marked as an error (a refused password is not).
ERROR_CODES = frozenset({"internal_error", "service_unavailable", "timeout"})


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, and the SDK not disabled)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    )


def setup(part: str, *, instance: str | None = None, version: str | None = None) -> bool:
    """Turn tracing on for this process, as part `part`, when the environment asks for it.

    One part per process (its spans' `service.name`); a second call changes nothing.
    """
    global ENABLED, _provider, _tracer, _trace, _propagate, _context
    if ENABLED or not wanted():
        return ENABLED
    from opentelemetry import context, propagate, trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.name": part, "service.namespace": "parent-portal"}
    if instance:
        attributes["service.instance.id"] = instance
    if version:
        attributes["service.version"] = version
    # Given attributes win over OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME: a part is named
    # by what it is, whatever a shared environment says.
    # shutdown_on_exit=False: `shutdown` flushes with a bound of its own, where the SDK's exit
    # hook could hold a stopping part for the exporter's whole timeout.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider, _trace, _propagate, _context = provider, trace, propagate, context
    _tracer = provider.get_tracer("parent-portal")
    ENABLED = True
    return True


def shutdown(timeout: float = 1.0) -> None:
    """Export what is left, waiting at most `timeout` seconds (a collector that is away must
    not hold up a stopping part)."""
    global ENABLED
    provider = _provider
    if provider is None:
        return
    ENABLED = False
    worker = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    worker.start()
    worker.join(timeout)


# -- carrying the context ----------------------------------------------------------------------


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """`headers` (a new dict when None) with the current trace context added, if any."""
    carrier = {} if headers is None else headers
    if ENABLED:
        _propagate.inject(carrier)
    return carrier


def current_traceparent() -> str | None:
    """The current span's `traceparent` (None when tracing is off or no span is current)."""
    if not ENABLED:
        return None
    return inject().get(TRACEPARENT)


def _carrier(headers: Mapping[str, str] | None) -> dict[str, str]:
    # Only the trace context: whatever else a message carries is none of the propagator's business.
    if not headers:
        return {}
    return {k: headers[k] for k in (TRACEPARENT, TRACESTATE) if k in headers}


def _extract(headers: Mapping[str, str] | None) -> Any:
    return _propagate.extract(_carrier(headers))


def _mark(span: Any, code: str | None) -> None:
    if code is None:
        return
    span.set_attribute("portal.error", code)
    if code in ERROR_CODES:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, code))


def _nats(subject: str, operation: str, **more: Any) -> dict[str, Any]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,
        **{k: v for k, v in more.items() if v is not None},
    }


# -- spans -------------------------------------------------------------------------------------


@contextmanager
def requesting(subject: str) -> Iterator[dict[str, str]]:
    """A client span for a request to `subject`; yields the headers to send it with. An error
    reply, a timeout or no responder ends it with the error's code."""
    with _tracer.start_as_current_span(
        subject,
        kind=_trace.SpanKind.CLIENT,
        attributes=_nats(subject, "send"),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield inject()
        except Exception as exc:
            code = getattr(exc, "code", None)
            _mark(span, code if isinstance(code, str) else "internal_error")
            raise


@contextmanager
def serving(subject: str, headers: Mapping[str, str] | None) -> Iterator[Any]:
    """The server span of a request to `subject`, continuing the caller's trace (from the
    request's headers). `answered_with(error_code)` records an error reply."""
    with _tracer.start_as_current_span(
        subject,
        context=_extract(headers),
        kind=_trace.SpanKind.SERVER,
        attributes=_nats(subject, "process"),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def answered_with(error: str) -> None:
    """Record an error reply on the current (server) span."""
    span = _trace.get_current_span()
    if span.is_recording():
        _mark(span, error)


def publishing(subject: str, headers: dict[str, str], *, event_id: str | None = None) -> AbstractContextManager[Any]:
    """Around the outbox relay's publication of an event that carries a trace context: a
    producer span in that trace, whose own context replaces the one in `headers` (so the
    consumer's span follows the publication). Nothing when tracing is off or the event has
    no context."""
    if not ENABLED or TRACEPARENT not in headers:
        return nullcontext()
    return _publishing(subject, headers, event_id)


@contextmanager
def _publishing(subject: str, headers: dict[str, str], event_id: str | None) -> Iterator[Any]:
    parent = _extract(headers)
    with _tracer.start_as_current_span(
        f"send {subject}",
        context=parent,
        kind=_trace.SpanKind.PRODUCER,
        attributes=_nats(subject, "send", **{"messaging.message.id": event_id}),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        _propagate.inject(headers)
        try:
            yield span
        except Exception as exc:
            failed(span, exc)
            raise


class Consuming:
    """The spans of one batch a consumer applies: one per event that carries a trace context,
    each continuing its event's trace; ended together when the batch is done."""

    def __init__(self, consumer: str, events: Iterable[tuple[str, Mapping[str, str] | None, str]]) -> None:
        self._spans: dict[str, Any] = {}
        for subject, headers, event_id in events:
            if not headers or TRACEPARENT not in headers or event_id in self._spans:
                continue
            self._spans[event_id] = _tracer.start_span(
                f"process {subject}",
                context=_extract(headers),
                kind=_trace.SpanKind.CONSUMER,
                attributes=_nats(
                    subject,
                    "process",
                    **{"messaging.consumer.group.name": consumer, "messaging.message.id": event_id},
                ),
            )

    def use(self, event_id: str) -> AbstractContextManager[Any]:
        """Make the event's span current (what the handler emits continues its trace)."""
        span = self._spans.get(event_id)
        if span is None:
            return nullcontext()
        return _trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)

    def failed(self, event_id: str, exc: BaseException) -> None:
        """The event could not be applied (it is retried or dead-lettered)."""
        span = self._spans.get(event_id)
        if span is not None:
            failed(span, exc)

    def end(self) -> None:
        """End every span of the batch."""
        for span in self._spans.values():
            span.end()
        self._spans.clear()


def consuming(consumer: str, events: Iterable[tuple[str, Mapping[str, str] | None, str]]) -> Consuming | None:
    """Spans for a batch of `(subject, headers, event_id)` (None when tracing is off)."""
    if not ENABLED:
        return None
    return Consuming(consumer, events)


def using(spans: Consuming | None, event_id: str) -> AbstractContextManager[Any]:
    """`spans.use(event_id)`, or nothing when there are no spans."""
    return nullcontext() if spans is None else spans.use(event_id)


def span(
    name: str,
    *,
    traceparent: str | None = None,
    kind: str = "INTERNAL",
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Any]:
    """A span named `name`, child of the current span, or of `traceparent` when given (work
    taken up later from a record that kept its trace, like an email). Nothing when off."""
    if not ENABLED:
        return nullcontext()
    return _span(name, traceparent, kind, attributes)


@contextmanager
def _span(name: str, traceparent: str | None, kind: str, attributes: Mapping[str, Any] | None) -> Iterator[Any]:
    context = _extract({TRACEPARENT: traceparent}) if traceparent else None
    with _tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(_trace.SpanKind, kind),
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except Exception as exc:
            failed(current, exc)
            raise


def failed(span: Any, exc: BaseException) -> None:
    """Mark `span` as failed by `exc`: its type only (an exception's text may quote what a
    span must not carry, an address or a code)."""
    span.set_attribute("error.type", type(exc).__name__)
    span.set_status(_trace.Status(_trace.StatusCode.ERROR, type(exc).__name__))


@contextmanager
def unsampled() -> Iterator[None]:
    """Work that is never traced, nor anything it asks of other parts (a probe): its context is
    a parent that was not sampled, which every part's default sampler follows."""
    import secrets

    parent = _trace.SpanContext(
        trace_id=int.from_bytes(secrets.token_bytes(16), "big") or 1,
        span_id=int.from_bytes(secrets.token_bytes(8), "big") or 1,
        is_remote=True,
        trace_flags=_trace.TraceFlags(_trace.TraceFlags.DEFAULT),
    )
    token = _context.attach(_trace.set_span_in_context(_trace.NonRecordingSpan(parent)))
    try:
        yield
    finally:
        _context.detach(token)


def trace_id() -> str | None:
    """The current trace's id as 32 hex digits (for log lines), or None."""
    if not ENABLED:
        return None
    ctx = _trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
