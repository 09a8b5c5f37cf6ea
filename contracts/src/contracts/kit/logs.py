"""Structured logs: one JSON object a line, carrying ids, never names, addresses, codes or tokens."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import msgspec
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


class _Timestamps:
    """`timestamp`, UTC ISO 8601 to the microsecond as structlog's `TimeStamper(fmt="iso",
    utc=True)` writes it (`2026-12-04T12:30:16.510646Z`), the date and time of day formatted
    once a second rather than once a line (a twentieth of an access log line's cost)."""

    def __init__(self) -> None:
        # (second, its text): one attribute, so a thread never pairs one second with another's text.
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, _logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # To the nearest microsecond, as `datetime.now` rounds the clock.
        second, micro = divmod((time.time_ns() + 500) // 1000, 1_000_000)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        # `isoformat` leaves out a fraction of nought.
        event_dict["timestamp"] = f"{cached[1]}.{micro:06d}Z" if micro else f"{cached[1]}Z"
        return event_dict


# Lines waiting for the writer thread; beyond this the newest are dropped (and counted).
QUEUE_SIZE = 10_000
# How long the writer thread lets lines gather before it writes them in one go: it wakes (and
# takes the interpreter from the event loop) at most this often, not once a line.
BATCH_SECONDS = 0.02


class _Lines:
    """Rendered lines on their way to stderr, written in batches by a thread of its own.

    Each line is rendered where it is logged (that is cheap) and handed over here: a blocked
    stderr (a full pipe, a slow log shipper) never holds up a request. When the writer is
    QUEUE_SIZE lines behind, lines are dropped and counted rather than waited for. Once
    stopped (`flush_logs`), lines are written at once, in the calling thread.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.pending: deque[bytes] = deque()
        self.dropped = 0
        self._dropped_lock = threading.Lock()
        self._wake = threading.Event()
        # Whether the writer was woken and will drain what comes before it drains: one wake a
        # batch, not a thread hand-over a line.
        self._signalled = False
        self._stopping = False
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="portal-log-writer", daemon=True
        )
        self._thread.start()

    def put(self, line: bytes) -> None:
        if self._thread is None:
            self._write([line])
            return
        if len(self.pending) >= QUEUE_SIZE:
            with self._dropped_lock:
                self.dropped += 1
            return
        self.pending.append(line)
        if not self._signalled:
            self._signalled = True
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._stopping:
                time.sleep(BATCH_SECONDS)
            # Cleared before the flag: a line put meanwhile either sees the flag down and wakes
            # this thread again, or was appended before the drain below.
            self._wake.clear()
            self._signalled = False
            batch = []
            pending = self.pending
            while pending:
                batch.append(pending.popleft())
            if batch or self.dropped:
                self._write(batch)
            if self._stopping and not self.pending:
                return

    def _write(self, batch: list[bytes]) -> None:
        if self.dropped:
            with self._dropped_lock:
                count, self.dropped = self.dropped, 0
            note = {"count": count, "event": "log_lines_dropped", "level": "warning", "timestamp": _now()}
            batch.insert(0, _encode(note) + b"\n")
        data = b"".join(batch)
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        try:
            if fd is None:
                self.stream.write(data.decode("utf-8", "replace"))
                self.stream.flush()
                return
            self.stream.flush()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except (OSError, ValueError):
            pass  # stderr is gone: nowhere left to say so

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _fallback(value: Any) -> Any:
    return repr(value)


_encode = msgspec.json.Encoder(enc_hook=_fallback).encode


def _render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> bytes:
    return _encode(event_dict)


class _LineLogger:
    """structlog's logger: hands each rendered line to the writer."""

    def __init__(self, lines: _Lines) -> None:
        self._lines = lines

    def msg(self, message: str | bytes) -> None:
        self._lines.put((message.encode() if isinstance(message, str) else message) + b"\n")

    debug = info = warning = warn = error = critical = fatal = exception = msg


class _ToLines(logging.Handler):
    """The standard library's records (uvicorn, nats-py, SQLAlchemy), rendered as ours are."""

    def __init__(self, lines: _Lines) -> None:
        super().__init__()
        self._lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.put(self.format(record).encode() + b"\n")
        except Exception:  # noqa: BLE001 - a line that cannot be rendered must not fail the caller
            self.handleError(record)


_lines: _Lines | None = None


def flush_logs() -> None:
    """Write every line handed off so far and stop the writer thread (at exit, or before
    `os._exit`); later lines are written at once, in the calling thread."""
    if _lines is not None:
        _lines.stop()


def configure_logging(*, service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route both structlog and the standard library through one JSON renderer on stderr,
    written by a thread of its own (see `_Lines`)."""
    global _lines
    flush_logs()
    _lines = lines = _Lines(sys.stderr)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _Timestamps(),
        _add_trace_id,
        structlog.processors.format_exc_info,
    ]
    renderer: Processor = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else _render_json
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, renderer],
        logger_factory=lambda *_args: _LineLogger(lines),
        # Lines below the level cost one comparison, not a trip through the processors.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer if fmt == "console" else _render_text,
        ],
    )
    handler = _ToLines(lines)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.bind_contextvars(service=service)
    # Per-message logs of the broker would cost a third of its throughput and say nothing
    # an operator needs; failures still surface through our own log lines.
    logging.getLogger("faststream").setLevel(logging.WARNING)
    logging.getLogger("portal.broker").setLevel(logging.WARNING)
    logging.getLogger("nats").setLevel(logging.WARNING)


def _render_text(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    # ProcessorFormatter wants text.
    return _encode(event_dict).decode()


atexit.register(flush_logs)


def get_logger(name: str) -> Any:
    """A structured logger (`info`, `warning`, `error`, `exception`, `bind`)."""
    return structlog.get_logger(name)


def describe_error(exc: BaseException) -> str:
    """A short description that carries no message content (validation errors echo input)."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in exc.errors(include_input=False)[:5]]
        return f"ValidationError: {'; '.join(parts)}"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
