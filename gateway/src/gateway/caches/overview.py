"""Each child's overview, remembered per replica: a parent's overview served from memory makes
no request at all.

An entry is overview's own JSON for one pupil. It stops being fresh at once when overview says
the pupil's numbers changed (`notice.overview.changed.v1`, sent after every batch of events it
applies), when some school's week may turn (stars "this week" change then without any event),
after a reconnect or when nats-py dropped messages (a notice may have been missed). Otherwise
it ages: after `PORTAL_OVERVIEW_CACHE_SECONDS` it is still served, and asked for again in the
background (once per pupil at a time), so that entries cached together in the morning do not
all send their parents to overview together a minute later; after twice that it is no longer
served. An entry that is no longer fresh is kept (within the size bound) as the last known
numbers of a partial answer while overview is away.

`OverviewReader` is what the routes and pages ask: it serves from the cache, asks overview for
the pupils missing there in one request, and answers partially when overview is slow or away.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from litestar.datastructures import State
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError

from contracts.base import utcnow
from contracts.kit.gather import ReadGatherer
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError
from contracts.overview import CHANGED_NOTICE, MAX_PUPILS, ChangedNotice, next_week_turn

log = get_logger("gateway.caches.overview")

STATE_KEY = "overview_reader"
# A notice matters to an answer that was asked for before it arrived and is still on its way;
# none is on its way longer than the overview deadline, so older notices can be forgotten.
_NOTICE_HORIZON = 30.0


class OverviewCache:
    """pupil id -> (asked again after, served until, the child's JSON)."""

    def __init__(self, ttl: float, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        # False until the notice subscription exists: without it nothing may be served as fresh.
        self.live = False
        self._entries: OrderedDict[str, tuple[float, float, bytes]] = OrderedDict()
        self.refreshing: set[str] = set()
        # Notices by pupil: (sequence number, when heard). An answer asked for at sequence `s`
        # is not kept as fresh for a pupil noticed after `s`: it may predate the change.
        self._seq = 0
        self._noticed: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._cleared_at = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    # -- notices --------------------------------------------------------------------------------

    async def subscribe(self, nc: NatsClient) -> None:
        """Listen to overview's change notices (called once the NATS connection is up)."""
        await nc.subscribe(CHANGED_NOTICE, cb=self._on_notice)
        self.clear()
        self.live = True

    async def on_reconnect(self) -> None:
        """Nothing is fresh any more: notices may have been missed meanwhile."""
        self.clear()

    async def _on_notice(self, msg: Msg) -> None:
        try:
            pupil_ids = ChangedNotice.model_validate_json(msg.data).pupil_ids
        except ValidationError:
            log.warning("overview_notice_unreadable")
            self.clear()
            return
        self.changed(pupil_ids)

    def changed(self, pupil_ids: Iterable[str]) -> None:
        """These pupils' numbers changed: their entries are no longer fresh."""
        now = time.monotonic()
        self._seq += 1
        for pid in pupil_ids:
            entry = self._entries.get(pid)
            if entry is not None:
                self._entries[pid] = (0.0, 0.0, entry[2])
            self._noticed[pid] = (self._seq, now)
            self._noticed.move_to_end(pid)
        while self._noticed:
            _, (_, heard) = next(iter(self._noticed.items()))
            if heard > now - _NOTICE_HORIZON:
                break
            self._noticed.popitem(last=False)

    def clear(self) -> None:
        """Nothing is fresh any more (entries stay, as last known numbers)."""
        self._seq += 1
        self._entries = OrderedDict((pid, (0.0, 0.0, data)) for pid, (_, _, data) in self._entries.items())
        # Every answer on its way predates the clear: none may be kept as fresh.
        self._cleared_at = self._seq

    # -- entries --------------------------------------------------------------------------------

    def mark(self) -> int:
        """Call before asking overview; pass the result to `put`."""
        return self._seq

    def lookup(self, pupil_id: str) -> tuple[bytes | None, bool]:
        """The pupil's JSON if it may be served, and whether to ask for it again meanwhile."""
        entry = self._entries.get(pupil_id)
        now = time.monotonic()
        if entry is None or entry[1] <= now:
            self.misses += 1
            return None, False
        self.hits += 1
        return entry[2], entry[0] <= now

    def fresh(self, pupil_id: str) -> bytes | None:
        """The pupil's JSON if it may be served."""
        return self.lookup(pupil_id)[0]

    def last_known(self, pupil_id: str) -> bytes | None:
        """The pupil's JSON however old: a partial answer's numbers."""
        entry = self._entries.get(pupil_id)
        return None if entry is None else entry[2]

    def put(self, parts: dict[str, bytes], mark: int) -> None:
        """Keep overview's answers, asked for at `mark`."""
        if self.max_entries <= 0:
            return
        now = utcnow()
        turn = (next_week_turn(now) - now).total_seconds()
        mono = time.monotonic()
        hard = mono + min(2 * self.ttl, turn)
        for pid, data in parts.items():
            noticed = self._noticed.get(pid)
            ok = self.live and self.ttl > 0 and mark >= self._cleared_at and (noticed is None or noticed[0] <= mark)
            # Aged up to a fifth early at random: entries made together are asked for apart.
            soft = mono + min(self.ttl * (1 - 0.2 * random.random()), turn)  # noqa: S311 - jitter, not a secret
            self._entries[pid] = (soft, hard, data) if ok else (0.0, 0.0, data)
            self._entries.move_to_end(pid)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class Refresher:
    """Asks overview again for aged entries, many pupils per request, in the background."""

    # One pupil per request would cost overview four queries each; a morning's entries age
    # together, so gathering them for a moment turns thousands of requests into tens.

    def __init__(
        self,
        cache: OverviewCache,
        fetch: Callable[[list[str]], Awaitable[bytes]],
        *,
        max_batch: int = MAX_PUPILS,
        delay: float = 0.02,
    ) -> None:
        self.cache = cache
        self.fetch = fetch
        self.max_batch = max_batch
        self.delay = delay
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, pupil_ids: Iterable[str]) -> None:
        """Ask for these pupils again soon (each at most once at a time)."""
        for pid in pupil_ids:
            if pid not in self.cache.refreshing:
                self.cache.refreshing.add(pid)
                self._pending.append(pid)
        while len(self._pending) >= self.max_batch:
            self._start(self._pending[: self.max_batch])
            del self._pending[: self.max_batch]
        if self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            self._start(self._pending)
            self._pending = []

    def _start(self, batch: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh(list(batch)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, batch: list[str]) -> None:
        try:
            mark = self.cache.mark()
            self.cache.put(split_children(await self.fetch(batch)), mark)
        except Exception as exc:  # noqa: BLE001 - served as is until it ages out
            log.info("overview_refresh_failed", error=getattr(exc, "code", type(exc).__name__), pupils=len(batch))
        finally:
            self.cache.refreshing.difference_update(batch)


def split_children(data: bytes) -> dict[str, bytes]:
    """Overview's `{"children": [...]}` as each pupil's own JSON."""
    return {
        child["pupil_id"]: json.dumps(child, ensure_ascii=False, separators=(",", ":")).encode()
        for child in json.loads(data)["children"]
    }


_PREFIX = b'{"children":['
# A child overview could not be asked for: no numbers, marked as such.
_UNKNOWN: dict[str, Any] = {
    "outstanding_homework": None,
    "unread_messages": None,
    "stars_this_week": None,
    "next_due": [],
    "links": None,
    "as_of": None,
}


class OverviewReader:
    """Children's overviews as the API answers them: from the cache, else from overview."""

    def __init__(self, cache: OverviewCache, fetch: Callable[[list[str]], Awaitable[bytes]]) -> None:
        self.cache = cache
        # Overview's raw answer within the overview deadline (`OverviewClient.get_raw`).
        self._fetch = fetch
        self.refresher = Refresher(cache, fetch)
        # Misses of parents arriving together go to overview in one request (see
        # `contracts.kit.gather`): a school morning's first visits, a few requests in flight.
        self._misses: ReadGatherer[bytes] = ReadGatherer(self._read_missing, max_keys=MAX_PUPILS)

    async def _read_missing(self, pupil_ids: list[str]) -> dict[str, bytes]:
        mark = self.cache.mark()
        fetched = split_children(await self._fetch(pupil_ids))
        self.cache.put(fetched, mark)
        return fetched

    async def read(self, parent_id: str, pupil_ids: tuple[str, ...]) -> bytes:
        """`{"children": [...]}` for these pupils: from memory, else asked of overview for the
        pupils missing there; partial when overview is slow or away."""
        cache = self.cache
        parts: dict[str, bytes] = {}
        missing = []
        aged = []
        for pid in pupil_ids:
            hit, ask_again = cache.lookup(pid)
            if hit is None:
                missing.append(pid)
            else:
                parts[pid] = hit
                if ask_again:
                    aged.append(pid)
        if aged:
            # Asked for again without keeping the parent waiting.
            self.refresher.add(aged)
        if missing:
            try:
                fetched = await self._misses.get(missing)
            except RpcError as exc:
                log.warning("overview_partial", parent_id=parent_id, error=exc.code)
                return self._partial(pupil_ids, parts)
            for pid, data in fetched.items():
                if data is not None:
                    parts[pid] = data
            if any(pid not in parts for pid in pupil_ids):
                return self._partial(pupil_ids, parts)
        return _PREFIX + b",".join(parts[pid] for pid in pupil_ids) + b"]}"

    async def read_one(self, parent_id: str, pupil_id: str) -> bytes:
        """One child's overview object, as `read` would answer it inside its list."""
        data = await self.read(parent_id, (pupil_id,))
        if data.startswith(_PREFIX):
            # One pupil asked, one object answered: the child is everything between the brackets.
            return data[len(_PREFIX) : data.rindex(b"]")]
        return json.dumps(json.loads(data)["children"][0]).encode()

    def _partial(self, pupil_ids: tuple[str, ...], parts: dict[str, bytes]) -> bytes:
        """Each child fresh where there is an answer, else its last known numbers (or none)
        marked `partial`."""
        children = []
        for pid in pupil_ids:
            if pid in parts:
                children.append(json.loads(parts[pid]))
                continue
            known = self.cache.last_known(pid)
            child = json.loads(known) if known else {"pupil_id": pid, **_UNKNOWN}
            children.append({**child, "partial": True})
        return json.dumps({"children": children, "partial": True}).encode()


def get_overview_reader(state: State) -> OverviewReader:
    """The replica's overview reader."""
    return state[STATE_KEY]
