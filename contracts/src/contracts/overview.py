"""Overview: per-pupil homework, messages and stars, asked for many pupils at once."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, Field

from contracts.base import Message, Rpc

# Core NATS only (no stream): replicas tell each other which pupils' cached answers changed.
CHANGED_NOTICE = "notice.overview.changed.v1"


MAX_PUPILS = 100  # of one `OverviewRequest`


class OverviewRequest(Message):
    """The pupils to describe: one round trip for a parent with several children, or for the
    children of the parents a gateway serves at one moment."""

    pupil_ids: list[str] = Field(max_length=MAX_PUPILS)


class DueItem(Message):
    """A piece of outstanding homework."""

    title: str
    due_at: AwareDatetime


class Links(Message):
    """Where the buttons lead, into the learning platform."""

    homework: str
    files: str
    messages: str


class ChildOverview(Message):
    """One pupil's overview, as `GET /api/v1/me/children/{id}/overview` answers it (docs/http-api.md)."""

    pupil_id: str
    outstanding_homework: int
    unread_messages: int
    stars_this_week: int
    next_due: list[DueItem]
    links: Links
    as_of: AwareDatetime
    partial: bool = Field(default=False, description="True when the gateway answers without the overview service")


class OverviewReply(Message):
    """Every requested pupil, in the order asked."""

    children: list[ChildOverview]


GET: Rpc[OverviewRequest, OverviewReply] = Rpc(
    "rpc.overview.get.v1",
    OverviewRequest,
    OverviewReply,
    title="overview",
    description="Homework, messages and stars of many pupils at once.",
)


class ChangedNotice(Message):
    """These pupils' projections changed."""

    pupil_ids: list[str]


# Where in a UTC week (seconds after Monday 00:00 UTC) some school's week can begin: Monday
# 00:00 local under every UTC offset in use, from +14:00 (Sunday 10:00 UTC) to -12:00 (Monday
# 12:00 UTC), and every offset is a whole number of quarter hours.
_WEEK = 7 * 24 * 3600
_TURNS_FROM = _WEEK - 14 * 3600
_TURNS_UNTIL = 12 * 3600
_QUARTER = 15 * 60


def next_week_turn(now: datetime) -> datetime:
    """The first instant after `now` at which some school's week may begin.

    "Stars this week" changes at that instant without any event. A cache that does not know the
    pupil's timezone keeps an overview no later than this: during the day and a half around
    Monday that is the next quarter hour, otherwise next Sunday 10:00 UTC.
    """
    now = now.astimezone(UTC)
    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    t = (now - monday).total_seconds()
    if _TURNS_UNTIL <= t < _TURNS_FROM:
        return monday + timedelta(seconds=_TURNS_FROM)
    return monday + timedelta(seconds=(t // _QUARTER + 1) * _QUARTER)


# -- one child in detail: homework, messages, stars, and where the handoff leads ----------------

HomeworkStatus = Literal["outstanding", "overdue", "done"]


class ChildRequest(Message):
    """One pupil (the gateway has checked the caller may see them)."""

    pupil_id: str = Field(min_length=1, max_length=128)


class StarsRequest(ChildRequest):
    """One pupil's stars of the week holding `week` (any day of it; default this week)."""

    # Bounded so that the week's instants exist in every timezone.
    week: date | None = Field(default=None, ge=date(1900, 1, 1), le=date(9000, 12, 31))


class HomeworkItem(Message):
    """A piece of homework as the parent sees it."""

    homework_id: str
    title: str
    description: str | None = None
    due_at: AwareDatetime
    status: HomeworkStatus


class HomeworkReply(Message):
    """Outstanding and overdue homework by due date, then what was done in the last 14 days."""

    items: list[HomeworkItem]


class MessageItem(Message):
    """An unread message to the pupil (what the platform told us of it)."""

    message_id: str
    from_name: str | None = None
    subject: str | None = None
    sent_at: AwareDatetime | None = None


class MessagesReply(Message):
    """Unread messages, newest first."""

    items: list[MessageItem]


class StarAwardItem(Message):
    """Stars awarded, why and when."""

    award_id: str
    stars: int
    reason: str
    at: AwareDatetime


class StarsWeek(Message):
    """A week's stars (the week of the school's own timezone, from Monday)."""

    week_start: date
    total: int
    awards: list[StarAwardItem]


class HandoffTarget(Message):
    """Where the pupil's school sends each area, `{pupil_id}` filled in and `{token}` left for
    the gateway's signed token."""

    pupil_id: str
    school_id: str | None
    homework: str
    files: str
    messages: str


HOMEWORK: Rpc[ChildRequest, HomeworkReply] = Rpc(
    "rpc.overview.homework.v1",
    ChildRequest,
    HomeworkReply,
    title="homework",
    description="`GET /me/children/{id}/homework`: one pupil's homework, outstanding first.",
)
MESSAGES: Rpc[ChildRequest, MessagesReply] = Rpc(
    "rpc.overview.messages.v1",
    ChildRequest,
    MessagesReply,
    title="messages",
    description="`GET /me/children/{id}/messages`: one pupil's unread messages, newest first.",
)
STARS: Rpc[StarsRequest, StarsWeek] = Rpc(
    "rpc.overview.stars.v1",
    StarsRequest,
    StarsWeek,
    title="stars",
    description="`GET /me/children/{id}/stars`: one pupil's stars of a week, with reasons.",
)
TARGET: Rpc[ChildRequest, HandoffTarget] = Rpc(
    "rpc.overview.target.v1",
    ChildRequest,
    HandoffTarget,
    title="handoff target",
    description="`GET /go/{id}/{area}`: the pupil's school and its link templates.",
)


# -- the digest ----------------------------------------------------------------------------------


# An email lists this many pieces of homework or messages per child at most, then "and N more".
DIGEST_ITEMS = 20


class DigestRequest(Message):
    """The pupils of a batch of digests, composed as at `at` from the projections as they are."""

    pupil_ids: list[str] = Field(max_length=500)
    at: AwareDatetime


class ChildDigest(Message):
    """One pupil's part of a digest: homework not done (by due date, `overdue` when due before
    `at`), unread messages (newest first), the stars of the week holding `at` in the school's
    timezone, and the portal's links."""

    pupil_id: str
    homework: list[HomeworkItem] = Field(description=f"At most {DIGEST_ITEMS}, soonest due first")
    homework_total: int
    messages: list[MessageItem] = Field(description=f"At most {DIGEST_ITEMS}, newest first")
    messages_total: int
    stars: StarsWeek
    links: Links


class DigestReply(Message):
    """Every requested pupil, in the order asked."""

    children: list[ChildDigest]


DIGEST: Rpc[DigestRequest, DigestReply] = Rpc(
    "rpc.overview.digest.v1",
    DigestRequest,
    DigestReply,
    title="digest",
    description="The digest's content of many pupils at once: homework outstanding, unread messages, the week's "
    "stars with reasons, and the links.",
)
