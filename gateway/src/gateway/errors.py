"""The error format of every 4xx and 5xx (docs/http-api.md): `{"error": "<snake_case_code>",
"detail": "<sentence>"}`.

Routes raise `ApiError(status, code, detail)`; the handlers here turn it, a service's error
(`RpcError`, answered as `RPC_ERRORS` says), Litestar's own exceptions (unknown path, wrong
method, invalid body) and anything unexpected into that shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.types import ExceptionHandlersMap

from contracts import identity, linking, names
from contracts.kit.logs import get_logger
from contracts.kit.rpc import (
    INVALID_REQUEST,
    SERVICE_UNAVAILABLE,
    VALIDATION_ERROR,
    RpcError,
    RpcTimeout,
    RpcUnavailable,
)

log = get_logger("gateway.errors")

STATUS_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

# Litestar's built-in exceptions carry the bare status phrase ("Not Found") as detail;
# the API promises a human sentence.
DEFAULT_DETAILS: dict[int, str] = {
    400: "The request could not be understood.",
    401: "You need to log in to do this.",
    403: "You are not allowed to do this.",
    404: "Nothing was found at this address.",
    405: "This address does not accept that method.",
    409: "This conflicts with the current state.",
    413: "The request is too large.",
    415: "The request's content type is not supported: send JSON.",
    422: "Some fields are missing or invalid.",
    429: "Too many attempts: please wait and try again.",
    500: "Something went wrong on our side; please try again.",
    503: "The service is not available right now; please try again shortly.",
}


class ApiError(HTTPException):
    """An error answer in the API's format; `extra` adds fields to the body (e.g. `missing`)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail=detail, status_code=status, headers=dict(headers or {}))
        self.code = code
        self.fields = dict(extra or {})


def code_for_status(status: int) -> str:
    """The snake_case error code of an HTTP status (`404` -> `not_found`)."""
    if status in STATUS_CODES:
        return STATUS_CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_").replace("'", "")
    except ValueError:
        return "internal_error" if status >= 500 else "bad_request"


def detail_for_status(status: int) -> str:
    """A default human sentence for a status."""
    if status in DEFAULT_DETAILS:
        return DEFAULT_DETAILS[status]
    try:
        return HTTPStatus(status).phrase + "."
    except ValueError:
        return DEFAULT_DETAILS[500 if status >= 500 else 400]


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    """A JSON error response in the API's format."""
    return Response(
        content={"error": code, "detail": detail, **(extra or {})},
        status_code=status,
        headers=dict(headers or {}),
        media_type=MediaType.JSON,
    )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _route(request: Request) -> str:
    # The route template, not the path: paths may carry link codes, query strings tokens.
    return request.scope.get("path_template") or request.scope.get("path", "")


def not_found(detail: str = DEFAULT_DETAILS[404]) -> ApiError:
    """404 `not_found`, the same for a missing id and one of another tenant."""
    return ApiError(404, "not_found", detail)


MAX_ID_LENGTH = 128  # linking's requests refuse longer ids


def checked_id(value: str) -> str:
    """A path id linking can take; a longer one cannot exist, so it is not found."""
    if not value or len(value) > MAX_ID_LENGTH:
        raise not_found()
    return value


# -- services' errors ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RpcErrorMapping:
    """How one service error code is answered over HTTP."""

    status: int
    code: str | None = None  # the API's code; the service's own when None
    # The API's own words before the service's sentence, where a route says it differently.
    lead: str | None = None


# Service error code -> HTTP answer. Add a service's codes here, not in each route: this is the
# one place where a service's error becomes an HTTP one (the API's and the pages' alike).
RPC_ERRORS: dict[str, RpcErrorMapping] = {
    identity.E_WEAK_PASSWORD: RpcErrorMapping(422),
    identity.E_PASSWORD_TOO_LONG: RpcErrorMapping(422),
    identity.E_INVALID_TOKEN: RpcErrorMapping(400),
    identity.E_INVALID_CREDENTIALS: RpcErrorMapping(401),
    identity.E_NOT_VERIFIED: RpcErrorMapping(403),
    identity.E_TOO_MANY: RpcErrorMapping(429),
    identity.E_INVALID_SESSION: RpcErrorMapping(401, "unauthorized"),
    identity.E_CONFLICT: RpcErrorMapping(409),
    identity.E_FORBIDDEN: RpcErrorMapping(403),
    identity.E_WRONG_PASSWORD: RpcErrorMapping(403),
    identity.E_NOT_A_PARENT: RpcErrorMapping(403, "forbidden"),
    VALIDATION_ERROR: RpcErrorMapping(422),
    # The service could not parse what the gateway sent: the caller's input was out of range.
    INVALID_REQUEST: RpcErrorMapping(422, VALIDATION_ERROR),
    linking.E_NOT_FOUND: RpcErrorMapping(404),
    linking.E_INVALID_CODE: RpcErrorMapping(404),
    linking.E_NO_CODE: RpcErrorMapping(404),
    linking.E_CODE_FULL: RpcErrorMapping(409),
    linking.E_AUP_REQUIRED: RpcErrorMapping(422),
    linking.E_TOO_MANY_INVITATIONS: RpcErrorMapping(409),
    linking.E_ALREADY_ACCEPTED: RpcErrorMapping(409),
    names.E_INVALID_NAME: RpcErrorMapping(422),
}

# (request, code) -> answer, where one request's error is worded apart from the others'.
RPC_ERRORS_BY_REQUEST: dict[tuple[str, str], RpcErrorMapping] = {
    (linking.UPDATE_SCHOOL_SETTINGS.subject, linking.E_VALIDATION): RpcErrorMapping(
        422, lead="Some settings are invalid"
    ),
    (linking.UPDATE_TRUST_SETTINGS.subject, linking.E_VALIDATION): RpcErrorMapping(
        422, lead="Some settings are invalid"
    ),
}

