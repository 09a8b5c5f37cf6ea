"""Base classes shared by every message schema, and the declaration of a request/reply."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

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


Req = TypeVar("Req", bound=BaseModel)
Rep = TypeVar("Rep", bound=BaseModel)


@dataclass(frozen=True, eq=False)
class Rpc(Generic[Req, Rep]):
    """One request/reply operation: where it is asked, what it takes and what it answers.

    `errors` lists the error codes the operation may answer besides those any request may answer
    (`invalid_request`, `service_unavailable`, `internal_error`), so that the document and the
    callers' mappings can be checked against it.

    `every_replica`: each replica answers (no queue group), so a caller collecting replies for
    a moment hears from all of them (`portal status`); otherwise one replica of the service does.
    """

    subject: str
    request: type[Req]
    reply: type[Rep]
    title: str
    description: str
    errors: tuple[str, ...] = ()
    every_replica: bool = False

    def __post_init__(self) -> None:
        parts = self.subject.split(".")
        if len(parts) != 4 or parts[0] != "rpc" or not parts[3].startswith("v"):
            raise ValueError(f"an rpc subject is rpc.<service>.<verb>.v<N>, not {self.subject!r}")

    @property
    def service(self) -> str:
        """The service that answers it."""
        return self.subject.split(".")[1]

    def __repr__(self) -> str:
        return f"Rpc({self.subject})"
