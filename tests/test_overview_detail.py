"""One child in detail from overview: homework with its status, unread messages with their
sender, a week's stars with reasons, and where the handoff leads; the new optional event fields
dead-lettered when mistyped, and events without them as before."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date, timedelta
from pathlib import Path

import nats
import pytest
from helpers import eventually

from contracts import platform
from contracts.base import utcnow
from contracts.kit import rpc
from contracts.kit.deadletters import list_dead_letters
from contracts.kit.service import migrate
from contracts.overview import HOMEWORK, MESSAGES, STARS, TARGET, ChildRequest, StarsRequest
from overview import app as overview_app


async def publish(js, subject: str, body: dict | object) -> None:
    data = json.dumps(body).encode() if isinstance(body, dict) else body.model_dump_json().encode()  # type: ignore[attr-defined]
    await js.publish(subject, data, headers={"Nats-Msg-Id": uuid.uuid4().hex})


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
        yield nc, nc.jetstream()
    await nc.close()


async def test_homework_messages_and_stars_of_one_child(overview) -> None:
    nc, js = overview
    now = utcnow()
    await publish(
        js,
        platform.SCHOOL_UPSERTED,
        platform.SchoolUpserted(trust_id="t", school_id="oak", name="Oak", timezone="Europe/London"),
    )
    await publish(
        js,
        platform.PUPIL_UPSERTED,
        platform.PupilUpserted(school_id="oak", pupil_id="amy", first_name="Amy", last_name="S"),
    )

    def homework(hid: str, title: str, due, **more) -> platform.HomeworkAssigned:
        return platform.HomeworkAssigned(
            homework_id=hid, school_id="oak", pupil_ids=["amy"], title=title, due_at=due, **more
        )

    for event in (
        homework("late", "Times tables", now - timedelta(days=1), description="Page 12"),
        homework("soon", "Spelling", now + timedelta(days=1)),
        homework("later", "Poem", now + timedelta(days=5)),
        homework("done-recently", "Map", now - timedelta(days=3)),
        homework("done-long-ago", "Volcano", now - timedelta(days=40)),
        homework("gone", "Withdrawn", now + timedelta(days=2)),
    ):
        await publish(js, platform.HOMEWORK_ASSIGNED, event)
    await publish(js, platform.HOMEWORK_WITHDRAWN, platform.HomeworkWithdrawn(homework_id="gone"))
    await publish(
        js, platform.HOMEWORK_COMPLETED, platform.HomeworkCompleted(homework_id="done-recently", pupil_id="amy")
    )
    await publish(
        js,
        platform.HOMEWORK_COMPLETED,
        platform.HomeworkCompleted(homework_id="done-long-ago", pupil_id="amy", occurred_at=now - timedelta(days=30)),
    )
    # Messages: with the new fields, without them (as before), one read.
    await publish(
        js,
        platform.MESSAGE_DELIVERED,
        platform.MessageDelivered(
            message_id="m-old", pupil_id="amy", from_name="Mr Jones", subject="Trip", sent_at=now - timedelta(days=2)
        ),
    )
    await publish(
        js,
        platform.MESSAGE_DELIVERED,
        platform.MessageDelivered(
            message_id="m-new", pupil_id="amy", from_name="Ms Patel", subject="Well done", sent_at=now
        ),
    )
    await publish(js, platform.MESSAGE_DELIVERED, platform.MessageDelivered(message_id="m-bare", pupil_id="amy"))
    await publish(js, platform.MESSAGE_DELIVERED, platform.MessageDelivered(message_id="m-read", pupil_id="amy"))
    await publish(js, platform.MESSAGE_READ, platform.MessageRead(message_id="m-read", pupil_id="amy"))
    last_week = now - timedelta(days=7)
    # Dated later than now: it counts from then on, like the overview's stars this week.
    await publish(
        js,
        platform.STARS_AWARDED,
        platform.StarsAwarded(
            award_id="s-later", pupil_id="amy", stars=7, reason="Later", occurred_at=now + timedelta(minutes=10)
        ),
    )
    await publish(
        js, platform.STARS_AWARDED, platform.StarsAwarded(award_id="s1", pupil_id="amy", stars=2, reason="Kind")
    )
    await publish(
        js, platform.STARS_AWARDED, platform.StarsAwarded(award_id="s2", pupil_id="amy", stars=3, reason="Maths")
    )
    await publish(
        js,
        platform.STARS_AWARDED,
        platform.StarsAwarded(award_id="s0", pupil_id="amy", stars=9, reason="Reading", occurred_at=last_week),
    )

    async def all_there():
        stars = await rpc.call(nc, STARS, StarsRequest(pupil_id="amy"), timeout=5)
        return stars if stars.total == 5 else None

    stars = await eventually(all_there, timeout=15)
    assert stars.week_start.weekday() == 0
    assert sorted((a.award_id, a.stars, a.reason) for a in stars.awards) == [("s1", 2, "Kind"), ("s2", 3, "Maths")]

    before = await rpc.call(nc, STARS, StarsRequest(pupil_id="amy", week=last_week.date()), timeout=5)
    assert (before.total, [a.reason for a in before.awards]) == (9, ["Reading"])
    assert before.week_start == stars.week_start - timedelta(days=7)

    got = await rpc.call(nc, HOMEWORK, ChildRequest(pupil_id="amy"), timeout=5)
    assert [(h.homework_id, h.status) for h in got.items] == [
        ("late", "overdue"),
        ("soon", "outstanding"),
        ("later", "outstanding"),
        ("done-recently", "done"),
    ]
    assert got.items[0].description == "Page 12" and got.items[1].description is None

    messages = await rpc.call(nc, MESSAGES, ChildRequest(pupil_id="amy"), timeout=5)
    assert [(m.message_id, m.from_name, m.subject) for m in messages.items] == [
        ("m-new", "Ms Patel", "Well done"),
        ("m-old", "Mr Jones", "Trip"),
        ("m-bare", None, None),
    ]

    # A pupil overview has never heard of: nothing, not an error.
    nobody = await rpc.call(nc, HOMEWORK, ChildRequest(pupil_id="nobody"), timeout=5)
    assert nobody.items == []
    target = await rpc.call(nc, TARGET, ChildRequest(pupil_id="amy"), timeout=5)
    assert (target.school_id, target.messages) == ("oak", "https://platform.example/messages?pupil=amy&token={token}")
    assert (await rpc.call(nc, STARS, StarsRequest(pupil_id="amy", week=date(2020, 1, 1)), timeout=5)).total == 0


async def test_mistyped_new_fields_are_dead_lettered(overview) -> None:
    nc, js = overview
    now = utcnow().isoformat()
    base = {"event_id": uuid.uuid4().hex, "occurred_at": now}
    await publish(
        js,
        platform.HOMEWORK_ASSIGNED,
        {
            **base,
            "homework_id": "h-bad",
            "school_id": "oak",
            "pupil_ids": ["amy"],
            "title": "Bad",
            "due_at": now,
            "description": 42,
        },
    )
    await publish(
        js,
        platform.MESSAGE_DELIVERED,
        {**base, "event_id": uuid.uuid4().hex, "message_id": "m-bad", "pupil_id": "amy", "sent_at": "yesterday"},
    )
    # Without the new fields: applied as before.
    await publish(
        js,
        platform.MESSAGE_DELIVERED,
        {"event_id": uuid.uuid4().hex, "occurred_at": now, "message_id": "m-ok", "pupil_id": "amy"},
    )

    async def letters():
        found = await list_dead_letters(js)
        return found if len(found) == 2 else None

    found = await eventually(letters, timeout=20)
    assert sorted(dl.subject for dl in found) == [platform.HOMEWORK_ASSIGNED, platform.MESSAGE_DELIVERED]

    async def applied():
        messages = await rpc.call(nc, MESSAGES, ChildRequest(pupil_id="amy"), timeout=5)
        return [m.message_id for m in messages.items] or None

    assert await eventually(applied, timeout=10) == ["m-ok"]
    homework = await rpc.call(nc, HOMEWORK, ChildRequest(pupil_id="amy"), timeout=5)
    assert homework.items == []
