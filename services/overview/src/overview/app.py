"""Builds the overview service from its settings."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import Field

from contracts import linking, platform, streams
from contracts.base import utcnow
from contracts.kit.logs import get_logger
from contracts.kit.gather import ReadGatherer
from contracts.kit.outbox import UnitOfWork
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from contracts.overview import CHANGED_NOTICE, GET, ChangedNotice, OverviewRequest
from overview import __version__
from overview.cache import OverviewCache
from overview.projection import Batch, read_overviews

NAME = "overview"
MIGRATIONS = "overview:migrations"
DESCRIPTION = "Per-pupil projections of homework, messages and stars."

log = get_logger("overview.app")

PLATFORM_SCHEMAS = {
    subject: platform.SCHEMAS[subject]
    for subject in (
        platform.SCHOOL_UPSERTED,
        platform.PUPIL_UPSERTED,
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
    overview_cache_seconds: float = Field(default=60, ge=0, description="Longest time an overview is served from memory.")
    overview_cache_entries: int = Field(default=200_000, ge=0, description="Overviews kept in memory per replica.")
    overview_batch_size: int = Field(default=2500, ge=1, le=5000, description="Events applied per transaction at most (a batch only grows this large while events queue up).")


def build(settings: Settings | None = None) -> ServiceRuntime:
    """Wire one replica: the projections' consumers and the overview request."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.OVERVIEW, streams.PLATFORM, streams.LINKING],
    )
    cache = OverviewCache(max_entries=settings.overview_cache_entries, ttl=settings.overview_cache_seconds)
    defaults = linking.default_link_templates(settings.platform_url)

    async def apply(uow: UnitOfWork, items: list) -> None:
        batch = Batch()
        for subject, event in items:
            batch.add(subject, event)
        touched = await batch.write(uow.session)
        if touched:
            uow.after_commit(lambda: _changed(touched))

    def _changed(pupil_ids: set[str]) -> None:
        cache.forget(pupil_ids)
        # Other replicas drop theirs too; best effort, since their entries expire anyway.
        notice = ChangedNotice(pupil_ids=sorted(pupil_ids)).model_dump_json().encode()
        task = asyncio.get_running_loop().create_task(runtime.broker.connection.publish(CHANGED_NOTICE, notice))
        background.add(task)
        task.add_done_callback(background.discard)

    background: set[asyncio.Task] = set()

    async def on_notice(msg) -> None:  # noqa: ANN001
        try:
            cache.forget(ChangedNotice.model_validate_json(msg.data).pupil_ids)
        except ValueError:
            pass

    async def listen_for_notices() -> None:
        await runtime.broker.connection.subscribe(CHANGED_NOTICE, cb=on_notice)

    runtime.app.after_startup(listen_for_notices)
    # Notices sent while the connection was down are lost: start afresh.
    runtime.on_reconnect.append(cache.clear)

    runtime.consume(
        stream=streams.PLATFORM,
        subject="platform.>",
        durable="overview-platform",
        schemas=PLATFORM_SCHEMAS,
        batch_handler=apply,
        batch_size=settings.overview_batch_size,
        title="platform events",
        description="Projects roster, homework, messages and stars per pupil, idempotent and order-independent.",
    )
    runtime.consume(
        stream=streams.LINKING,
        subject=linking.SCHOOL_SETTINGS_CHANGED,
        durable="overview-school-settings",
        schemas={linking.SCHOOL_SETTINGS_CHANGED: linking.SchoolSettingsChanged},
        batch_handler=apply,
        title="school settings",
        description="Keeps each school's link templates for the overview's buttons.",
    )

    async def read(pupil_ids: list[str]) -> dict[str, bytes]:
        versions = {pid: cache.version(pid) for pid in pupil_ids}
        async with runtime.db.reader() as s:
            fresh = await read_overviews(s, pupil_ids, now=utcnow(), defaults=defaults)
        return {pid: cache.put(ov, versions[pid]) for pid, ov in fresh.items()}

    # Cold reads of concurrent requests together: four queries for the lot, not per request.
    reads: ReadGatherer[bytes] = ReadGatherer(read)

    @runtime.raw_rpc(GET, request=OverviewRequest, title="overview", description="Homework, messages and stars of many pupils at once.")
    async def get(data: bytes) -> bytes:
        req = OverviewRequest.model_validate_json(data)
        parts: dict[str, bytes] = {}
        missing = []
        for pid in req.pupil_ids:
            hit = cache.get(pid)
            if hit is None:
                missing.append(pid)
            else:
                parts[pid] = hit
        if missing:
            parts.update(await reads.get(missing))
        # Assembled from cached JSON: no model is built or serialised again on a hit.
        return b'{"children":[' + b",".join(parts[pid] for pid in dict.fromkeys(req.pupil_ids)) + b"]}"

    runtime.cache = cache  # type: ignore[attr-defined]  # reached by tests and benchmarks
    runtime.reads = reads  # type: ignore[attr-defined]
    return runtime
