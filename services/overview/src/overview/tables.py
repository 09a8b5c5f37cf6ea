"""The overview service's own tables: projections of platform events. No other part reads them.

Every fact is keyed by its own natural id (homework, message, award), so the same fact under two
event ids, twice, or out of order lands in the same row; flags only ever turn on.
"""

from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import Column, Index, Table
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from contracts.kit.db import UtcDateTime

# A registry of its own keeps these tables out of other services' metadata when several
# services are imported into one process (tests, the local runner).
_registry = registry()


class Base(SQLModel, registry=_registry):
    """Base of every overview table."""

    if TYPE_CHECKING:
        # SQLAlchemy sets it on every table model; SQLModel does not declare it.
        __table__: ClassVar[Table]


metadata = _registry.metadata


def _ts(nullable: bool = True) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


class School(Base, table=True):
    """A school's timezone (for "this week") and link templates."""

    __tablename__ = "schools"

    school_id: str = Field(primary_key=True, max_length=128)
    timezone: str | None = Field(default=None, max_length=64)
    roster_at: datetime | None = Field(default=None, sa_column=_ts())
    homework_url: str | None = Field(default=None, max_length=500)
    files_url: str | None = Field(default=None, max_length=500)
    messages_url: str | None = Field(default=None, max_length=500)
    settings_at: datetime | None = Field(default=None, sa_column=_ts())


class Pupil(Base, table=True):
    """Which school a pupil is at; `left_at` while the pupil has left (their projections are
    erased `PORTAL_RETENTION_LEAVER_DAYS` later)."""

    __tablename__ = "pupils"

    pupil_id: str = Field(primary_key=True, max_length=128)
    school_id: str = Field(max_length=128)
    roster_at: datetime | None = Field(default=None, sa_column=_ts())
    left_at: datetime | None = Field(default=None, sa_column=_ts())


class Homework(Base, table=True):
    """A piece of homework; known from its assignment, or only as withdrawn so far."""

    __tablename__ = "homework"

    homework_id: str = Field(primary_key=True, max_length=128)
    school_id: str | None = Field(default=None, max_length=128)
    title: str | None = Field(default=None, max_length=500)
    due_at: datetime | None = Field(default=None, sa_column=_ts())
    withdrawn: bool = False
    description: str | None = Field(default=None, max_length=10_000)
    # When the assignment that said what it is (title, due date, description) happened: an older
    # one arriving later (a redelivery) leaves it as it is.
    assigned_at: datetime | None = Field(default=None, sa_column=_ts())


class HomeworkPupil(Base, table=True):
    """A pupil's part in a piece of homework: assigned, completed (in either order)."""

    __tablename__ = "homework_pupils"
    __table_args__ = (Index("ix_homework_pupils_pupil", "pupil_id", "assigned", "completed"),)

    homework_id: str = Field(primary_key=True, max_length=128)
    pupil_id: str = Field(primary_key=True, max_length=128)
    assigned: bool = False
    completed: bool = False
    # The earliest completion heard of: "done in the last 14 days" counts from it.
    completed_at: datetime | None = Field(default=None, sa_column=_ts())


class PupilMessage(Base, table=True):
    """A message to a pupil: delivered, read (in either order)."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_pupil", "pupil_id", "delivered", "read"),)

    message_id: str = Field(primary_key=True, max_length=128)
    pupil_id: str = Field(primary_key=True, max_length=128)
    delivered: bool = False
    read: bool = False
    from_name: str | None = Field(default=None, max_length=200)
    subject: str | None = Field(default=None, max_length=500)
    sent_at: datetime | None = Field(default=None, sa_column=_ts())


class StarAward(Base, table=True):
    """Stars awarded to a pupil, when and why."""

    __tablename__ = "star_awards"
    __table_args__ = (Index("ix_star_awards_pupil_at", "pupil_id", "awarded_at"),)

    award_id: str = Field(primary_key=True, max_length=128)
    pupil_id: str = Field(max_length=128)
    stars: int
    awarded_at: datetime = Field(sa_column=_ts(False))
    reason: str = ""
