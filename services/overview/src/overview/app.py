"""Builds the overview service from its settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts import linking, platform, streams
from contracts.kit import retention
from contracts.kit.gather import ReadGatherer
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from contracts.overview import DIGEST, GET, HOMEWORK, MESSAGES, STARS, TARGET
from overview import __version__
from overview.cache import OverviewCache
from overview.handlers import Overviews
from overview.retention import OverviewRetention

NAME = "overview"
MIGRATIONS = "overview:migrations"
DESCRIPTION = "Per-pupil projections of homework, messages and stars."

PLATFORM_SCHEMAS = {
    subject: platform.SCHEMAS[subject]
    for subject in (
        platform.SCHOOL_UPSERTED,
        platform.PUPIL_UPSERTED,
        platform.PUPIL_LEFT,
        platform.HOMEWORK_ASSIGNED,
        platform.HOMEWORK_COMPLETED,
        platform.HOMEWORK_WITHDRAWN,
        platform.MESSAGE_DELIVERED,
        platform.MESSAGE_READ,
        platform.STARS_AWARDED,
    )
}


class Settings(ServiceSettings):
    """Settings of the overview service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)
    overview_cache_seconds: float = Field(
        default=60, ge=0, description="Longest time an overview is served from memory."
    )
    overview_cache_entries: int = Field(default=200_000, ge=0, description="Overviews kept in memory per replica.")
    overview_batch_size: int = Field(
        default=2500,
        ge=1,
        le=5000,
        description="Events applied per transaction at most (a batch only grows this large while events queue up).",
    )


class OverviewRuntime(ServiceRuntime):
    """A replica of overview, whose cache and gathered reads tests and benchmarks reach."""

    cache: OverviewCache
    reads: ReadGatherer[bytes]


def build(settings: Settings | None = None) -> OverviewRuntime:
    """Wire one replica: the projections' consumers and the overview request."""
    settings = settings or Settings()
    runtime = OverviewRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.OVERVIEW, streams.PLATFORM, streams.LINKING],
    )
    cache = OverviewCache(max_entries=settings.overview_cache_entries, ttl=settings.overview_cache_seconds)

    overviews = Overviews(runtime, cache, linking.default_link_templates(settings.platform_url), go=settings.public_url)
    runtime.app.after_startup(overviews.listen_for_notices)
    # Notices sent while the connection was down are lost: start afresh.
    runtime.on_reconnect.append(cache.clear)

    runtime.consume(
        stream=streams.PLATFORM,
        subject="platform.>",
        durable="overview-platform",
        schemas=PLATFORM_SCHEMAS,
        batch_handler=overviews.write,
        prepare=overviews.fold,
        batch_size=settings.overview_batch_size,
        # Two batches written at once: one's round trips to the database overlap the other's
        # (28,058 -> 32,542 events a second on PostgreSQL, 20,570 -> 21,839 on SQLite).
        writers=2,
        # Every projection row is keyed by its fact and guarded by time or by flags that only
        # turn on (`overview.projection`): an event applied again changes nothing.
        claims=False,
        title="platform events",
        description="Projects roster, homework, messages and stars per pupil, idempotent and order-independent.",
    )
    runtime.consume(
        stream=streams.LINKING,
        subject=linking.SCHOOL_SETTINGS_CHANGED,
        durable="overview-school-settings",
        schemas={linking.SCHOOL_SETTINGS_CHANGED: linking.SchoolSettingsChanged},
        batch_handler=overviews.write,
        prepare=overviews.fold,
        claims=False,
        title="school settings",
        description="Keeps each school's link templates for the overview's buttons.",
    )

    runtime.serve(GET, overviews.get, concurrency=1024)
    runtime.serve(HOMEWORK, overviews.homework, concurrency=256)
    runtime.serve(MESSAGES, overviews.messages, concurrency=256)
    runtime.serve(STARS, overviews.stars, concurrency=256)
    runtime.serve(TARGET, overviews.target, concurrency=256)
    runtime.serve(DIGEST, overviews.digest, concurrency=8)
    retention.install(runtime, OverviewRetention(settings).purge)
    runtime.cache = cache
    runtime.reads = overviews.reads
    return runtime
