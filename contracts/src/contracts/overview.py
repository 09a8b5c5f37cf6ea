"""Overview: per-pupil homework, messages and stars, asked for many pupils at once."""

from __future__ import annotations

from pydantic import AwareDatetime, Field

from contracts.base import Message

GET = "rpc.overview.get.v1"
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
    """One pupil's overview (API.md's `/me/children/{id}/overview` minus `partial`)."""

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


class ChangedNotice(Message):
    """These pupils' projections changed."""

    pupil_ids: list[str]
