"""A parent's view of one child in detail: homework, unread messages and a week's stars
(`/me/children/{id}/homework`, `…/messages`, `…/stars`). Each is a read of overview's
projections on the overview's path: the answer remembered per replica and dropped on overview's
change notices, concurrent requests sharing one request (`gateway.caches.detail`)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from litestar import Request, Response, get
from litestar.openapi import ResponseSpec
from litestar.params import Parameter
from msgspec import Struct

from gateway import children
from gateway.api.parents import parent_caller
from gateway.auth import SECURITY
from gateway.openapi import error_responses
from gateway.responses import JsonBytes

TAGS = ["parents"]


class HomeworkItem(Struct):
    """A piece of homework: outstanding, overdue (its due time has passed) or done."""

    homework_id: str
    title: str
    description: str | None
    due_at: datetime
    status: Literal["outstanding", "overdue", "done"]


class UnreadMessage(Struct):
    """An unread message to the child; the platform may not have said who sent it, its subject
    or when."""

    message_id: str
    from_name: str | None
    subject: str | None
    sent_at: datetime | None


class StarAward(Struct):
    """Stars awarded, why and when."""

    award_id: str
    stars: int
    reason: str
    at: datetime


class StarsWeek(Struct):
    """A week's stars, Monday to Sunday in the school's timezone."""

    week_start: date
    total: int
    awards: list[StarAward]


@get(
    "/me/children/{pupil_id:str}/homework",
    tags=TAGS,
    summary="One child's homework",
    operation_id="get_my_child_homework",
    security=SECURITY,
    responses={
        200: ResponseSpec(
            list[HomeworkItem],
            description="Outstanding and overdue homework by due date, then what was done in the last 14 days.",
            generate_examples=False,
        ),
        **error_responses(401, 404, 503),
    },
)
async def child_homework(request: Request, pupil_id: str) -> Response[bytes]:
    """The child's homework, each with its status."""
    principal = await parent_caller(request)
    data = await children.homework(request.app.state, principal.account_id, pupil_id)
    return JsonBytes(data)


@get(
    "/me/children/{pupil_id:str}/messages",
    tags=TAGS,
    summary="One child's unread messages",
    operation_id="get_my_child_messages",
    security=SECURITY,
    responses={
        200: ResponseSpec(list[UnreadMessage], description="Unread messages, newest first.", generate_examples=False),
        **error_responses(401, 404, 503),
    },
)
async def child_messages(request: Request, pupil_id: str) -> Response[bytes]:
    """The child's unread messages."""
    principal = await parent_caller(request)
    data = await children.messages(request.app.state, principal.account_id, pupil_id)
    return JsonBytes(data)


@get(
    "/me/children/{pupil_id:str}/stars",
    tags=TAGS,
    summary="One child's stars of a week",
    operation_id="get_my_child_stars",
    security=SECURITY,
    responses={
        200: ResponseSpec(StarsWeek, description="The week's stars, with reasons.", generate_examples=False),
        **error_responses(401, 404, 422, 503),
    },
)
async def child_stars(
    request: Request,
    pupil_id: str,
    week: Annotated[
        str | None, Parameter(query="week", description="Any day of the week, YYYY-MM-DD; default this week.")
    ] = None,
) -> Response[bytes]:
    """The stars of the week holding `week`, each award with its reason."""
    principal = await parent_caller(request)
    day = children.parse_week(week)
    data = await children.stars(request.app.state, principal.account_id, pupil_id, day)
    return JsonBytes(data)


ROUTES = [child_homework, child_messages, child_stars]
