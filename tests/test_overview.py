"""Overview: the numbers parents see, from platform events in any order, over a real NATS."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from helpers import eventually, log_events
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from contracts import linking, platform
from contracts.base import utcnow
from contracts.kit import consumer as consumer_module
from contracts.kit import rpc
from contracts.kit.db import Database
from contracts.kit.migrations import upgrade
from contracts.kit.service import migrate
from contracts.overview import GET, TARGET, ChildRequest, OverviewRequest
from overview import app as overview_app
from overview.projection import Batch, read_overviews, week_start

DEFAULTS = linking.default_link_templates("https://platform.example")


def ev(model, **fields):
    return model(**fields)


async def publish(js, subject: str, event, *, msg_id: str | None = None) -> None:
    await js.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id or uuid.uuid4().hex})


async def ask(nc, *pupil_ids: str) -> dict:
    reply = await rpc.call(nc, GET, OverviewRequest(pupil_ids=list(pupil_ids)), timeout=5)
    return {c.pupil_id: c for c in reply.children}


@pytest.fixture
async def overview(fresh_nats, database_url: str, tmp_path: Path):
    settings = overview_app.Settings(
        nats_url=fresh_nats.url,
        database_url=database_url,
        platform_url="https://platform.example",
        public_url="https://portal.example",
        data_dir=tmp_path,
    )
    await asyncio.to_thread(migrate, overview_app, settings)
    runtime = overview_app.build(settings)
    nc = await nats.connect(fresh_nats.url)
    async with runtime.running():
        yield runtime, nc, nc.jetstream()
    await nc.close()


async def test_numbers_are_the_same_whatever_the_order_or_repetition(overview) -> None:
    runtime, nc, js = overview
    now = utcnow()
    due = now + timedelta(days=2)
    events = [
        # A completion before its assignment; a read before its delivery.
        (platform.HOMEWORK_COMPLETED, ev(platform.HomeworkCompleted, homework_id="h1", pupil_id="amy")),
        (platform.MESSAGE_READ, ev(platform.MessageRead, message_id="m1", pupil_id="amy")),
        (
            platform.SCHOOL_UPSERTED,
            ev(platform.SchoolUpserted, trust_id="t", school_id="oak", name="Oak", timezone="Europe/London"),
        ),
        (
            platform.PUPIL_UPSERTED,
            ev(
                platform.PupilUpserted,
                school_id="oak",
                pupil_id="amy",
                first_name="Amy",
                last_name="S",
                class_ids=["3a"],
            ),
        ),
        (
            platform.HOMEWORK_ASSIGNED,
            ev(
                platform.HomeworkAssigned,
                homework_id="h1",
                school_id="oak",
                pupil_ids=["amy", "ben"],
                title="Fractions",
                due_at=due,
            ),
        ),
        (
            platform.HOMEWORK_ASSIGNED,
            ev(
                platform.HomeworkAssigned,
                homework_id="h2",
                school_id="oak",
                pupil_ids=["amy"],
                title="Spelling",
                due_at=due + timedelta(days=1),
            ),
        ),
        (
            platform.HOMEWORK_ASSIGNED,
            ev(
                platform.HomeworkAssigned,
                homework_id="h3",
                school_id="oak",
                pupil_ids=["amy"],
                title="Poem",
                due_at=now + timedelta(days=1),
            ),
        ),
        (
            platform.HOMEWORK_ASSIGNED,
            ev(
                platform.HomeworkAssigned,
                homework_id="h4",
                school_id="oak",
                pupil_ids=["amy"],
                title="Withdrawn one",
                due_at=due,
            ),
        ),
        (platform.HOMEWORK_WITHDRAWN, ev(platform.HomeworkWithdrawn, homework_id="h4")),
        (platform.MESSAGE_DELIVERED, ev(platform.MessageDelivered, message_id="m1", pupil_id="amy")),
        (platform.MESSAGE_DELIVERED, ev(platform.MessageDelivered, message_id="m2", pupil_id="amy")),
        (platform.MESSAGE_DELIVERED, ev(platform.MessageDelivered, message_id="m3", pupil_id="amy")),
        (platform.STARS_AWARDED, ev(platform.StarsAwarded, award_id="s1", pupil_id="amy", stars=2, reason="kind")),
        (platform.STARS_AWARDED, ev(platform.StarsAwarded, award_id="s2", pupil_id="amy", stars=3, reason="maths")),
        (
            platform.STARS_AWARDED,
            ev(
                platform.StarsAwarded,
                award_id="s0",
                pupil_id="amy",
                stars=9,
                reason="old",
                occurred_at=now - timedelta(days=8),
            ),
        ),
    ]
    for subject, event in events:
        await publish(js, subject, event)
    # The same events again under new message ids, and the same facts under new event ids.
    for subject, event in events:
        await publish(js, subject, event)
    for subject, event in events:
        await publish(js, subject, event.model_copy(update={"event_id": uuid.uuid4().hex}))

    def right(got: dict) -> bool:
        # Amy's numbers do not depend on h1's assignment (she completed it): Ben's do.
        amy, ben = got["amy"], got["ben"]
        return (amy.outstanding_homework, amy.unread_messages, amy.stars_this_week, ben.outstanding_homework) == (
            2,
            2,
            5,
            1,
        )

    got = await eventually(lambda: _asked_if(nc, right, "amy", "ben"), timeout=15)
    amy, ben = got["amy"], got["ben"]
    assert [d.title for d in amy.next_due] == ["Poem", "Spelling"]
    assert (ben.outstanding_homework, ben.unread_messages, ben.stars_this_week) == (1, 0, 0)
    # The buttons lead through the portal's signed handoff.
    assert amy.links.homework == "https://portal.example/go/amy/homework"


async def test_an_event_the_database_refuses_holds_back_none_of_its_batch(
    overview, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A title longer than the projection keeps: PostgreSQL refuses the row (SQLite keeps it).
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite does not enforce a column's length")
    runtime, nc, js = overview
    # A message given back comes again only after a minute: what is applied below was applied
    # at its first delivery.
    monkeypatch.setattr(consumer_module, "backoff_delay", lambda deliveries: 60.0)
    due = utcnow() + timedelta(days=2)
    events = [
        (platform.HOMEWORK_ASSIGNED, ev(platform.HomeworkAssigned, homework_id="h1", school_id="oak",
                                        pupil_ids=["zoe"], title="Fractions", due_at=due)),
        (platform.HOMEWORK_ASSIGNED, ev(platform.HomeworkAssigned, homework_id="h2", school_id="oak",
                                        pupil_ids=["zoe"], title="x" * 600, due_at=due)),
        (platform.MESSAGE_DELIVERED, ev(platform.MessageDelivered, message_id="m1", pupil_id="zoe")),
    ]  # fmt: skip
    # Published while the consumer is stopped, so that they come in one batch.
    consumer = next(c for c in runtime.consumers if c.durable == "overview-platform")
    await consumer.stop()
    for subject, event in events:
        await publish(js, subject, event)
    await consumer.start()

    async def applied() -> bool:
        zoe = (await ask(nc, "zoe"))["zoe"]
        return (zoe.outstanding_homework, zoe.unread_messages) == (1, 1)

    # Retried one by one at once, each folded again on its own: not after the batch's redelivery.
    await eventually(applied, timeout=10, message="the batch's other events applied")
    assert [d.title for d in (await ask(nc, "zoe"))["zoe"].next_due] == ["Fractions"]


async def test_batches_written_at_once_land_every_event_once_without_holding_each_other_back(
    overview, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, nc, js = overview
    consumer = next(c for c in runtime.consumers if c.durable == "overview-platform")
    assert consumer.writers == 2
    pupils = [f"p{i}" for i in range(20)]
    due = utcnow() + timedelta(days=2)
    events = [
        (
            platform.HOMEWORK_ASSIGNED,
            ev(
                platform.HomeworkAssigned,
                homework_id=f"h{h}",
                school_id="oak",
                pupil_ids=pupils,
                title=f"Task {h}",
                due_at=due,
            ),
        )
        for h in range(20)
    ]
    for p in pupils:
        events += [
            (platform.HOMEWORK_COMPLETED, ev(platform.HomeworkCompleted, homework_id=f"h{h}", pupil_id=p))
            for h in range(10)
        ]
        events += [
            (platform.MESSAGE_DELIVERED, ev(platform.MessageDelivered, message_id=f"m{m}", pupil_id=p))
            for m in range(40)
        ]
        events += [(platform.MESSAGE_READ, ev(platform.MessageRead, message_id=f"m{m}", pupil_id=p)) for m in range(20)]
        events += [
            (platform.STARS_AWARDED, ev(platform.StarsAwarded, award_id=f"{p}-a{a}", pupil_id=p, stars=1))
            for a in range(10)
        ]
    events = events * 2  # each again under another message id
    random.Random(7).shuffle(events)  # every batch shares rows with the others, in no order
    # Published while the consumer is stopped, then taken 200 at a time: 20 batches, two
    # written at once.
    await consumer.stop()
    consumer.batch_size = 200
    writing, most = 0, 0
    apply = consumer._apply

    async def counted(items, parsed=None):
        nonlocal writing, most
        writing += 1
        most = max(most, writing)
        try:
            await apply(items, parsed)
        finally:
            writing -= 1

    monkeypatch.setattr(consumer, "_apply", counted)
    logged = log_events(monkeypatch, consumer_module)
    for subject, event in events:
        await publish(js, subject, event)
    await consumer.start()

    def right(got: dict) -> bool:
        return all((c.outstanding_homework, c.unread_messages, c.stars_this_week) == (10, 20, 10) for c in got.values())

    await eventually(lambda: _asked_if(nc, right, *pupils), timeout=30, message="every pupil's numbers")
    assert most == 2
    # No batch failed (a deadlock would have had one retried, or its events one by one).
    assert "batch_failed_retrying_singly" not in logged and "batch_retried_after_conflict" not in logged


async def _asked_if(nc, predicate, *pupils):
    got = await ask(nc, *pupils)
    return got if predicate(got) else None


async def test_changes_reach_a_cached_overview_and_school_links(overview) -> None:
    runtime, nc, js = overview
    await publish(
        js,
        platform.PUPIL_UPSERTED,
        ev(platform.PupilUpserted, school_id="elm", pupil_id="cat", first_name="Cat", last_name="T"),
    )
    first = await ask(nc, "cat", "nobody")
    assert (
        first["nobody"].outstanding_homework == 0
        and first["nobody"].links.files == "https://portal.example/go/nobody/files"
    )
    nobody = await rpc.call(nc, TARGET, ChildRequest(pupil_id="nobody"), timeout=5)
    assert nobody.files == "https://platform.example/files?pupil=nobody&token={token}"
    await publish(js, platform.STARS_AWARDED, ev(platform.StarsAwarded, award_id="x1", pupil_id="cat", stars=4))
    await eventually(lambda: _asked_if(nc, lambda g: g["cat"].stars_this_week == 4, "cat"), timeout=10)
    settings = linking.SchoolSettingsChanged(
        school_id="elm",
        changed=["files_url"],
        max_carers_per_code=4,
        printed_code_days=30,
        invitation_days=14,
        aup_version="1",
        homework_url="https://elm.example/hw/{pupil_id}",
        files_url="https://elm.example/files/{pupil_id}",
        messages_url="https://elm.example/msg/{pupil_id}",
        email_parent_on_removal=False,
    )
    await publish(js, linking.SCHOOL_SETTINGS_CHANGED, settings)

    async def target():
        got = await rpc.call(nc, TARGET, ChildRequest(pupil_id="cat"), timeout=5)
        return got if got.files.startswith("https://elm") else None

    got = await eventually(target, timeout=10)
    # The school's templates, with a place for the handoff's token where they have none.
    assert (got.school_id, got.homework, got.files, got.messages) == (
        "elm",
        "https://elm.example/hw/cat?token={token}",
        "https://elm.example/files/cat?token={token}",
        "https://elm.example/msg/cat?token={token}",
    )


def test_week_starts_on_monday_midnight_in_the_schools_zone_across_dst() -> None:
    # Clocks went forward in the UK on Sunday 29 March 2026 at 01:00 GMT.
    assert week_start(datetime(2026, 3, 30, 0, 30, tzinfo=UTC), "Europe/London") == datetime(
        2026, 3, 29, 23, 0, tzinfo=UTC
    )
    # ... and back on Sunday 25 October 2026 at 02:00 BST.
    assert week_start(datetime(2026, 10, 25, 12, 0, tzinfo=UTC), "Europe/London") == datetime(
        2026, 10, 18, 23, 0, tzinfo=UTC
    )
    assert week_start(datetime(2026, 10, 26, 0, 30, tzinfo=UTC), "Europe/London") == datetime(
        2026, 10, 26, 0, 0, tzinfo=UTC
    )
    assert week_start(datetime(2026, 10, 26, 9, 0, tzinfo=UTC), "Australia/Sydney") == datetime(
        2026, 10, 25, 13, 0, tzinfo=UTC
    )


async def test_stars_this_week_across_the_spring_dst_change(database_url: str) -> None:
    await asyncio.to_thread(upgrade, overview_app.MIGRATIONS, database_url)
    engine = create_async_engine(database_url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    monday_bst = datetime(2026, 3, 29, 23, 0, tzinfo=UTC)  # Monday 30 March 00:00 BST
    batch = Batch()
    batch.add(
        platform.SCHOOL_UPSERTED,
        platform.SchoolUpserted(trust_id="t", school_id="oak", name="Oak", timezone="Europe/London"),
    )
    batch.add(
        platform.PUPIL_UPSERTED, platform.PupilUpserted(school_id="oak", pupil_id="amy", first_name="A", last_name="S")
    )
    batch.add(
        platform.PUPIL_UPSERTED,
        platform.PupilUpserted(school_id="nowhere", pupil_id="utc-kid", first_name="U", last_name="K"),
    )
    for award, at, stars in [
        ("sunday-late", monday_bst - timedelta(minutes=30), 1),  # Sunday 23:30 BST: last week
        ("monday-early", monday_bst + timedelta(minutes=30), 2),  # Monday 00:30 BST: this week
        ("wednesday", monday_bst + timedelta(days=2), 4),
    ]:
        for pupil in ("amy", "utc-kid"):
            batch.add(
                platform.STARS_AWARDED,
                platform.StarsAwarded(award_id=f"{award}-{pupil}", pupil_id=pupil, stars=stars, occurred_at=at),
            )
    async with sessions() as s, s.begin():
        await batch.write(s)
    await engine.dispose()
    db = Database(database_url)
    try:
        got = await read_overviews(db, ["amy", "utc-kid"], now=monday_bst + timedelta(days=3), defaults=DEFAULTS)
    finally:
        await db.dispose()
    assert got["amy"].stars_this_week == 6
    # Counted in UTC (the school's zone is unknown), Monday 00:30 BST is still Sunday.
    assert got["utc-kid"].stars_this_week == 4


def test_an_answer_read_before_a_change_is_not_cached() -> None:
    from overview.cache import OverviewCache

    cache = OverviewCache(ttl=60)
    stale = ChildOverviewFactory.make("amy", stars=1)
    version = cache.version("amy")  # a read starts ...
    cache.forget(["amy"])  # ... the pupil's events are applied meanwhile ...
    cache.put(stale, version)  # ... and the read finishes with the old numbers
    assert cache.get("amy") is None
    version = cache.version("amy")
    cache.put(ChildOverviewFactory.make("amy", stars=2), version)
    assert b'"stars_this_week":2' in cache.get("amy")
    version = cache.version("amy")
    cache.clear()
    cache.put(stale, version)
    assert cache.get("amy") is None


class ChildOverviewFactory:
    @staticmethod
    def make(pupil_id: str, *, stars: int):
        from contracts.overview import ChildOverview, Links

        return ChildOverview(
            pupil_id=pupil_id,
            outstanding_homework=0,
            unread_messages=0,
            stars_this_week=stars,
            next_due=[],
            links=Links(homework="h", files="f", messages="m"),
            as_of=utcnow(),
        )
