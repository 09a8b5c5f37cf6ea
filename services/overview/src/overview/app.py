"""Builds the overview service from its settings."""

from __future__ import annotations

from typing import ClassVar

from contracts import streams
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field

from overview import __version__

NAME = "overview"
MIGRATIONS = "overview:migrations"
DESCRIPTION = "Per-pupil projections of homework, messages and stars."


class Settings(ServiceSettings):
    """Settings of the overview service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)


def build(settings: Settings | None = None) -> ServiceRuntime:
    """Wire one replica of the service: its streams, consumers and rpc handlers."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.OVERVIEW, streams.PLATFORM, streams.LINKING],
    )
    return runtime
