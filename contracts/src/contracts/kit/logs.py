"""Structured logs: one JSON object a line, carrying ids, never names, addresses, codes or tokens."""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import structlog
from pydantic import ValidationError
from structlog.typing import Processor

from contracts.kit import tracing


def _add_trace_id(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Tracing on: a line written inside a span names its trace, to find one from the other.
    if tracing.ENABLED and "trace_id" not in event_dict:
        trace_id = tracing.trace_id()
        if trace_id is not None:
            event_dict["trace_id"] = trace_id
    return event_dict


# Lines waiting for the writer thread; beyond this the newest are dropped (and counted).
QUEUE_SIZE = 10_000


class _HandOff(logging.handlers.QueueHandler):
    """Hands each record to the writer thread and returns at once: a blocked stderr (a full
    pipe, a slow log shipper) never holds up a request. When the writer is QUEUE_SIZE lines
    behind, lines are dropped and counted rather than waited for."""

    def __init__(self, q: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(q)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatted in the writer thread. A standard-library record takes this thread's context
        # (service, request id, trace) with it: the writer thread has none of its own.
        if not isinstance(record.msg, dict):
            context = dict(structlog.contextvars.get_contextvars())
            _add_trace_id(None, "", context)
            # When it happened, not when the writer got to it.
            context["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z")
            record.portal_context = context
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(logging.StreamHandler):
    """Writes in the writer thread; first says how many lines were dropped, if any were."""

    def __init__(self, source: _HandOff) -> None:
        super().__init__(sys.stderr)
        self.source = source

    def emit(self, record: logging.LogRecord) -> None:
        if self.source.dropped:
            count, self.source.dropped = self.source.dropped, 0
            note = logging.LogRecord(
                "contracts.kit.logs", logging.WARNING, __file__, 0, "log_lines_dropped", None, None
            )
            note.portal_context = {"count": count}
            super().emit(note)
        super().emit(record)


def _record_context(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    record = event_dict.get("_record")
    for key, value in getattr(record, "portal_context", {}).items():
        event_dict.setdefault(key, value)
    return event_dict


_listener: logging.handlers.QueueListener | None = None


def flush_logs() -> None:
    """Write every line handed off so far and stop the writer thread (at exit, or before
    `os._exit`); later lines are written at once, in the calling thread."""
    global _listener
    listener, _listener = _listener, None
    if listener is not None:
        listener.stop()
        root = logging.getLogger()
        root.handlers[:] = list(listener.handlers)


def configure_logging(*, service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route both structlog and the standard library through one JSON renderer on stderr,
    written by a thread of its own (see `_HandOff`)."""
    global _listener
    flush_logs()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace_id,
    ]
    renderer = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else structlog.processors.JSONRenderer()
    structlog.configure(
        # An exception is formatted here, in the thread that caught it: the writer has none.
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # Runs in the writer thread: the context comes with the record, not from contextvars.
        foreign_pre_chain=[
            _record_context,
            structlog.processors.add_log_level,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    hand_off = _HandOff(queue.Queue(QUEUE_SIZE))
    writer = _Writer(hand_off)
    writer.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [hand_off]
    root.setLevel(level.upper())
    _listener = logging.handlers.QueueListener(hand_off.queue, writer)
    _listener.start()
    structlog.contextvars.bind_contextvars(service=service)
    # Per-message logs of the broker would cost a third of its throughput and say nothing
    # an operator needs; failures still surface through our own log lines.
    logging.getLogger("faststream").setLevel(logging.WARNING)
    logging.getLogger("portal.broker").setLevel(logging.WARNING)
    logging.getLogger("nats").setLevel(logging.WARNING)


atexit.register(flush_logs)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structured logger."""
    return structlog.get_logger(name)


def describe_error(exc: BaseException) -> str:
    """A short description that carries no message content (validation errors echo input)."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors(include_input=False)[:5]]
        return f"ValidationError: {'; '.join(parts)}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
