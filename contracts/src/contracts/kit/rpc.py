"""Request/reply over NATS: `rpc.<service>.<verb>.v1`, each declared once as an `Rpc`.

A declaration carries the subject, the request type and the reply type. The serving side
registers a handler for it (`ServiceRuntime.serve`; the declaration itself is `contracts.base.Rpc`), the calling side gets the reply type from
it (`call`). Both sides therefore agree by construction, and the AsyncAPI document's replies are
generated from the same objects.

A real NATS server sends nothing back when a handler raises, so the caller would only time
out. Every failure is answered with an error reply instead (`Portal-Error` header and an
`ErrorReply` body: a code, a sentence, field errors as data, `retry_after` in seconds); the
client side turns that reply, a missing responder and a deadline into distinct exceptions. A
handler that fails because its database cannot be reached answers `service_unavailable` (the
gateway's 503, to be tried again), anything else unexpected `internal_error`.
There is one server path (`Responder`, on nats-py directly), so every request answers its
errors the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import ValidationError

from contracts.base import Rep, Req, Rpc
from contracts.kit import tracing
from contracts.kit.logs import describe_error, get_logger
from contracts.rpc import ERROR_HEADER, ErrorReply, FieldError

if TYPE_CHECKING:
    from contracts.kit.metrics import ServiceMetrics

log = get_logger("contracts.kit.rpc")


_JSON = {"content-type": "application/json"}

INVALID_REQUEST = "invalid_request"
INTERNAL_ERROR = "internal_error"
VALIDATION_ERROR = "validation_error"
# The service is there but cannot do its work now (its database is down or refusing
# connections): the same answer as no service at all, to be tried again shortly.
SERVICE_UNAVAILABLE = "service_unavailable"


class RawReply(bytes):
    """A reply already serialised by the handler (the hottest paths assemble cached JSON)."""


class RpcFailure(Exception):
    """Raised by a handler to answer with an error the caller can act on."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        fields: Sequence[FieldError] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.fields = list(fields)
        self.retry_after = retry_after

    def reply(self) -> ErrorReply:
        """The error reply this failure is answered with."""
        return ErrorReply(error=self.code, detail=self.detail, fields=self.fields, retry_after=self.retry_after)


def field_errors(**problems: str) -> list[FieldError]:
    """`field_errors(email="enter an address")`: field errors in the order given."""
    return [FieldError(field=name, message=message) for name, message in problems.items()]


def invalid(**problems: str) -> RpcFailure:
    """`validation_error` naming each bad field: `raise invalid(email="enter an address")`."""
    detail = "; ".join(f"{name}: {message}" for name, message in problems.items())
    return RpcFailure(VALIDATION_ERROR, detail, fields=field_errors(**problems))


class RpcError(Exception):
    """The service answered with an error (or could not answer: see the subclasses)."""

    def __init__(self, subject: str, reply: ErrorReply) -> None:
        super().__init__(f"{subject}: {reply.error}: {reply.detail}")
        self.subject = subject
        self.reply = reply

    @property
    def code(self) -> str:
        """The error code (`invalid_code`, `too_many_attempts`, …)."""
        return self.reply.error

    @property
    def detail(self) -> str:
        """The service's sentence for people."""
        return self.reply.detail

    @property
    def fields(self) -> list[FieldError]:
        """The fields the error is about, each with its problem."""
        return self.reply.fields

    @property
    def retry_after(self) -> int | None:
        """Seconds after which trying again may succeed."""
        return self.reply.retry_after


class RpcUnavailable(RpcError):
    """No replica of the service is listening (or the caller has no connection)."""

    def __init__(self, subject: str) -> None:
        super().__init__(subject, ErrorReply(error=SERVICE_UNAVAILABLE, detail=f"no service answers {subject}"))


class RpcTimeout(RpcError):
    """The service did not answer within the deadline."""

    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(subject, ErrorReply(error="timeout", detail=f"{subject} did not answer within {timeout:.2f}s"))


