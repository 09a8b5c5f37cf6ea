"""Builds the linking service from its settings."""

from __future__ import annotations

from typing import ClassVar

from contracts import streams
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field

from linking import __version__

NAME = "linking"
MIGRATIONS = "linking:migrations"
DESCRIPTION = "The roster copy, school settings, link codes, invitations, parent-pupil links, bars and the audit trail."


class Settings(ServiceSettings):
    """Settings of the linking service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)


def build(settings: Settings | None = None) -> ServiceRuntime:
    """Wire one replica of the service: its streams, consumers and rpc handlers."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.LINKING, streams.NOTIFY_REQUESTS, streams.PLATFORM, streams.IDENTITY, streams.NOTIFY],
    )
    return runtime
