"""The request/reply shapes every service shares: health, and the error reply."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import Field

from contracts.base import Message, Rpc

SERVICES = ("identity", "linking", "notify", "overview")
# Every part that runs as `portal service NAME`: the services and the gateway.
PARTS = (*SERVICES, "gateway")

ERROR_HEADER = "Portal-Error"


class HealthRequest(Message):
    """Asks a service whether it can do its work."""


class HealthReply(Message):
    """A service's answer: it runs, and whether its database answers."""

    service: str
    status: Literal["ok", "degraded"]
    version: str
    checks: dict[str, str]


@cache
def health(service: str) -> Rpc[HealthRequest, HealthReply]:
    """`rpc.<service>.health.v1`: every service answers it."""
    return Rpc(
        f"rpc.{service}.health.v1",
        HealthRequest,
        HealthReply,
        title=f"{service} health",
        description="Answers whether this replica runs and its database answers.",
    )


class FieldError(Message):
    """One field of a request and what is wrong with it."""

    field: str
    message: str


class ErrorReply(Message):
    """The body of an error reply (header `Portal-Error: <error>`): what the caller can act on.

    `detail` is a sentence for people; nothing in it is meant to be parsed. What a caller acts
    on is data: the code, the fields and `retry_after`.
    """

    error: str = Field(description="snake_case code, e.g. invalid_code, too_many_attempts")
    detail: str = Field(description="A sentence for people")
    fields: list[FieldError] = Field(default_factory=list, description="The fields the error is about")
    retry_after: int | None = Field(default=None, ge=0, description="Seconds after which trying again may succeed")


class RetentionRequest(Message):
    """Asks a service to apply its retention settings now (`portal retention run`)."""


class RetentionReply(Message):
    """What a service erased, per kind of record (e.g. `sessions`, `emails`, `processed_events`)."""

    service: str
    erased: dict[str, int] = Field(description="Records erased, per kind")


@cache
def retention(service: str) -> Rpc[RetentionRequest, RetentionReply]:
    """`rpc.<service>.retention.v1`: every service answers it."""
    return Rpc(
        f"rpc.{service}.retention.v1",
        RetentionRequest,
        RetentionReply,
        title=f"{service} retention",
        description="Erases now what the PORTAL_RETENTION_* settings say is kept no longer (each service also "
        "does it daily) and answers how many records of each kind it erased.",
    )


class StatusRequest(Message):
    """Asks every replica of a part how its work goes (`portal status`)."""


class ConsumerStatus(Message):
    """One durable consumer of the part, as JetStream reports it."""

    consumer: str = Field(description="Its durable name")
    stream: str
    pending: int | None = Field(
        description="Messages not acknowledged yet (waiting, or delivered and being applied); null when JetStream "
        "did not answer"
    )
    idle_seconds: float | None = Field(
        default=None,
        description="Seconds since the consumer last acknowledged a message (since it was created, if never)",
    )


class StatusReply(Message):
    """One replica's answer: its health checks and backlog."""

    part: str
    instance: str = Field(description="The replica's name (PORTAL_INSTANCE_ID, or a random one)")
    version: str
    status: Literal["ok", "degraded"]
    checks: dict[str, str] = Field(description="Each check's `ok` or what is wrong")
    uptime_seconds: float
    outbox_pending: int | None = Field(default=None, description="Events waiting in the outbox (services)")
    outbox_oldest_seconds: float | None = Field(
        default=None, description="Age of the oldest of them; 0 when none waits"
    )
    consumers: list[ConsumerStatus] = Field(default_factory=list)


@cache
def status(part: str) -> Rpc[StatusRequest, StatusReply]:
    """`rpc.<part>.status.v1`: every replica of every part (the gateway too) answers it."""
    return Rpc(
        f"rpc.{part}.status.v1",
        StatusRequest,
        StatusReply,
        title=f"{part} status",
        description="Every replica answers (no queue group): its health checks, its outbox backlog and the age of "
        "the oldest event in it, and each of its consumers' pending count. `portal status` collects the answers.",
        every_replica=True,
    )
