"""Each replica keeps recent overviews in memory: a parent's morning visit is a dictionary
lookup, not four queries. An entry goes when its pupil's events are applied (here, or on another
replica, which says so on `notice.overview.changed.v1`), after a short time in any case, and
when some school's week may turn (`contracts.overview.next_week_turn`): "this week" moves on by
itself."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable

from contracts.base import utcnow
from contracts.overview import ChildOverview, next_week_turn


class OverviewCache:
    """A bounded LRU of pupil id -> overview."""

    def __init__(self, *, max_entries: int = 200_000, ttl: float = 60.0) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        # (fresh until, JSON): no model objects, which the garbage collector would have to
        # walk on every full collection.
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        # Bumped whenever a pupil's events are applied: an answer computed from the database
        # before that must not be kept (it would hide the change until it expires).
        self._versions: dict[str, int] = {}
        self._epoch = 0  # bumped by clear(), which forgets the per-pupil counts
        self.hits = 0
        self.misses = 0

    def version(self, pupil_id: str) -> tuple[int, int]:
        """The pupil's current version; pass it back to `put`."""
        return self._epoch, self._versions.get(pupil_id, 0)

    def get(self, pupil_id: str) -> bytes | None:
        """The cached overview's JSON, if fresh."""
        entry = self._entries.get(pupil_id)
        if entry is None or entry[0] < time.monotonic():
            self.misses += 1
            return None
        self._entries.move_to_end(pupil_id)
        self.hits += 1
        return entry[1]

    def put(self, overview: ChildOverview, version: tuple[int, int]) -> bytes:
        """Remember an overview read at `version`, unless the pupil changed since; its JSON."""
        data = overview.model_dump_json().encode()
        if self.version(overview.pupil_id) != version:
            return data
        self._entries[overview.pupil_id] = (expiry(self.ttl), data)
        self._entries.move_to_end(overview.pupil_id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return data

    def forget(self, pupil_ids: Iterable[str]) -> None:
        """Drop these pupils' entries."""
        for pid in pupil_ids:
            self._entries.pop(pid, None)
            self._versions[pid] = self._versions.get(pid, 0) + 1
        if len(self._versions) > 4 * self.max_entries:
            self.clear()

    def clear(self) -> None:
        """Drop everything (after a reconnect, notices may have been missed)."""
        self._entries.clear()
        self._versions.clear()
        self._epoch += 1


def expiry(ttl: float) -> float:
    """The monotonic time an overview computed now stops being fresh."""
    now = utcnow()
    return time.monotonic() + min(ttl, (next_week_turn(now) - now).total_seconds())
