"""One child's homework, messages, stars and handoff target, remembered per replica like the
overview (`gateway.caches.overview`): an entry stops being fresh when overview says the pupil's
projections changed (`notice.overview.changed.v1`), after `PORTAL_OVERVIEW_CACHE_SECONDS`, when
some school's week may turn, and (homework) when a piece of it falls due. Concurrent requests
for the same answer share one request to overview, and overview reads the pupils asked for
meanwhile in one query.

Without the notice subscription (clients over another transport) nothing is kept: every
request asks overview.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime

from litestar.datastructures import State
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts.base import utcnow
from contracts.kit.logs import get_logger
from contracts.overview import CHANGED_NOTICE, ChangedNotice, next_week_turn

log = get_logger("gateway.caches.detail")

STATE_KEY = "detail_reader"

Key = tuple[str, str, str]  # (what, pupil id, what else the answer depends on)


class DetailCache:
    """(what, pupil, more) -> (fresh until, JSON), bounded, forgotten per pupil on notice."""

    def __init__(self, ttl: float, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.live = False
        self._entries: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()
        self._by_pupil: dict[str, set[Key]] = {}
        # Bumped per pupil on notice (and for all on clear): an answer asked for before must not
        # be kept, it may predate the change.
        self._versions: dict[str, int] = {}
        self._epoch = 0
        self._inflight: dict[Key, asyncio.Future[bytes]] = {}
        self.hits = 0
        self.misses = 0

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen to overview's change notices (called once the NATS connection is up)."""
        await nc.subscribe(CHANGED_NOTICE, cb=self._on_notice)
        self.clear()
        self.live = True

    async def on_reconnect(self) -> None:
        """Notices may have been missed: nothing kept is trusted any more."""
        self.clear()

    async def _on_notice(self, msg: Msg) -> None:
        try:
            pupil_ids = ChangedNotice.model_validate_json(msg.data).pupil_ids
        except ValidationError:
            log.warning("overview_notice_unreadable")
            self.clear()
            return
        for pid in pupil_ids:
            self.forget(pid)

    def forget(self, pupil_id: str) -> None:
        """Drop one pupil's answers."""
        self._versions[pupil_id] = self._versions.get(pupil_id, 0) + 1
        for key in self._by_pupil.pop(pupil_id, ()):
            self._entries.pop(key, None)
        # A request on its way may predate the change: whoever asks from now on asks anew.
        for key in [k for k in self._inflight if k[1] == pupil_id]:
            del self._inflight[key]
        if len(self._versions) > 4 * max(self.max_entries, 1):
            self.clear()

    def clear(self) -> None:
        """Drop everything."""
        self._entries.clear()
        self._by_pupil.clear()
        self._versions.clear()
        self._inflight.clear()
        self._epoch += 1

    def _version(self, pupil_id: str) -> tuple[int, int]:
        return self._epoch, self._versions.get(pupil_id, 0)

    def _put(self, key: Key, data: bytes, until: float) -> None:
        self._entries[key] = (until, data)
        self._entries.move_to_end(key)
        self._by_pupil.setdefault(key[1], set()).add(key)
        while len(self._entries) > self.max_entries:
            old, _ = self._entries.popitem(last=False)
            keys = self._by_pupil.get(old[1])
            if keys is not None:
                keys.discard(old)
                if not keys:
                    del self._by_pupil[old[1]]

    async def get(
        self, key: Key, fetch: Callable[[], Awaitable[bytes]], fresh_until: Callable[[bytes], datetime | None]
    ) -> bytes:
        """The answer for `key`: from memory, else from `fetch` (shared with whoever asks for
        the same meanwhile). `fresh_until(answer)` may bound how long it is kept."""
        entry = self._entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            self.hits += 1
            self._entries.move_to_end(key)
            return entry[1]
        self.misses += 1
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        version = self._version(key[1])
        try:
            data = await fetch()
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            # Retrieved here so that nobody waiting is needed to avoid "never retrieved".
            future.exception()
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        future.set_result(data)
        if self.live and self.ttl > 0 and self.max_entries > 0 and self._version(key[1]) == version:
            now = utcnow()
            seconds = min(self.ttl, (next_week_turn(now) - now).total_seconds())
            bound = fresh_until(data)
            if bound is not None:
                seconds = min(seconds, (bound - now).total_seconds())
            if seconds > 0:
                self._put(key, data, time.monotonic() + seconds)
        return data


def next_due(items: bytes) -> datetime | None:
    """The first `due_at` still ahead in a homework array: its status turns overdue then."""
    now = utcnow()
    ahead = [
        due
        for item in json.loads(items)
        if item.get("status") == "outstanding" and (due := datetime.fromisoformat(item["due_at"])) > now
    ]
    return min(ahead, default=None)


def get_detail_cache(state: State) -> DetailCache:
    """The replica's cache of children's details."""
    return state[STATE_KEY]
