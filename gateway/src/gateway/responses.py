"""`JsonBytes`: an answer whose JSON is already encoded (overview's own JSON passed through, or
msgspec's), sent as it is.

The hottest routes answer bytes they already hold; Litestar's `Response` would build a header
set, a cookie list and an `ASGIResponse` for each, a tenth of the overview's time a request.
The routes still declare their models (`responses=` with `ResponseSpec`) for the OpenAPI
document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from litestar import Response

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures import Cookie
    from litestar.enums import MediaType
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Scope, Send, TypeEncodersMap

JSON = "application/json"
_CONTENT_TYPE = (b"content-type", JSON.encode())
# Bytes need no encoder; never written to.
_NO_ENCODERS: dict[Any, Any] = {}


class _Sent:
    """The ASGI answer: the start (content type and length, as Litestar's own) and the body."""

    __slots__ = ("body", "status")

    def __init__(self, body: bytes, status: int) -> None:
        self.body = body
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [_CONTENT_TYPE, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


class JsonBytes(Response[bytes]):
    """`content`, JSON already encoded, answered with `status_code` as `application/json`."""

    def __init__(self, content: bytes, status_code: int = 200) -> None:
        # Response's own constructor (normalising headers, cookies, media type) is not needed
        # for bytes with no headers of their own; its fields are set for anything that reads them.
        self.content = content
        self.status_code = status_code
        self.media_type = JSON
        self.background = None
        self.headers = {}
        self.cookies = []
        self.encoding = "utf-8"
        self.response_type_encoders = _NO_ENCODERS

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request,
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        # Headers, cookies or a task a route or its router added: Litestar's way, which has them.
        if background is not None or cookies or encoded_headers or headers or is_head_response:
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                encoded_headers=encoded_headers,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
            )
        # Only ever awaited as an ASGI app (`HTTPRoute.handle`).
        return _Sent(self.content, self.status_code or status_code or 200)  # type: ignore[return-value]