# -- the calling side ---------------------------------------------------------------------------


async def call_raw(nc: NatsClient, rpc: Rpc[Req, Any], request: Req, *, timeout: float = 2.0) -> bytes:
    """Ask `rpc`; return the reply's body unparsed, or raise an `RpcError`."""
    if tracing.ENABLED:
        with tracing.requesting(rpc.subject) as headers:
            return await _call_raw(nc, rpc, request, timeout, headers)
    return await _call_raw(nc, rpc, request, timeout, None)


async def _call_raw(
    nc: NatsClient, rpc: Rpc[Req, Any], request: Req, timeout: float, headers: dict[str, str] | None
) -> bytes:
    try:
        msg = await nc.request(rpc.subject, request.model_dump_json().encode(), timeout=timeout, headers=headers)
    except nats.errors.NoRespondersError as exc:
        raise RpcUnavailable(rpc.subject) from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise RpcTimeout(rpc.subject, timeout) from exc
    except nats.errors.Error as exc:
        # Not connected yet, reconnecting, or closing: to the caller that is "not available".
        raise RpcUnavailable(rpc.subject) from exc
    if msg.headers and ERROR_HEADER in msg.headers:
        try:
            err = ErrorReply.model_validate_json(msg.data)
        except ValidationError:
            err = ErrorReply(error=msg.headers[ERROR_HEADER], detail="error reply without detail")
        raise RpcError(rpc.subject, err)
    return msg.data


async def call(nc: NatsClient, rpc: Rpc[Req, Rep], request: Req, *, timeout: float = 2.0) -> Rep:
    """Ask `rpc` and parse the reply as its declared type."""
    return rpc.reply.model_validate_json(await call_raw(nc, rpc, request, timeout=timeout))


# -- the serving side ---------------------------------------------------------------------------

Handler = Callable[[Req], Awaitable[Rep | RawReply]]


