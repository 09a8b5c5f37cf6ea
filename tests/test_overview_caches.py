"""The overview caches' rules, one function or class at a time: no entry outlives the turn of a
school's week, and an answer asked for before a change notice is never kept as fresh."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from contracts.overview import next_week_turn
from gateway.caches import overview as overview_cache
from gateway.caches.overview import OverviewCache, Refresher, split_children
from overview.projection import week_start

ZONES = [
    "Europe/London",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "America/St_Johns",
    "UTC",
]


@pytest.mark.parametrize("zone", ZONES)
def test_no_school_week_turns_before_next_week_turn(zone: str) -> None:
    rng = random.Random(zone)
    start = datetime(2026, 3, 20, tzinfo=UTC)  # spans the spring clock change in Europe and elsewhere
    for _ in range(3000):
        now = start + timedelta(seconds=rng.randrange(0, 21 * 24 * 3600))
        turn = next_week_turn(now)
        assert turn > now
        assert week_start(now, zone) == week_start(turn - timedelta(microseconds=1), zone), (now, turn)
    # At its own turn the week does begin for some zone, so the bound is not needlessly early.
    monday_london = datetime(2026, 3, 29, 23, 0, tzinfo=UTC)  # Monday 00:00 BST
    assert next_week_turn(monday_london - timedelta(minutes=1)) == monday_london


def test_next_week_turn_is_days_away_midweek() -> None:
    wednesday = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    assert next_week_turn(wednesday) == datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def live_cache(ttl: float = 60) -> OverviewCache:
    cache = OverviewCache(ttl)
    cache.live = True
    return cache


def test_an_answer_asked_for_before_a_notice_is_not_fresh() -> None:
    cache = live_cache()
    mark = cache.mark()
    cache.changed(["amy"])  # heard while the request was on its way
    cache.put({"amy": b'{"pupil_id":"amy"}', "ben": b'{"pupil_id":"ben"}'}, mark)
    assert cache.fresh("amy") is None and cache.last_known("amy") == b'{"pupil_id":"amy"}'
    assert cache.fresh("ben") == b'{"pupil_id":"ben"}'
    cache.put({"amy": b'{"pupil_id":"amy","v":2}'}, cache.mark())
    assert cache.fresh("amy") == b'{"pupil_id":"amy","v":2}'


def test_a_notice_or_a_clear_ends_freshness_but_keeps_the_numbers() -> None:
    cache = live_cache()
    cache.put({"amy": b"1", "ben": b"2"}, cache.mark())
    cache.changed(["amy"])
    assert cache.fresh("amy") is None and cache.fresh("ben") == b"2"
    mark = cache.mark()
    cache.clear()
    cache.put({"cara": b"3"}, mark)  # asked before the clear
    assert cache.fresh("ben") is None and cache.fresh("cara") is None
    assert cache.last_known("ben") == b"2" and cache.last_known("cara") == b"3"


def test_nothing_is_fresh_without_the_notice_subscription_or_with_ttl_zero() -> None:
    cache = OverviewCache(60)
    cache.put({"amy": b"1"}, cache.mark())
    assert cache.fresh("amy") is None
    off = live_cache(ttl=0)
    off.put({"amy": b"1"}, off.mark())
    assert off.fresh("amy") is None


def test_entries_end_at_the_week_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = live_cache(ttl=3600)
    sunday = datetime(2026, 12, 6, 9, 59, 30, tzinfo=UTC)  # 30 s before Kiritimati's Monday
    monkeypatch.setattr(overview_cache, "utcnow", lambda: sunday)
    cache.put({"amy": b"1"}, cache.mark())
    assert cache.fresh("amy") == b"1"
    expires = cache._entries["amy"][0] - time.monotonic()
    assert 25 < expires <= 30


def test_an_aged_entry_is_served_while_asked_again_then_not_at_all() -> None:
    cache = live_cache(ttl=0.2)
    cache.put({"amy": b"1"}, cache.mark())
    assert cache.lookup("amy") == (b"1", False)
    time.sleep(0.21)
    assert cache.lookup("amy") == (b"1", True), "served, and asked for again"
    time.sleep(0.2)
    assert cache.lookup("amy") == (None, False) and cache.last_known("amy") == b"1"


def test_the_size_bound_forgets_the_oldest() -> None:
    cache = OverviewCache(60, max_entries=2)
    cache.live = True
    for pid in ("a", "b", "c"):
        cache.put({pid: pid.encode()}, cache.mark())
    assert cache.last_known("a") is None and cache.fresh("c") == b"c" and len(cache) == 2


def test_split_children_keeps_each_pupils_json() -> None:
    data = '{"children":[{"pupil_id":"a","next_due":[{"title":"Café },{ maths"}]},{"pupil_id":"b"}]}'.encode()
    parts = split_children(data)
    assert set(parts) == {"a", "b"}
    assert parts["a"].decode() == '{"pupil_id":"a","next_due":[{"title":"Café },{ maths"}]}'


async def test_the_refresher_asks_for_aged_pupils_in_batches_once_each() -> None:
    cache = live_cache()
    asked: list[list[str]] = []
    fail = {"now": False}

    async def fetch(batch: list[str]) -> bytes:
        asked.append(batch)
        await asyncio.sleep(0.01)
        if fail["now"]:
            raise TimeoutError
        return json.dumps({"children": [{"pupil_id": p, "v": 2} for p in batch]}).encode()

    refresher = Refresher(cache, fetch, max_batch=100, delay=0.01)
    pupils = [f"p{i}" for i in range(250)]
    refresher.add(pupils)
    refresher.add(pupils[:10])  # already on their way: not asked twice
    await asyncio.sleep(0.1)
    assert sorted(len(b) for b in asked) == [50, 100, 100]
    assert cache.fresh("p7") == b'{"pupil_id":"p7","v":2}' and not cache.refreshing

    fail["now"] = True
    refresher.add(["p1"])
    await asyncio.sleep(0.1)
    assert cache.fresh("p1") == b'{"pupil_id":"p1","v":2}', "a failed refresh leaves the entry as it was"
    assert not cache.refreshing, "and the pupil may be asked for again"


async def test_cold_reads_asked_for_meanwhile_are_read_together() -> None:
    from contracts.kit.gather import ReadGatherer

    reads: list[list[str]] = []
    gate = asyncio.Event()

    async def read(pupil_ids: list[str]) -> dict[str, bytes]:
        reads.append(pupil_ids)
        await gate.wait()
        if "bad" in pupil_ids:
            raise RuntimeError("database away")
        return {pid: pid.encode() for pid in pupil_ids}

    gatherer = ReadGatherer(read, parallel=1)
    first = asyncio.create_task(gatherer.get(["a"]))
    await asyncio.sleep(0)
    later = [asyncio.create_task(gatherer.get(ids)) for ids in (["b", "c"], ["c", "d"], ["e"])]
    await asyncio.sleep(0)
    gate.set()
    assert await first == {"a": b"a"}
    assert [await t for t in later] == [{"b": b"b", "c": b"c"}, {"c": b"c", "d": b"d"}, {"e": b"e"}]
    assert reads == [["a"], ["b", "c", "d", "e"]], "one read for everything that waited"

    with pytest.raises(RuntimeError):
        await gatherer.get(["bad", "f"])
    assert await gatherer.get(["f"]) == {"f": b"f"}, "a failed read leaves nothing behind"

    async def sparse(keys: list[str]) -> dict[str, bytes]:
        return {k: k.encode() for k in keys if k != "gone"}

    assert await ReadGatherer(sparse).get(["here", "gone"]) == {"here": b"here", "gone": None}
    assert await ReadGatherer(sparse).one("gone") is None


async def test_a_caller_that_gives_up_leaves_no_error_for_nobody_to_retrieve() -> None:
    from contracts.kit.gather import ReadGatherer

    gate = asyncio.Event()

    async def read(keys: list[str]) -> dict[str, bytes]:
        await gate.wait()
        if "bad" in keys:
            raise RuntimeError("database away")
        return {k: k.encode() for k in keys}

    loop = asyncio.get_running_loop()
    stray: list[str] = []
    loop.set_exception_handler(lambda _loop, context: stray.append(context["message"]))
    try:
        gatherer = ReadGatherer(read, parallel=1)
        blocker = asyncio.create_task(gatherer.get(["x"]))
        await asyncio.sleep(0)
        # Waits for the read in flight, then gives up before its own read fails.
        quitter = asyncio.create_task(gatherer.get(["a", "bad"]))
        await asyncio.sleep(0)
        quitter.cancel()
        await asyncio.sleep(0)
        gate.set()
        assert await blocker == {"x": b"x"}
        assert quitter.cancelled()
        assert await gatherer.get(["a", "c"]) == {"a": b"a", "c": b"c"}, "the next read answers"
        del quitter
        gc.collect()
        assert stray == [], "no error left behind for nobody to retrieve"
    finally:
        loop.set_exception_handler(None)
