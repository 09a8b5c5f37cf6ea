"""The transactional outbox: every committed event reaches JetStream exactly once, through a
relay crash and through a NATS outage, with real processes, NATS, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import kitapp
import nats
import pytest
from helpers import eventually
from kitapp import emit_things, outbox_count, spawn
from nats.js.errors import NotFoundError

from contracts.kit.streams import ensure_streams


async def stream_count(js) -> int:
    try:
        return (await js.stream_info(kitapp.STREAM.name)).state.messages
    except NotFoundError:
        return 0


async def stream_event_ids(js) -> list[str]:
    info = await js.stream_info(kitapp.STREAM.name)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(kitapp.STREAM.name, seq)
        ids.append(kitapp.ThingHappened.model_validate_json(msg.data).event_id)
    return ids


@pytest.mark.slow
async def test_relay_killed_between_publish_and_delete_publishes_each_event_once(database_url: str, fresh_nats) -> None:
    await kitapp.create_schema(database_url)
    producer = kitapp.build(kitapp.KitSettings(nats_url=fresh_nats.url, database_url=database_url), consume=False)
    n = 3000
    ids = await emit_things(producer, n, per_tx=500)
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    await ensure_streams(js, [kitapp.STREAM])

    # Kill the relay with SIGKILL while it publishes, until a kill lands after a publish and
    # before the rows were deleted (some event both in the stream and still in the outbox).
    crossed = False
    for _ in range(8):
        relay = spawn("relay", database_url, fresh_nats.url)
        before = await stream_count(js)
        await eventually(lambda: _grew(js, before), timeout=30, interval=0.005)  # noqa: B023 - awaited within this iteration
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        in_stream, left = await stream_count(js), await outbox_count(producer)
        if in_stream + left > n:
            crossed = True
            break
        if left == 0:
            break
    assert crossed, "never killed the relay between a publish and its delete"

    relay = spawn("relay", database_url, fresh_nats.url)
    try:
        await eventually(lambda: _done(producer, js, n), timeout=60, message="outbox drained")
    finally:
        relay.terminate()
        relay.wait(10)
    published = await stream_event_ids(js)
    assert len(published) == n
    assert sorted(published) == sorted(ids)
    await nc.close()
    await producer.db.dispose()


async def _grew(js, before: int) -> bool:
    return await stream_count(js) > before + 50


async def _done(producer, js, n: int) -> bool:
    return await outbox_count(producer) == 0 and await stream_count(js) == n


@pytest.mark.slow
async def test_nats_stopped_for_ten_seconds_under_load_loses_and_doubles_nothing(fresh_nats, tmp_path: Path) -> None:
    producer_db = f"sqlite+aiosqlite:///{tmp_path / 'producer.db'}"
    consumer_db = f"sqlite+aiosqlite:///{tmp_path / 'consumer.db'}"
    await kitapp.create_schema(producer_db)
    await kitapp.create_schema(consumer_db)
    producer = kitapp.build(kitapp.KitSettings(nats_url=fresh_nats.url, database_url=producer_db), consume=False)
    consumer = kitapp.build(kitapp.KitSettings(nats_url=fresh_nats.url, database_url=consumer_db), consume=True)
    n = 1000
    async with producer.running(), consumer.running():

        async def changes() -> None:
            for i in range(n):
                async with producer.unit_of_work() as uow:
                    await uow.emit(kitapp.SUBJECT, kitapp.ThingHappened(key=f"k{i}", amount=i), aggregate="k")
                await asyncio.sleep(0.012)

        writer = asyncio.create_task(changes())
        await asyncio.sleep(1.0)
        fresh_nats.stop()
        await asyncio.sleep(10.0)
        fresh_nats.start()
        await writer
        await eventually(lambda: _totals_are(consumer, sum(range(n)), n), timeout=60, message="all applied")
    nc = await nats.connect(fresh_nats.url)
    assert await stream_count(nc.jetstream()) == n
    await nc.close()


async def _totals_are(runtime, amount: int, applied: int) -> bool:
    got = await kitapp.read_totals(runtime)
    assert got[1] <= applied, f"applied {got[1]} times for {applied} events"
    return got == (amount, applied)
