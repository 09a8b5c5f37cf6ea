"""Overview: per-pupil homework, messages and stars, asked for many pupils at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import AwareDatetime, Field

from contracts.base import Message, Rpc

# Core NATS only (no stream): replicas tell each other which pupils' cached answers changed.
CHANGED_NOTICE = "notice.overview.changed.v1"


class OverviewRequest(Message):
    """The pupils to describe: one round trip for a parent with several children."""

    pupil_ids: list[str] = Field(max_length=100)


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
