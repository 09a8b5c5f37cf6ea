"""Retention: each service erases what it no longer needs, daily and on request.

A service gives `install` its own purge (one function, in `<service>/retention.py`) and gets:
the daily run, the `rpc.<service>.retention.v1` request that `portal retention run` sends, the
processed-event records older than `PORTAL_RETENTION_EVENT_DAYS` erased with the rest, and on
SQLite a write-ahead log that is checkpointed and truncated a few seconds after each write, so
that erased rows (and every outbox row, which may have carried an email's link) leave the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete
from sqlalchemy.engine import make_url

from contracts.base import utcnow
from contracts.kit.logs import describe_error, get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.tables import processed_events
from contracts.rpc import RetentionReply, RetentionRequest, retention

log = get_logger("contracts.kit.retention")

Purge = Callable[[UnitOfWork, datetime], Awaitable[dict[str, int]]]

DAILY = 24 * 3600.0
# How soon after a write the log is truncated: well inside the 30 seconds within which an
# erased address or a delivered email's link must be gone from the files.
CHECKPOINT_SECONDS = 5.0


def days(n: float) -> timedelta:
    """A retention setting as a duration."""
    return timedelta(days=n)


def rowcount(result: Any) -> int:
    """How many rows a DELETE or UPDATE touched."""
    return max(0, cast("CursorResult[Any]", result).rowcount or 0)


class Retention:
    """One replica's retention: the purge, the daily loop, the log checkpoints."""

    def __init__(self, runtime: Any, purge: Purge) -> None:
        self.runtime = runtime
        self.purge = purge
        self._tasks: list[asyncio.Task] = []
        wal = None
        if runtime.db.sqlite:
            database = make_url(runtime.db.url).database
            wal = f"{database}-wal" if database else None
        self._wal = wal

    async def run(self) -> dict[str, int]:
        """Erase now what the settings keep no longer; how many of each kind."""
        now = utcnow()
        settings = self.runtime.settings
        async with self.runtime.unit_of_work() as uow:
            erased = dict(await self.purge(uow, now))
            result = await uow.session.execute(
                delete(processed_events).where(
                    processed_events.c.processed_at < now - days(settings.retention_event_days)
                )
            )
            erased["processed_events"] = rowcount(result)
        await self.runtime.db.checkpoint()
        log.info("retention_applied", service=self.runtime.name, **erased)
        return erased

    async def answer(self, _: RetentionRequest) -> RetentionReply:
        """`rpc.<service>.retention.v1`."""
        return RetentionReply(service=self.runtime.name, erased=await self.run())

    async def start(self) -> None:
        """Start the daily run and, on SQLite, the log checkpoints."""
        self._tasks.append(asyncio.create_task(self._daily(), name=f"retention-{self.runtime.name}"))
        if self._wal is not None:
            self._tasks.append(asyncio.create_task(self._checkpoints(), name=f"checkpoint-{self.runtime.name}"))

    async def stop(self) -> None:
        """Stop both loops."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _daily(self) -> None:
        # Replicas started together spread their runs; each run is idempotent anyway.
        await asyncio.sleep(random.uniform(60, 600))  # noqa: S311 - spreading, not a secret
        while True:
            try:
                await self.run()
            except Exception as exc:  # noqa: BLE001 - tried again tomorrow; `portal retention run` meanwhile
                log.warning("retention_failed", service=self.runtime.name, error=describe_error(exc))
            await asyncio.sleep(DAILY)

    async def _checkpoints(self) -> None:
        assert self._wal is not None  # started on SQLite only
        while True:
            await asyncio.sleep(CHECKPOINT_SECONDS)
            try:
                if os.path.getsize(self._wal) > 0:
                    await self.runtime.db.checkpoint()
            except FileNotFoundError:
                continue
            except Exception as exc:  # noqa: BLE001 - a busy database: the next turn tries again
                log.info("checkpoint_failed", service=self.runtime.name, error=describe_error(exc))


def install(runtime: Any, purge: Purge) -> Retention:
    """Give a service its retention: `purge(uow, now)` erases its own records and says how many."""
    keeper = Retention(runtime, purge)
    runtime.serve(retention(runtime.name), keeper.answer, concurrency=1)
    runtime.app.after_startup(keeper.start)
    runtime.app.on_shutdown(keeper.stop)
    return keeper
