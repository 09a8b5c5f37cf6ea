"""Idempotent consumers, acknowledgement on purpose, dead letters and request/reply, against a
real nats-server and real databases."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from pathlib import Path

import kitapp
import nats
import pytest
from helpers import eventually, log_events
from kitapp import emit_things, outbox_count, spawn
from pydantic import ConfigDict
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.base import Event, Message, Rpc
from contracts.kit import consumer as consumer_module
from contracts.kit import rpc
from contracts.kit.deadletters import DeadLetterNotFound, list_dead_letters, replay_dead_letter
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.streams import ensure_streams


async def _totals(url_or_runtime, expected: tuple[int, int]) -> bool:
    got = await kitapp.read_totals(url_or_runtime)
    assert got[1] <= expected[1], f"applied {got[1]} times for {expected[1]} events"
    return got == expected


@pytest.mark.slow
async def test_consumer_killed_mid_batch_applies_every_effect_once(
    database_url: str, fresh_nats, tmp_path: Path
) -> None:
    producer_db = f"sqlite+aiosqlite:///{tmp_path / 'producer.db'}"
    await kitapp.create_schema(producer_db)
    await kitapp.create_schema(database_url)
    producer = kitapp.build(kitapp.KitSettings(nats_url=fresh_nats.url, database_url=producer_db), consume=False)
    n = 2000
    await emit_things(producer, n, per_tx=500)
    async with producer.running():
        await eventually(lambda: _relayed(producer), timeout=30)

    consumer = spawn("consume", database_url, fresh_nats.url, "--batch-size", "50")
    try:
        await eventually(lambda: _applied_at_least(database_url, 300), timeout=30, interval=0.01)
        consumer.send_signal(signal.SIGKILL)
        consumer.wait()
        amount, applied = await kitapp.read_totals(database_url)
        assert 300 <= applied < n, "the kill should land mid-stream"
        consumer = spawn("consume", database_url, fresh_nats.url, "--batch-size", "50")
        expected = (sum(range(n)), n)
        await eventually(lambda: _totals(database_url, expected), timeout=60)

        # A replay of the whole stream (a new consumer with the same name) changes nothing.
        consumer.terminate()
        consumer.wait(10)
        nc = await nats.connect(fresh_nats.url)
        await nc.jetstream().delete_consumer(kitapp.STREAM.name, kitapp.DURABLE)
        consumer = spawn("consume", database_url, fresh_nats.url, "--batch-size", "50")
        await eventually(lambda: _consumer_caught_up(nc, n), timeout=60)
        assert await kitapp.read_totals(database_url) == expected
        await nc.close()
    finally:
        consumer.terminate()
        consumer.wait(10)


async def _relayed(producer) -> bool:
    return await outbox_count(producer) == 0


async def _applied_at_least(url: str, n: int) -> bool:
    try:
        return (await kitapp.read_totals(url))[1] >= n
    except Exception:  # noqa: BLE001 - the consumer may not have created its table yet
        return False


async def _consumer_caught_up(nc, n: int) -> bool:
    try:
        info = await nc.jetstream().consumer_info(kitapp.STREAM.name, kitapp.DURABLE)
    except Exception:  # noqa: BLE001 - not created yet
        return False
    return info.delivered.consumer_seq >= n and info.num_ack_pending == 0 and info.num_pending == 0


async def test_same_event_under_two_message_ids_is_applied_once(database_url: str, nats_server) -> None:
    await kitapp.create_schema(database_url)
    consumer = kitapp.build(kitapp.KitSettings(nats_url=nats_server.url, database_url=database_url), consume=True)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js, [kitapp.STREAM])
    await js.purge_stream(kitapp.STREAM.name)
    try:
        await js.delete_consumer(kitapp.STREAM.name, kitapp.DURABLE)
    except Exception:  # noqa: BLE001 - first run
        pass
    run = uuid.uuid4().hex  # message ids unique to this run: the stream remembers ids for 2 minutes
    event = kitapp.ThingHappened(key="twice", amount=7)
    body = event.model_dump_json().encode()
    async with consumer.running():
        # Beyond the stream's duplicate window a publisher's retry carries a new message id.
        await js.publish(kitapp.SUBJECT, body, headers={"Nats-Msg-Id": f"first-attempt-{run}"})
        await js.publish(kitapp.SUBJECT, body, headers={"Nats-Msg-Id": f"second-attempt-{run}"})
        # And the same in one batch as well as in separate ones.
        other = kitapp.ThingHappened(key="other", amount=5).model_dump_json().encode()
        await js.publish(kitapp.SUBJECT, other, headers={"Nats-Msg-Id": f"o1-{run}"})
        await js.publish(kitapp.SUBJECT, other, headers={"Nats-Msg-Id": f"o2-{run}"})
        await eventually(lambda: _consumer_caught_up(nc, 4), timeout=10)
        assert await kitapp.read_totals(consumer) == (12, 2)
    await nc.close()


class Locks(Event):
    """Takes the given rows' locks, in this order."""

    rows: list[str]


