"""Base classes shared by every message schema."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


def new_event_id() -> str:
    """A fresh, globally unique event id."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware (naive datetimes are refused everywhere)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Any message on the bus. Unknown fields are ignored so that producers may add fields."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Event(Message):
    """An event: something that happened. `event_id` doubles as the `Nats-Msg-Id`."""

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=128)
    occurred_at: AwareDatetime = Field(default_factory=utcnow)