# Without a `retry_after` from the service, a client still learns when to come back.
DEFAULT_RETRY_AFTER = 60
UNAVAILABLE_RETRY_AFTER = 5


def http_error(exc: RpcError) -> ApiError:
    """The HTTP answer to a service's error: its status and code from `RPC_ERRORS`, the
    service's sentence as detail, its `fields` as `errors` (422) and its `retry_after` as
    `Retry-After` (429). A service away, too slow, or unable to reach its database is 503 with
    `Retry-After`; a code not listed, 500 (logged: the gateway and a service disagree about the
    contract)."""
    if isinstance(exc, RpcUnavailable | RpcTimeout) or exc.code == SERVICE_UNAVAILABLE:
        log.warning("rpc_unavailable", subject=exc.subject, error=exc.code)
        retry_after = (
            exc.retry_after if exc.code == SERVICE_UNAVAILABLE and exc.retry_after else UNAVAILABLE_RETRY_AFTER
        )
        return ApiError(503, SERVICE_UNAVAILABLE, DEFAULT_DETAILS[503], headers={"Retry-After": str(retry_after)})
    mapping = RPC_ERRORS_BY_REQUEST.get((exc.subject, exc.code)) or RPC_ERRORS.get(exc.code)
    if mapping is None:
        log.error("rpc_unexpected_error", subject=exc.subject, error=exc.code)
        return ApiError(500, "internal_error", DEFAULT_DETAILS[500])
    detail = exc.detail or DEFAULT_DETAILS.get(mapping.status, "")
    if mapping.lead is not None:
        detail = f"{mapping.lead}: {exc.detail}." if exc.detail else f"{mapping.lead}."
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if mapping.status == 429:
        headers["Retry-After"] = str(exc.retry_after or DEFAULT_RETRY_AFTER)
    if mapping.status == 422:
        extra["errors"] = [f.model_dump() for f in exc.fields]
    return ApiError(mapping.status, mapping.code or exc.code, detail, headers=headers, extra=extra)


def handle_rpc_error(request: Request, exc: RpcError) -> Response[dict[str, Any]]:
    """A service's error a route let through, answered as `http_error` says."""
    err = http_error(exc)
    return error_response(err.status_code, err.code, err.detail, headers=err.headers, extra=err.fields)


# -- handlers ------------------------------------------------------------------------------------


def handle_api_error(request: Request, exc: ApiError) -> Response[dict[str, Any]]:
    """`ApiError` -> its own status, code and detail (raised on purpose: the access log is enough)."""
    return error_response(exc.status_code, exc.code, exc.detail, headers=exc.headers, extra=exc.fields)


def handle_http_exception(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    """Litestar's own exceptions (unknown path, wrong method, bad JSON...) in the API's format."""
    status = exc.status_code
    if status >= 500:
        return handle_unexpected(request, exc)
    if isinstance(exc.__cause__, SerializationException):
        detail = "The request body is not valid JSON."
    elif not exc.detail or exc.detail == _phrase(status):
        detail = detail_for_status(status)
    else:
        detail = exc.detail
    return error_response(status, code_for_status(status), detail, headers=exc.headers)


_MSGSPEC_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_MISSING_PARAMETER = re.compile(r"Missing required (\w+) parameter '([^']+)'")


def _field_error(item: Mapping[str, Any]) -> dict[str, str]:
    field = item.get("key")
    if field is None and item.get("loc"):  # pydantic's own error shape (DTOs)
        field = ".".join(str(part) for part in item["loc"])
    field = str(field or "data")
    message = str(item.get("message") or item.get("msg") or "Invalid value")
    # msgspec reports a missing field against the whole body ("data"), Litestar a missing
    # body as the KeyError "'data'"; name the field, and call the body "body".
    if missing := _MSGSPEC_MISSING.search(message):
        field, message = (f"{field}.{missing[1]}" if field != "data" else missing[1]), "Field required"
    elif message == f"'{field}'":
        message = "Field required"
    if field == "data":
        field = "body"
        if message == "Field required":
            message = "A JSON body is required"
    elif field.startswith("data."):
        field = field[len("data.") :]
    return {"field": field, "message": message}


def handle_validation_error(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    """A malformed or missing field: 422 `validation_error`, naming each field."""
    errors: list[dict[str, str]] = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, Mapping):
                errors.append(_field_error(item))
    if errors:
        listed = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        detail = f"Some fields are missing or invalid: {listed}."
    else:
        # Litestar appends "for path /p?query" to some messages: the query may carry a token.
        detail = (exc.detail or "").split(" for path ", 1)[0].strip() or DEFAULT_DETAILS[422]
        if not detail.endswith("."):
            detail += "."
        if missing := _MISSING_PARAMETER.search(detail):
            errors.append({"field": missing[2], "message": f"Required {missing[1]} parameter"})
    return error_response(422, "validation_error", detail, extra={"errors": errors})


def handle_unexpected(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    """Anything unhandled: logged with its traceback, answered 500 `internal_error` without one."""
    status = exc.status_code if isinstance(exc, HTTPException) and exc.status_code >= 500 else 500
    log.error(
        "unhandled_exception",
        method=request.method,
        route=_route(request),
        error=type(exc).__name__,
        exc_info=exc,
    )
    return error_response(status, code_for_status(status), detail_for_status(status))


def exception_handlers() -> ExceptionHandlersMap:
    """The handlers to give `Litestar(exception_handlers=...)`; the most specific class wins."""
    return {
        ApiError: handle_api_error,
        RpcError: handle_rpc_error,
        ValidationException: handle_validation_error,
        HTTPException: handle_http_exception,
        Exception: handle_unexpected,
    }
