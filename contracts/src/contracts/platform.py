"""Events of the learning platform around us: the integration contract (docs/events.md).

The platform (or `portal roster import`, or the demo publisher) publishes them under
`platform.`; the portal only consumes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from contracts.base import Event, Message
from contracts.names import PersonName

Id = str  # platform ids are opaque strings

SCHOOL_UPSERTED = "platform.roster.school.upserted.v1"
CLASS_UPSERTED = "platform.roster.class.upserted.v1"
CLASS_REMOVED = "platform.roster.class.removed.v1"
PUPIL_UPSERTED = "platform.roster.pupil.upserted.v1"
PUPIL_LEFT = "platform.roster.pupil.left.v1"
STAFF_UPSERTED = "platform.roster.staff.upserted.v1"
STAFF_LEFT = "platform.roster.staff.left.v1"
HOMEWORK_ASSIGNED = "platform.homework.assigned.v1"
HOMEWORK_COMPLETED = "platform.homework.completed.v1"
HOMEWORK_WITHDRAWN = "platform.homework.withdrawn.v1"
MESSAGE_DELIVERED = "platform.message.delivered.v1"
MESSAGE_READ = "platform.message.read.v1"
STARS_AWARDED = "platform.stars.awarded.v1"

ROSTER_ALL = "platform.roster.>"
STAFF_ALL = "platform.roster.staff.>"
HOMEWORK_ALL = "platform.homework.>"
MESSAGE_ALL = "platform.message.>"
STARS_ALL = "platform.stars.>"


class SchoolUpserted(Event):
    """A school was created or changed."""

    trust_id: Id = Field(min_length=1)
    school_id: Id = Field(min_length=1)
    name: str = Field(min_length=1)
    timezone: str = Field(min_length=1, description="IANA zone, e.g. Europe/London")
    trust_name: str | None = Field(default=None, description="Optional: the trust's display name")


class ClassUpserted(Event):
    """A class was created or changed."""

    school_id: Id = Field(min_length=1)
    class_id: Id = Field(min_length=1)
    name: str = Field(min_length=1)


class ClassRemoved(Event):
    """A class no longer exists (a `--full` roster import without it): its pupils stay at the school."""

    school_id: Id = Field(min_length=1)
    class_id: Id = Field(min_length=1)


class RosterContact(Message):
    """One of the school's records of who cares for a pupil: an address and how they are related."""

    email: str = Field(min_length=3, max_length=254)
    relationship: str = Field(default="", max_length=100)


class PupilUpserted(Event):
    """A pupil joined or changed; `class_ids` is the full set of the pupil's classes.

    `contacts` is the full set of the school's contacts for the pupil (at most 2); absent (null)
    when the roster says nothing about contacts, which leaves those linking holds as they are.
    """

    school_id: Id = Field(min_length=1)
    pupil_id: Id = Field(min_length=1)
    first_name: PersonName
    last_name: PersonName
    class_ids: list[Id] = Field(default_factory=list)
    contacts: list[RosterContact] | None = Field(default=None, max_length=2)


class PupilLeft(Event):
    """A pupil left the school: every parent's link to the pupil ends."""

    pupil_id: Id = Field(min_length=1)


StaffRole = Literal["teacher", "school_admin", "trust_admin"]


class StaffUpserted(Event):
    """A member of staff was created or changed: bound to a school, or to a trust (trust_admin)."""

    school_id: Id | None = None
    trust_id: Id | None = None
    staff_id: Id = Field(min_length=1)
    email: str = Field(min_length=3, max_length=254)
    name: PersonName
    role: StaffRole

    @model_validator(mode="after")
    def _scope(self) -> StaffUpserted:
        if self.role == "trust_admin" and not self.trust_id:
            raise ValueError("a trust_admin needs trust_id")
        if self.role != "trust_admin" and not self.school_id:
            raise ValueError("a teacher or school_admin needs school_id")
        return self


class StaffLeft(Event):
    """A member of staff left: their account is disabled (their sessions end, they cannot sign in)
    until a later `platform.roster.staff.upserted.v1` names them again."""

    staff_id: Id = Field(min_length=1)


class HomeworkAssigned(Event):
    """Homework was set for some pupils."""

    homework_id: Id = Field(min_length=1)
    school_id: Id = Field(min_length=1)
    pupil_ids: list[Id]
    title: str
    due_at: AwareDatetime
    description: str | None = Field(default=None, max_length=10_000, description="Optional: what the homework asks")


class HomeworkCompleted(Event):
    """A pupil completed (handed in) a piece of homework."""

    homework_id: Id = Field(min_length=1)
    pupil_id: Id = Field(min_length=1)


class HomeworkWithdrawn(Event):
    """A piece of homework was withdrawn for everyone."""

    homework_id: Id = Field(min_length=1)


class MessageDelivered(Event):
    """A message reached a pupil's inbox."""

    message_id: Id = Field(min_length=1)
    pupil_id: Id = Field(min_length=1)
    from_name: str | None = Field(default=None, max_length=200, description="Optional: who sent it")
    subject: str | None = Field(default=None, max_length=500, description="Optional: its subject line")
    sent_at: AwareDatetime | None = Field(default=None, description="Optional: when it was sent")


class MessageRead(Event):
    """A pupil read a message."""

    message_id: Id = Field(min_length=1)
    pupil_id: Id = Field(min_length=1)


class StarsAwarded(Event):
    """Stars were awarded to a pupil."""

    award_id: Id = Field(min_length=1)
    pupil_id: Id = Field(min_length=1)
    stars: int = Field(ge=0)
    reason: str = ""


SCHEMAS: dict[str, type[Event]] = {
    SCHOOL_UPSERTED: SchoolUpserted,
    CLASS_UPSERTED: ClassUpserted,
    CLASS_REMOVED: ClassRemoved,
    PUPIL_UPSERTED: PupilUpserted,
    PUPIL_LEFT: PupilLeft,
    STAFF_UPSERTED: StaffUpserted,
    STAFF_LEFT: StaffLeft,
    HOMEWORK_ASSIGNED: HomeworkAssigned,
    HOMEWORK_COMPLETED: HomeworkCompleted,
    HOMEWORK_WITHDRAWN: HomeworkWithdrawn,
    MESSAGE_DELIVERED: MessageDelivered,
    MESSAGE_READ: MessageRead,
    STARS_AWARDED: StarsAwarded,
}
