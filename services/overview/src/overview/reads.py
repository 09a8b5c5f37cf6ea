"""Cold overview reads, gathered: the pupils that concurrent requests miss in the cache are read
together, four queries for the lot instead of four per request.

Nothing waits on purpose. Requests that arrive while reads are in flight (at most `parallel`)
queue up and are read together as soon as one finishes, so a quiet service reads each request
at once and a busy one, on a school morning, reads many pupils per query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from contracts.kit.logs import get_logger

log = get_logger("overview.reads")

# The most pupils one read asks for: IN lists stay well within every database's limits.
MAX_PUPILS = 500


class ReadGatherer:
    """`read(pupil_ids) -> {pupil_id: JSON}`, shared by concurrent callers."""

    def __init__(self, read: Callable[[list[str]], Awaitable[dict[str, bytes]]], *, parallel: int = 2) -> None:
        self.read = read
        self.parallel = parallel
        self._waiting: dict[str, list[asyncio.Future[bytes]]] = {}
        self._running = 0
        self.reads = 0
        self.pupils_read = 0

    async def get(self, pupil_ids: Iterable[str]) -> dict[str, bytes]:
        """These pupils' overviews, read with whatever else is asked for meanwhile."""
        loop = asyncio.get_running_loop()
        futures: dict[str, asyncio.Future[bytes]] = {}
        for pid in pupil_ids:
            if pid in futures:
                continue
            fut = futures[pid] = loop.create_future()
            self._waiting.setdefault(pid, []).append(fut)
        self._start()
        if futures:
            await asyncio.wait(futures.values())
        # Every future's error is looked at, so that none is reported as never retrieved.
        errors = [exc for fut in futures.values() if (exc := fut.exception()) is not None]
        if errors:
            raise errors[0]
        return {pid: fut.result() for pid, fut in futures.items()}

    def _start(self) -> None:
        while self._waiting and self._running < self.parallel:
            batch = dict(list(self._waiting.items())[:MAX_PUPILS])
            for pid in batch:
                del self._waiting[pid]
            self._running += 1
            asyncio.get_running_loop().create_task(self._read(batch))

    async def _read(self, batch: dict[str, list[asyncio.Future[bytes]]]) -> None:
        try:
            found = await self.read(list(batch))
            self.reads += 1
            self.pupils_read += len(batch)
            for pid, futures in batch.items():
                for fut in futures:
                    if fut.done():
                        continue
                    if pid in found:
                        fut.set_result(found[pid])
                    else:
                        fut.set_exception(KeyError(pid))
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
