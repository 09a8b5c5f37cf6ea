"""Asking the services, and turning their error replies into API.md's HTTP errors in one place.

Routes call `ask(state, subject, payload, Reply)` and let an `RpcError` propagate: the
exception handler `handle_rpc_error` answers it. A service that is away or slow is a 503; an
error code listed in `RPC_ERRORS` keeps the service's own sentence as `detail`; any other code
is a 500, logged, because it means the gateway and a service disagree about the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from litestar import Request, Response
from litestar.datastructures import State

from contracts import identity
from contracts.base import Rep, Req, Rpc
from contracts.kit import rpc
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError, RpcTimeout, RpcUnavailable
from gateway.clients.nats import get_nats
from gateway.errors import DEFAULT_DETAILS, ApiError, error_response

log = get_logger("gateway.rpc")

@dataclass(frozen=True)
class RpcErrorMapping:
    """How one service error code is answered over HTTP."""

    status: int
    code: str | None = None  # the API's code; the service's own when None


# Service error code -> HTTP answer. Add a service's codes here, not in each route.
RPC_ERRORS: dict[str, RpcErrorMapping] = {
    identity.E_WEAK_PASSWORD: RpcErrorMapping(422),
    identity.E_INVALID_TOKEN: RpcErrorMapping(400),
    identity.E_INVALID_CREDENTIALS: RpcErrorMapping(401),
    identity.E_NOT_VERIFIED: RpcErrorMapping(403),
    identity.E_TOO_MANY: RpcErrorMapping(429),
    identity.E_INVALID_SESSION: RpcErrorMapping(401, "unauthorized"),
    identity.E_CONFLICT: RpcErrorMapping(409),
    "validation_error": RpcErrorMapping(422),
    # The service could not parse what the gateway sent: the caller's input was out of range.
    "invalid_request": RpcErrorMapping(422, "validation_error"),
    "not_found": RpcErrorMapping(404),
    "invalid_code": RpcErrorMapping(404),
    "no_code": RpcErrorMapping(404),
    "code_full": RpcErrorMapping(409),
    "aup_required": RpcErrorMapping(422),
}

async def ask(
    state: State,
    rpc_: Rpc[Req, Rep],
    payload: Req,
    *,
    timeout: float | None = None,
) -> Rep:
    """Ask a service over the gateway's NATS connection; raises `RpcError` (see `api_error`)."""
    return await rpc.call(get_nats(state), rpc_, payload, timeout=timeout or state.settings.rpc_timeout)


async def ask_raw(state: State, rpc_: Rpc[Req, Any], payload: Req, *, timeout: float | None = None) -> bytes:
    """`ask` without parsing the reply."""
    return await rpc.call_raw(get_nats(state), rpc_, payload, timeout=timeout or state.settings.rpc_timeout)


def api_error(exc: RpcError) -> ApiError:
    """The HTTP error an rpc failure is answered with."""
    if isinstance(exc, RpcUnavailable | RpcTimeout):
        log.warning("rpc_unavailable", subject=exc.subject, error=exc.code)
        return ApiError(503, "service_unavailable", DEFAULT_DETAILS[503], headers={"Retry-After": "5"})
    mapping = RPC_ERRORS.get(exc.code)
    if mapping is None:
        log.error("rpc_unexpected_error", subject=exc.subject, error=exc.code)
        return ApiError(500, "internal_error", DEFAULT_DETAILS[500])
    code = mapping.code or exc.code
    detail = exc.detail or DEFAULT_DETAILS.get(mapping.status, "")
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if mapping.status == 429:
        headers["Retry-After"] = str(exc.retry_after or 60)
    if mapping.status == 422:
        extra["errors"] = [f.model_dump() for f in exc.fields]
    return ApiError(mapping.status, code, detail, headers=headers, extra=extra)


def handle_rpc_error(request: Request, exc: RpcError) -> Response[dict[str, Any]]:
    """Exception handler: an `RpcError` a route let through, answered as `api_error` says."""
    err = api_error(exc)
    return error_response(err.status_code, err.code, err.detail, headers=err.headers, extra=err.fields)


def rpc_exception_handlers() -> Mapping[type[Exception], Any]:
    """The handlers to add to the application's."""
    return {RpcError: handle_rpc_error}
