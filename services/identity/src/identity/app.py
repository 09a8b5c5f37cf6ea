"""Builds the identity service from its settings."""

from __future__ import annotations

from typing import ClassVar

from contracts import streams
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field

from identity import __version__

NAME = "identity"
MIGRATIONS = "identity:migrations"
DESCRIPTION = "Parent and staff accounts, email verification, sessions, password reset."


class Settings(ServiceSettings):
    """Settings of the identity service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)


def build(settings: Settings | None = None) -> ServiceRuntime:
    """Wire one replica of the service: its streams, consumers and rpc handlers."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.IDENTITY, streams.NOTIFY_REQUESTS, streams.PLATFORM],
    )
    return runtime