LOCKS = "kittest.locks.taken.v1"


async def test_batches_written_at_once_that_deadlock_are_each_applied_whole(
    database_url: str, nats_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite lets one transaction write at a time: nothing to deadlock")
    await kitapp.create_schema(database_url)
    runtime = ServiceRuntime(
        kitapp.KitSettings(nats_url=nats_server.url, database_url=database_url),
        version="0",
        description="kit test service",
        streams=[kitapp.STREAM],
    )
    # Two transactions at the same point: each holds its first row and wants the other's.
    arrived: set[str] = set()
    both = asyncio.Event()

    async def take(uow, batch) -> None:
        for _, event in batch:
            for i, row in enumerate(event.rows):
                await uow.session.execute(
                    update(kitapp.totals).where(kitapp.totals.c.name == row).values(applied=kitapp.totals.c.applied + 1)
                )
                if i == 0 and event.event_id not in arrived:
                    arrived.add(event.event_id)
                    if len(arrived) == 2:
                        both.set()
                    await asyncio.wait_for(both.wait(), 10)

    consumer = runtime.consume(
        stream=kitapp.STREAM, subject=LOCKS, durable="kittest-locks", schemas={LOCKS: Locks},
        batch_handler=take, claims=False, writers=2, batch_size=1, title="locks", description="Takes row locks.",
    )  # fmt: skip
    logged = log_events(monkeypatch, consumer_module)
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(delete(kitapp.totals))
        await conn.execute(insert(kitapp.totals), [{"name": n, "amount": 0, "applied": 0} for n in ("a", "b")])
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js, [kitapp.STREAM])
    await js.purge_stream(kitapp.STREAM.name)
    with contextlib.suppress(Exception):  # first run
        await js.delete_consumer(kitapp.STREAM.name, consumer.durable)
    await js.publish(LOCKS, Locks(rows=["a", "b"]).model_dump_json().encode())
    await js.publish(LOCKS, Locks(rows=["b", "a"]).model_dump_json().encode())

    async def applied() -> tuple[int, ...] | None:
        async with engine.connect() as conn:
            got = tuple((await conn.execute(select(kitapp.totals.c.applied).order_by(kitapp.totals.c.name))).scalars())
        return got if got == (2, 2) else None

    try:
        async with runtime.running():
            # PostgreSQL ends the deadlock after a second by failing one transaction: that
            # batch goes again at once, whole, rather than waiting for its redelivery.
            await eventually(applied, timeout=8, message="both events applied once")
        assert logged.count("batch_retried_after_conflict") == 1
        assert "event_retry" not in logged and "batch_failed_retrying_singly" not in logged
    finally:
        await nc.close()
        await engine.dispose()


async def test_poison_messages_go_to_dead_letters_and_can_be_replayed(tmp_path: Path, fresh_nats) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    await kitapp.create_schema(url)
    consumer = kitapp.build(
        kitapp.KitSettings(nats_url=fresh_nats.url, database_url=url), consume=True, max_deliveries=3
    )
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    kitapp.BLOCKED.add("blocked")
    try:
        async with consumer.running():
            await js.publish(kitapp.SUBJECT, b"{not json", headers={"Nats-Msg-Id": "garbage"})
            await js.publish(kitapp.SUBJECT, kitapp.ThingHappened(key="blocked", amount=100).model_dump_json().encode())
            await js.publish(kitapp.SUBJECT, kitapp.ThingHappened(key="fine", amount=1).model_dump_json().encode())
            # The good message is not held back by the bad ones.
            await eventually(lambda: _totals(consumer, (1, 1)), timeout=10)
            started = time.monotonic()
            letters = await eventually(lambda: _letters(js, 2), timeout=30)
            assert time.monotonic() - started < 20, "retries should back off for seconds, not minutes"
            by_error = {dl.error.split(":")[0]: dl for dl in letters}
            assert set(by_error) == {"ValidationError", "LookupError"}
            blocked = by_error["LookupError"]
            assert blocked.consumer == kitapp.DURABLE and blocked.service == "kittest"
            assert blocked.subject == kitapp.SUBJECT and int(blocked.deliveries) == 3
            assert "blocked" in blocked.error  # our own message, not the payload
            assert await kitapp.read_totals(consumer) == (1, 1)

            # The operator fixes the cause and replays: applied once, and gone from the list.
            kitapp.BLOCKED.clear()
            await replay_dead_letter(js, blocked.id)
            await eventually(lambda: _totals(consumer, (101, 2)), timeout=10)
            remaining = await list_dead_letters(js)
            assert [dl.id for dl in remaining] == [by_error["ValidationError"].id]
            with pytest.raises(DeadLetterNotFound):
                await replay_dead_letter(js, blocked.id)
    finally:
        kitapp.BLOCKED.clear()
        await nc.close()


