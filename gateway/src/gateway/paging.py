"""Pages of long lists (`/classes`, a school's audit): `limit` (default 100, at most 500) and an
opaque `cursor`; the next page's address is in an RFC 8288 `Link: <…>; rel="next"` header and
the body stays a plain array."""

from __future__ import annotations

from urllib.parse import urlencode

from litestar import Request

from gateway.errors import ApiError

DEFAULT_LIMIT = 100
MAX_LIMIT = 500


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(
        422,
        "validation_error",
        f"Some fields are missing or invalid: {field}: {message}.",
        extra={"errors": [{"field": field, "message": message}]},
    )


def limit_of(value: int | None) -> int:
    """The page size asked for, checked."""
    if value is None:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        raise _invalid("limit", f"between 1 and {MAX_LIMIT}")
    return value


def position_of(cursor: str | None) -> int:
    """Where a page starts, from the cursor a `Link` header gave (0: the first page)."""
    if cursor is None or cursor == "":
        return 0
    if not cursor.isdigit() or len(cursor) > 18:
        raise _invalid("cursor", "use the cursor of a Link header as it is")
    return int(cursor)


def next_link(request: Request, position: int | None) -> dict[str, str]:
    """The `Link` header of the next page (none after the last)."""
    if position is None:
        return {}
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    query.append(("cursor", str(position)))
    return {"Link": f'<{request.url.path}?{urlencode(query)}>; rel="next"'}
