"""The consumer's own pull requests and its one-statement duplicate check, on a real
nats-server and real databases."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from sqlalchemy import func, select

from contracts.kit.consumer import Puller, claim_events
from contracts.kit.db import Database
from contracts.kit.tables import KIT_METADATA, processed_events


@pytest.fixture
async def pull(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    name = f"PULL{uuid.uuid4().hex[:8]}"
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    await js.add_consumer(name, ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=10_000))
    puller = Puller(nc, name, "d")
    await puller.start()
    yield puller, js, name
    await puller.stop()
    await js.delete_stream(name)
    await nc.close()


async def test_a_fetch_takes_what_is_there_up_to_the_batch(pull) -> None:
    puller, js, name = pull
    for i in range(25):
        await js.publish(f"{name}.x", str(i).encode())
    seen = []
    for expected in (10, 10, 5):
        msgs = await puller.fetch(10, timeout=2)
        assert len(msgs) == expected
        seen += [int(m.data) for m in msgs]
        for m in msgs:
            await m.ack()
    assert seen == list(range(25))
    started = time.monotonic()
    assert await puller.fetch(10, timeout=0.3) == []
    assert time.monotonic() - started < 1


async def test_an_idle_fetch_returns_with_the_first_message_to_come(pull) -> None:
    puller, js, name = pull

    async def later() -> None:
        await asyncio.sleep(0.3)
        await js.publish(f"{name}.x", b"late")

    task = asyncio.create_task(later())
    started = time.monotonic()
    msgs = await puller.fetch(100, timeout=5)
    assert [m.data for m in msgs] == [b"late"] and time.monotonic() - started < 2
    await msgs[0].ack()
    await task
    # One at a time, each soon after it was published: no fetch waits for a batch to fill.
    for i in range(5):
        await js.publish(f"{name}.x", str(i).encode())
        started = time.monotonic()
        msgs = await puller.fetch(100, timeout=5)
        assert [m.data for m in msgs] == [str(i).encode()] and time.monotonic() - started < 1
        await msgs[0].ack()


async def test_a_refused_pull_raises_so_the_loop_backs_off(pull) -> None:
    puller, js, name = pull
    await js.delete_consumer(name, "d")
    with pytest.raises(nats.errors.Error, match="refused"):
        await puller.fetch(10, timeout=2)


async def test_claims_are_once_per_consumer_and_forgotten_on_rollback(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(KIT_METADATA.create_all)
        async with db.session() as s:
            assert await claim_events(s, "c1", ["a", "b", "a"]) == {"a", "b"}
            assert await claim_events(s, "c1", ["a", "c"]) == {"c"}
            assert await claim_events(s, "c2", ["a"]) == {"a"}
            assert await claim_events(s, "c1", []) == set()
        with pytest.raises(RuntimeError):
            async with db.session() as s:
                assert await claim_events(s, "c1", ["d"]) == {"d"}
                raise RuntimeError("the batch failed")
        async with db.session() as s:
            assert await claim_events(s, "c1", ["d", "a"]) == {"d"}
        async with db.reader() as s:
            rows = (await s.execute(select(processed_events))).all()
            assert sorted((r.consumer, r.event_id) for r in rows) == [
                ("c1", "a"), ("c1", "b"), ("c1", "c"), ("c1", "d"), ("c2", "a"),
            ]  # fmt: skip
            assert all(r.processed_at.tzinfo is not None for r in rows)
        big = [uuid.uuid4().hex for _ in range(5000)]
        async with db.session() as s:
            assert await claim_events(s, "c3", big) == set(big)
        async with db.reader() as s:
            n = (await s.execute(select(func.count()).where(processed_events.c.consumer == "c3"))).scalar_one()
            assert n == 5000
    finally:
        await db.dispose()