async def _letters(js, n: int):
    letters = await list_dead_letters(js)
    return letters if len(letters) >= n else None


class Anything(Message):
    """A request of whatever shape (to send what a service cannot parse)."""

    model_config = ConfigDict(extra="allow")


EXPLODE = Rpc(
    "rpc.kittest.explode.v1", kitapp.ThingHappened, kitapp.ThingHappened, title="explode", description="Always fails."
)
COUNT = Rpc("rpc.kittest.count.v1", kitapp.ThingHappened, kitapp.ThingHappened, title="count", description="Counts.")


async def test_rpc_errors_are_replies_within_the_deadline(nats_server, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    await kitapp.create_schema(url)
    runtime = kitapp.build(kitapp.KitSettings(nats_url=nats_server.url, database_url=url), consume=False)

    async def explode(req: kitapp.ThingHappened) -> kitapp.ThingHappened:
        if req.key == "refuse":
            raise rpc.RpcFailure(
                "not_allowed", "refused on purpose", fields=rpc.field_errors(key="refused"), retry_after=7
            )
        raise RuntimeError("boom")

    runtime.serve(EXPLODE, explode)

    nc = await nats.connect(nats_server.url)
    async with runtime.running():
        started = time.monotonic()
        with pytest.raises(rpc.RpcError) as err:
            await rpc.call(nc, EXPLODE, kitapp.ThingHappened(key="x"), timeout=5)
        assert time.monotonic() - started < 1.0, "an error reply, not a timeout"
        assert err.value.code == "internal_error"
        assert "boom" not in err.value.detail  # no internals leak to callers

        with pytest.raises(rpc.RpcError) as err:
            await rpc.call(nc, EXPLODE, kitapp.ThingHappened(key="refuse"), timeout=5)
        assert (err.value.code, err.value.detail) == ("not_allowed", "refused on purpose")
        assert [(f.field, f.message) for f in err.value.fields] == [("key", "refused")]
        assert err.value.retry_after == 7

        with pytest.raises(rpc.RpcError) as err:
            await rpc.call(nc, EXPLODE, Anything(amount="many"), timeout=5)
        assert err.value.code == "invalid_request"
        assert "key" in err.value.detail and "amount" in err.value.detail

        raw = await nc.request("rpc.kittest.explode.v1", json.dumps({"key": "refuse"}).encode(), timeout=5)
        assert raw.headers["Portal-Error"] == "not_allowed"
    await nc.close()


async def test_rpc_replicas_share_requests_in_a_queue_group(nats_server, tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    replicas = []
    for i in range(2):
        url = f"sqlite+aiosqlite:///{tmp_path / f'q{i}.db'}"
        await kitapp.create_schema(url)
        runtime = kitapp.build(kitapp.KitSettings(nats_url=nats_server.url, database_url=url), consume=False)

        def make(name: str):
            async def count(req: kitapp.ThingHappened) -> kitapp.ThingHappened:
                calls[name] = calls.get(name, 0) + 1
                return req

            return count

        runtime.serve(COUNT, make(f"r{i}"))
        replicas.append(runtime)
    nc = await nats.connect(nats_server.url)
    async with replicas[0].running(), replicas[1].running():
        for i in range(40):
            reply = await rpc.call(nc, COUNT, kitapp.ThingHappened(key=f"q{i}"))
            assert reply.key == f"q{i}"
    await nc.close()
    assert sum(calls.values()) == 40, "each request handled by exactly one replica"
    assert set(calls) == {"r0", "r1"}, "both replicas take a share"
