"""The OpenAPI document at `/schema/openapi.json`, with errors documented as they are answered.

Litestar documents every error as `{status_code, detail, extra}` and a malformed request as a
400; the gateway answers `{error, detail}` (see `gateway.errors`) and 422 for a bad field. The
document is corrected as it is rendered, so routes need not repeat it; `error_responses()`
documents the errors a route raises on purpose, `content_types()` an answer that is not JSON.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
    SecurityScheme,
)
from msgspec import Struct

from gateway.errors import DEFAULT_DETAILS, code_for_status


class ErrorBody(Struct):
    """Every 4xx and 5xx answer; some add fields."""

    error: str
    detail: str


class FieldError(Struct):
    """One invalid or missing field."""

    field: str
    message: str


class ValidationErrorBody(Struct):
    """A 422 answer: which fields are missing or invalid."""

    error: str
    detail: str
    errors: list[FieldError]


_SCHEMAS: dict[str, dict[str, Any]] = {
    "ErrorBody": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
        "description": "Every 4xx and 5xx answer; some add fields.",
    },
    "FieldError": {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
    },
    "ValidationErrorBody": {
        "type": "object",
        "required": ["error", "detail", "errors"],
        "properties": {
            "error": {"type": "string", "const": "validation_error"},
            "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
        },
        "description": "A field is missing or invalid.",
    },
}


# Bodies that are not JSON: a text document (HTML, SVG), or bytes (PNG, PDF).
TEXT = Schema(type=OpenAPIType.STRING)
BINARY = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)


def content_types(status: int, content: dict[str, Schema]) -> type[Operation]:
    """`operation_class=` for a route answering `status` in the given content types (a QR sheet
    as HTML or PDF, an image), which Litestar would document as one JSON-less string."""

    @dataclass
    class DocumentOperation(Operation):
        def __post_init__(self) -> None:
            response = (self.responses or {}).get(str(status))
            if isinstance(response, OpenAPIResponse):
                response.content = {media: OpenAPIMediaType(schema=schema) for media, schema in content.items()}

    return DocumentOperation


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """`responses=` for a route handler: the errors it answers, in the API's format."""
    return {
        status: ResponseSpec(
            data_container=ValidationErrorBody if status == 422 else ErrorBody,
            description=DEFAULT_DETAILS.get(status, code_for_status(status)),
            generate_examples=False,
        )
        for status in statuses
    }


def _is_litestar_error(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    variants = schema.get("oneOf", [schema])
    return any({"status_code", "detail"} <= set(v.get("properties", {})) for v in variants)


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_UNSAFE = frozenset({"post", "put", "patch", "delete"})
CROSS_ORIGIN = "A browser sent this change from a page of another site (`cross_origin`)."
NOT_JSON = "The body is not `Content-Type: application/json` (`unsupported_media_type`)."


def with_error_format(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of `document` whose error responses have the gateway's real shape, with the
    browser checks' answers (`gateway.edge.BrowserChecks`) on every route they apply to."""
    doc = copy.deepcopy(document)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in _SCHEMAS.items():
        schemas.setdefault(name, schema)
    for path_item in doc.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if method in _UNSAFE:
                responses.setdefault("403", _json("ErrorBody", CROSS_ORIGIN))
            if "requestBody" in operation:
                responses.setdefault("415", _json("ErrorBody", NOT_JSON))
            for status, response in list(responses.items()):
                if not _is_litestar_error(response):
                    continue
                if status == "400":
                    # Litestar's automatic "validation failed": a bad field is a 422 here,
                    # a body that is not JSON at all still a 400.
                    responses.setdefault("422", _json("ValidationErrorBody", DEFAULT_DETAILS[422]))
                    responses[status] = _json("ErrorBody", "The request body is not valid JSON.")
                else:
                    responses[status] = _json("ErrorBody", response.get("description") or code_for_status(int(status)))
    return doc


class GatewayJsonRenderPlugin(JsonRenderPlugin):
    """Serves `/schema/openapi.json` with the error format corrected."""

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        """The OpenAPI document as JSON."""
        return self.render_json(request, with_error_format(openapi_schema))


def openapi_config(version: str, *, session_cookie: str = "portal_session") -> OpenAPIConfig:
    """OpenAPI at `/schema/openapi.json` only: the UI plugins load scripts from CDNs, which
    the Content-Security-Policy forbids."""
    return OpenAPIConfig(
        title="Parent Portal API",
        version=version,
        description=(
            'The gateway\'s HTTP API. Errors are JSON `{"error": "<code>", "detail": "<sentence>"}`. '
            "Authenticate with `Authorization: Bearer <access_token>` from `POST /api/v1/auth/login`, or with "
            "the session cookie it sets; a request with the cookie that changes something (POST, PUT, PATCH, "
            "DELETE) must also send the login's `csrf_token` as the `X-CSRF-Token` header (403 `csrf_failed`). "
            "A body must be `Content-Type: application/json` (415 `unsupported_media_type`), and a change a "
            "browser sends from a page of another site is refused (403 `cross_origin`)."
        ),
        path="/schema",
        render_plugins=[GatewayJsonRenderPlugin()],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", description="The `access_token` of a login."),
                "session_cookie": SecurityScheme(
                    type="apiKey",
                    name=session_cookie,
                    security_scheme_in="cookie",
                    description="The session cookie set by login; unsafe requests also need `X-CSRF-Token`.",
                ),
            }
        ),
    )
