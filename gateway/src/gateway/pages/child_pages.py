"""A parent's pages of one child in detail: homework, unread messages and a week's stars
(`/children/<pupil_id>/homework`, `…/messages`, `…/stars`), linked from the child's card. Each
shows what the API route of the same name answers (`gateway.children`)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.response import Template

from contracts.identity import Principal
from contracts.kit.i18n import N_
from gateway import children
from gateway.auth import parents_only
from gateway.clients import Clients
from gateway.errors import not_found
from gateway.pages.common import render

PARENTS_ONLY = [parents_only]


async def _child(clients: Clients, principal: Principal, pupil_id: str) -> dict[str, Any]:
    found = next((c for c in await clients.linking.children(principal.account_id) if c.pupil_id == pupil_id), None)
    if found is None or found.status != "linked":
        raise not_found(N_("That child is not linked to your account."))
    return found.model_dump()


@get(
    "/children/{pupil_id:str}/homework",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    operation_id="page_child_homework",
)
async def homework_page(
    request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal], pupil_id: str
) -> Template:
    """The child's homework: outstanding and overdue first, then what was done lately."""
    child = await _child(clients, principal, pupil_id)
    items = json.loads(await children.homework(request.app.state, principal.account_id, pupil_id))
    return render(request, "pages/child_homework.html", principal=principal, child=child, items=items, area="homework")


@get(
    "/children/{pupil_id:str}/messages",
    include_in_schema=False,
    guards=PARENTS_ONLY,
    operation_id="page_child_messages",
)
async def messages_page(
    request: Request, clients: NamedDependency[Clients], principal: NamedDependency[Principal], pupil_id: str
) -> Template:
    """The child's unread messages, newest first."""
    child = await _child(clients, principal, pupil_id)
    items = json.loads(await children.messages(request.app.state, principal.account_id, pupil_id))
    return render(request, "pages/child_messages.html", principal=principal, child=child, items=items, area="messages")


@get("/children/{pupil_id:str}/stars", include_in_schema=False, guards=PARENTS_ONLY, operation_id="page_child_stars")
async def stars_page(
    request: Request,
    clients: NamedDependency[Clients],
    principal: NamedDependency[Principal],
    pupil_id: str,
    week: str | None = None,
) -> Template:
    """The stars of a week (this week unless `week` names a day of another), with reasons."""
    day = children.parse_week(week)
    child = await _child(clients, principal, pupil_id)
    stars = json.loads(await children.stars(request.app.state, principal.account_id, pupil_id, day))
    start = date.fromisoformat(stars["week_start"])
    return render(
        request,
        "pages/child_stars.html",
        principal=principal,
        child=child,
        stars=stars,
        area="stars",
        previous_week=(start - timedelta(days=7)).isoformat(),
        next_week=(start + timedelta(days=7)).isoformat() if day is not None else None,
    )


ROUTES = [homework_page, messages_page, stars_page]
