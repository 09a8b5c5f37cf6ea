"""The web pages (docs/http-api.md, "Web pages"), for parents and staff, served at the root.

`router(settings)` is what the application mounts; `register_filters(engine)` adds the
template filters the pages use. Pages answer errors as HTML pages (a missing session as a
redirect to sign in), are never stored by browsers or proxies, and need no JavaScript.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Request, Response, Router, get
from litestar.di import NamedDependency
from litestar.plugins.jinja import JinjaTemplateEngine

from contracts.identity import Principal
from contracts.kit import i18n
from gateway.clients import Clients
from gateway.i18n import LOCALE_DIR
from gateway.pages import (
    account_pages,
    auth_pages,
    child_pages,
    go_pages,
    parent_pages,
    staff_pages,
    trust_pages,
    unsubscribe_pages,
)
from gateway.pages.common import exception_handlers, redirect
from gateway.settings import GatewaySettings


@get("/", include_in_schema=False, operation_id="page_home")
async def home(
    request: Request,
    clients: NamedDependency[Clients],
    maybe_principal: NamedDependency[Principal | None],
    child: str | None = None,
) -> Response[Any]:
    """Home: a parent's children, or a member of staff's classes; sign in first."""
    if maybe_principal is None:
        return redirect("/login")
    if maybe_principal.role == "parent":
        return await parent_pages.parent_home(request, clients, maybe_principal, child)
    return await staff_pages.staff_home(request, clients.linking.staff(maybe_principal), maybe_principal)


def _parse(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value


def before(value: datetime | str | None, other: datetime | str | None) -> bool:
    """Whether `value` is earlier than `other` (homework due before the numbers' time is overdue)."""
    a, b = _parse(value), _parse(other)
    return a is not None and b is not None and a < b


def register_filters(engine: JinjaTemplateEngine) -> None:
    """The filters the page templates use, and translation into each page's `lang`
    (dates by Babel in that language)."""
    i18n.install(engine.engine, LOCALE_DIR)
    engine.engine.policies["ext.i18n.trimmed"] = True
    engine.engine.filters.update(i18n.date_filters())
    engine.engine.filters["before"] = before


def router(settings: GatewaySettings) -> Router:
    """Every page, with its error pages and headers."""

    async def page_headers(response: Response) -> Response:
        # Pages carry children's names and one-time tokens: nothing may keep a copy.
        response.headers["Cache-Control"] = "no-store"
        return response

    return Router(
        path="/",
        route_handlers=[
            home,
            *auth_pages.ROUTES,
            *parent_pages.ROUTES,
            *child_pages.ROUTES,
            *go_pages.ROUTES,
            *account_pages.ROUTES,
            *staff_pages.ROUTES,
            *trust_pages.ROUTES,
            *unsubscribe_pages.ROUTES,
        ],
        exception_handlers=exception_handlers(),
        after_request=page_headers,
        include_in_schema=False,
    )
