"""Reads gathered across concurrent requests: what requests arriving together ask of the
database (sessions by token, parents' links, pupils' overviews) is read in one query for the
lot instead of one per request.

Nothing waits on purpose. Keys asked for while reads are in flight (at most `parallel`) queue
up and are read together as soon as one finishes, so a quiet service reads each request at
once and a busy one, on a school morning, reads many keys per query.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V")

# The most keys one read asks for: IN lists stay well within every database's limits.
MAX_KEYS = 500
# Reads in flight at once. Two, not more: 4,500 first visits at 64 connections ran at
# 1,790-2,264/s with the gateway's reads at two against 1,770-2,046/s at four (bench/overview.py
# --only-first-visits, runs taken in turn), each process spending less CPU on fewer, larger
# reads; one at a time left the services idle between reads.
PARALLEL = 2


class ReadGatherer(Generic[V]):
    """`read(keys) -> {key: value}` shared by concurrent callers; a key the read does not
    return is None."""

    def __init__(
        self,
        read: Callable[[list[str]], Awaitable[dict[str, V]]],
        *,
        parallel: int = PARALLEL,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.read = read
        self.parallel = parallel
        self.max_keys = max_keys
        self._waiting: dict[str, list[asyncio.Future[V | None]]] = {}
        self._running = 0
        self.reads = 0
        self.keys_read = 0

    async def one(self, key: str) -> V | None:
        """One key's value, read with whatever else is asked for meanwhile."""
        return (await self.get((key,)))[key]

    async def get(self, keys: Iterable[str]) -> dict[str, V | None]:
        """These keys' values, read with whatever else is asked for meanwhile."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[V | None]] = {}
        for pid in keys:
            if pid in futures:
                continue
            fut = futures[pid] = loop.create_future()
            self._waiting.setdefault(pid, []).append(fut)
        self._start()
        # Each future awaited in turn rather than through `asyncio.wait`, whose waiter, callbacks
        # and sets cost 5 µs a call against 1.5 (every cache miss of every request comes here).
        # Every future is awaited, so that no error is reported as never retrieved.
        found: dict[str, V | None] = {}
        error: Exception | None = None
        try:
            for pid, fut in futures.items():
                try:
                    found[pid] = await fut
                except Exception as exc:  # noqa: BLE001 - the first is raised once all are in
                    error = error or exc
        except asyncio.CancelledError:
            # The caller gave up: its other keys' answers (or errors) are nobody's to retrieve.
            for fut in futures.values():
                fut.cancel()
            raise
        if error is not None:
            raise error
        return found

    def _start(self) -> None:
        while self._waiting and self._running < self.parallel:
            batch = dict(itertools.islice(self._waiting.items(), self.max_keys))
            for pid in batch:
                del self._waiting[pid]
            self._running += 1
            asyncio.get_running_loop().create_task(self._read(batch))

    async def _read(self, batch: dict[str, list[asyncio.Future[V | None]]]) -> None:
        try:
            found = await self.read(list(batch))
            self.reads += 1
            self.keys_read += len(batch)
            for pid, futures in batch.items():
                for fut in futures:
                    if not fut.done():
                        fut.set_result(found.get(pid))
        except BaseException as exc:
            for futures in batch.values():
                for fut in futures:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("read cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._running -= 1
            self._start()