class Responder(Generic[Req, Rep]):
    """Serves one `Rpc` in a queue group on nats-py directly.

    FastStream's responder answers about 8,000 requests a second on this kind of machine where
    a raw nats-py one answers 24,000; every request goes this way, so there is one place that
    parses requests and answers errors. Each request runs in a task of its own (a slow answer
    must not hold up the rest), at most `concurrency` at once per replica.
    """

    def __init__(
        self,
        rpc: Rpc[Req, Rep],
        queue: str,
        handler: Handler[Req, Rep],
        *,
        concurrency: int = 64,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.rpc = rpc
        self.queue = queue
        self.handler = handler
        # `portal_rpc_requests_total` and `portal_rpc_duration_seconds` of the serving part.
        self.metrics = metrics
        if metrics is not None:
            metrics.rpc_declared(rpc.subject)
        self._slots = asyncio.Semaphore(concurrency)
        self._sub: Subscription | None = None
        self._nc: NatsClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, nc: NatsClient) -> None:
        """Subscribe in the queue group."""

        async def on_msg(msg: Msg) -> None:
            task = asyncio.create_task(self._answer_traced(msg) if tracing.ENABLED else self._answer(msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._nc = nc
        self._sub = await nc.subscribe(self.rpc.subject, queue=self.queue, cb=on_msg, pending_msgs_limit=65536)

    async def answer(self, data: bytes) -> tuple[bytes, str | None]:
        """The reply body to a request body, and its error code when it is an error."""
        try:
            request = self.rpc.request.model_validate_json(data or b"{}")
        except ValidationError as exc:
            return _error_body(ErrorReply(error=INVALID_REQUEST, detail=describe_error(exc)))
        try:
            async with self._slots:
                reply = await self.handler(request)
        except RpcFailure as failure:
            return _error_body(failure.reply())
        except Exception as exc:
            if is_database_outage(exc):
                log.error("rpc_database_unavailable", subject=self.rpc.subject, error=describe_error(exc))
                detail = f"{self.rpc.subject} cannot reach its database right now"
                return _error_body(ErrorReply(error=SERVICE_UNAVAILABLE, detail=detail, retry_after=5))
            log.exception("rpc_handler_failed", subject=self.rpc.subject, error=describe_error(exc))
            detail = f"{self.rpc.subject} failed: {type(exc).__name__}"
            return _error_body(ErrorReply(error=INTERNAL_ERROR, detail=detail))
        if isinstance(reply, RawReply):
            return bytes(reply), None
        return reply.model_dump_json().encode(), None

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply or self._nc is None:
            return
        started = time.perf_counter()
        body, error = await self.answer(msg.data)
        if self.metrics is not None:
            self.metrics.rpc_answered(self.rpc.subject, error, time.perf_counter() - started)
        # Not msg.respond(): it would echo the request's headers back.
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(msg.reply, body, headers={**_JSON, ERROR_HEADER: error} if error else None)

    async def _answer_traced(self, msg: Msg) -> None:
        # The caller's trace goes on here (and into whatever the handler emits); an error
        # reply marks the span (`_error_body`).
        with tracing.serving(self.rpc.subject, msg.headers):
            await self._answer(msg)

    async def stop(self, *, grace: float = 5.0) -> None:
        """Take no more requests (other replicas of the queue group get them), and let those in
        flight be answered, for at most `grace` seconds."""
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                # Requests NATS sent before it heard of the unsubscription are still answered.
                await asyncio.wait_for(self._sub.drain(), grace)
            self._sub = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)


# PostgreSQL's SQLSTATEs of a lost or refused connection: class 08 (connection exception),
# 57P01-57P05 (shut down, crashed, not accepting connections yet, idle too long) and 53300 (too
# many connections). While connecting, also 55000 (the database does not accept connections),
# 3D000 (it does not exist) and class 28 (refused credentials): the service cannot work either.
_OUTAGE_SQLSTATES = ("08", "57P", "53300")
_CONNECT_SQLSTATES = ("55000", "3D000", "28")


def _sqlstate(err: BaseException | None) -> str | None:
    for _ in range(10):
        if err is None:
            return None
        state = getattr(err, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
        err = err.__cause__ or err.__context__
    return None


def is_database_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database cannot be reached or used right
    now: refused or lost connections, a pool that hands out none in time. Neither the request
    nor the data is at fault, so the same request may succeed shortly."""
    from sqlalchemy import exc as sa  # the services' databases; imported here, not by every caller

    err: BaseException | None = exc
    for _ in range(10):
        if err is None:
            return False
        if isinstance(err, sa.DBAPIError):
            if err.connection_invalidated or isinstance(err, sa.OperationalError | sa.InterfaceError):
                return True
            state = _sqlstate(err.orig)
            if state is not None:
                # No statement: it failed while connecting (or committing).
                connecting = err.statement is None
                return state.startswith(_OUTAGE_SQLSTATES) or (connecting and state.startswith(_CONNECT_SQLSTATES))
            return err.statement is None and not isinstance(err, sa.IntegrityError)
        if isinstance(err, sa.TimeoutError | sa.DisconnectionError):
            return True  # the pool had no connection to give in time
        if isinstance(err, ConnectionError | TimeoutError | socket.gaierror):
            return True  # refused, reset, or no answer while connecting
        state = _sqlstate(err) if hasattr(err, "sqlstate") else None
        if state is not None and state.startswith(_OUTAGE_SQLSTATES):
            return True
        if type(err).__module__.startswith("asyncpg") and type(err).__name__ == "ConnectionDoesNotExistError":
            return True
        err = err.__cause__ or err.__context__
    return False


def _error_body(reply: ErrorReply) -> tuple[bytes, str]:
    if tracing.ENABLED:
        tracing.answered_with(reply.error)
    return reply.model_dump_json().encode(), reply.error
