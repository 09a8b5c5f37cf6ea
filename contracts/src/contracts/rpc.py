"""Request/reply subjects and the shapes every service shares (health, errors)."""

from __future__ import annotations

from typing import Literal

from contracts.base import Message

SERVICES = ("identity", "linking", "notify", "overview")

ERROR_HEADER = "Portal-Error"


def health_subject(service: str) -> str:
    """`rpc.<service>.health.v1`."""
    return f"rpc.{service}.health.v1"


class HealthRequest(Message):
    """Asks a service whether it can do its work."""


class HealthReply(Message):
    """A service's answer: it runs, and whether its database answers."""

    service: str
    status: Literal["ok", "degraded"]
    version: str
    checks: dict[str, str]


class ErrorReply(Message):
    """The body of an error reply; the same shape as the gateway's HTTP errors."""

    error: str
    detail: str
