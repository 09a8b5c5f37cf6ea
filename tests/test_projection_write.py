"""The projection's bulk writes on both databases (one array a column on PostgreSQL): newer
roster facts win, flags only ever turn on, whatever the order of the batches."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from contracts import linking, platform
from contracts.base import utcnow
from contracts.kit.db import Database
from contracts.kit.migrations import upgrade
from overview.projection import Batch
from overview.tables import Homework, HomeworkPupil, Pupil, PupilMessage, School, StarAward


async def _write(db: Database, *events: tuple[str, object]) -> set[str]:
    batch = Batch()
    for subject, ev in events:
        batch.add(subject, ev)
    async with db.session() as s:
        return await batch.write(s)


async def test_batches_in_any_order_give_the_same_rows(database_url: str) -> None:
    await asyncio.to_thread(upgrade, "overview:migrations", database_url)
    db = Database(database_url)
    now = utcnow()
    old, new = now - timedelta(hours=1), now
    due = now + timedelta(days=3)
    try:
        await _write(
            db,
            (
                platform.SCHOOL_UPSERTED,
                platform.SchoolUpserted(
                    trust_id="t", school_id="oak", name="Oak", timezone="Europe/Paris", occurred_at=new
                ),
            ),
            (
                platform.PUPIL_UPSERTED,
                platform.PupilUpserted(school_id="oak", pupil_id="amy", first_name="A", last_name="S", occurred_at=new),
            ),
            (platform.HOMEWORK_WITHDRAWN, platform.HomeworkWithdrawn(homework_id="h1")),
            (platform.HOMEWORK_COMPLETED, platform.HomeworkCompleted(homework_id="h1", pupil_id="amy")),
            (platform.MESSAGE_READ, platform.MessageRead(message_id="m1", pupil_id="amy")),
            (platform.STARS_AWARDED, platform.StarsAwarded(award_id="s1", pupil_id="amy", stars=2, occurred_at=new)),
        )
        touched = await _write(
            db,
            # Older roster facts than those already written: ignored.
            (
                platform.SCHOOL_UPSERTED,
                platform.SchoolUpserted(
                    trust_id="t", school_id="oak", name="Oak", timezone="Europe/London", occurred_at=old
                ),
            ),
            (
                platform.PUPIL_UPSERTED,
                platform.PupilUpserted(school_id="elm", pupil_id="amy", first_name="A", last_name="S", occurred_at=old),
            ),
            (
                platform.HOMEWORK_ASSIGNED,
                platform.HomeworkAssigned(
                    homework_id="h1", school_id="oak", pupil_ids=["amy", "ben"], title="Fractions", due_at=due
                ),
            ),
            (platform.MESSAGE_DELIVERED, platform.MessageDelivered(message_id="m1", pupil_id="amy")),
            (platform.MESSAGE_DELIVERED, platform.MessageDelivered(message_id="m2", pupil_id="amy")),
            # The same award again, other numbers: the first one stays.
            (platform.STARS_AWARDED, platform.StarsAwarded(award_id="s1", pupil_id="amy", stars=9, occurred_at=old)),
            (linking.SCHOOL_SETTINGS_CHANGED, _settings("oak", "https://oak.example/{pupil_id}", old)),
        )
        assert {"amy", "ben"} <= touched
        await _write(
            db,
            (
                linking.SCHOOL_SETTINGS_CHANGED,
                _settings("oak", "https://older.example/{pupil_id}", old - timedelta(hours=1)),
            ),
        )
        async with db.reader() as s:
            school = (await s.execute(select(School))).scalar_one()
            assert (school.timezone, school.homework_url) == ("Europe/Paris", "https://oak.example/{pupil_id}")
            assert (await s.execute(select(Pupil.school_id))).scalar_one() == "oak"
            hw = (await s.execute(select(Homework))).scalar_one()
            assert (hw.title, hw.withdrawn, hw.due_at) == ("Fractions", True, due)
            flags = {(r.pupil_id, r.assigned, r.completed) for r in (await s.execute(select(HomeworkPupil))).scalars()}
            assert flags == {("amy", True, True), ("ben", True, False)}
            msgs = {(r.message_id, r.delivered, r.read) for r in (await s.execute(select(PupilMessage))).scalars()}
            assert msgs == {("m1", True, True), ("m2", True, False)}
            award = (await s.execute(select(StarAward))).scalar_one()
            assert (award.stars, award.awarded_at) == (2, new)
    finally:
        await db.dispose()


def _assigned(title: str, at, *, description: str | None = None) -> tuple[str, platform.HomeworkAssigned]:
    return (
        platform.HOMEWORK_ASSIGNED,
        platform.HomeworkAssigned(
            homework_id="h1",
            school_id="oak",
            pupil_ids=["amy"],
            title=title,
            due_at=at + timedelta(days=7),
            description=description,
            occurred_at=at,
        ),
    )


async def test_the_latest_assignment_says_what_the_homework_is_whatever_the_order(database_url: str) -> None:
    # overview keeps no processed-event record: an assignment redelivered after a newer one
    # (a crash before its acknowledgement) must not bring the old title back.
    await asyncio.to_thread(upgrade, "overview:migrations", database_url)
    db = Database(database_url)
    now = utcnow()
    first, second, third = now - timedelta(hours=2), now - timedelta(hours=1), now

    async def homework() -> tuple:
        async with db.reader() as s:
            hw = (await s.execute(select(Homework))).scalar_one()
            return hw.title, hw.description, hw.due_at, hw.withdrawn

    try:
        # In one batch, newest first.
        await _write(db, _assigned("Fractions, corrected", second, description="p. 12"), _assigned("Fractions", first))
        assert await homework() == ("Fractions, corrected", "p. 12", second + timedelta(days=7), False)
        # The older one again, alone, later.
        await _write(db, _assigned("Fractions", first))
        assert await homework() == ("Fractions, corrected", "p. 12", second + timedelta(days=7), False)
        # A withdrawal says nothing about what it is.
        await _write(db, (platform.HOMEWORK_WITHDRAWN, platform.HomeworkWithdrawn(homework_id="h1")))
        assert await homework() == ("Fractions, corrected", "p. 12", second + timedelta(days=7), True)
        # A newer assignment says all of it, a description it no longer has included.
        await _write(db, _assigned("Decimals", third))
        assert await homework() == ("Decimals", None, third + timedelta(days=7), True)
        await _write(db, _assigned("Fractions, corrected", second, description="p. 12"))
        assert await homework() == ("Decimals", None, third + timedelta(days=7), True)
    finally:
        await db.dispose()


def _settings(school_id: str, url: str, at) -> linking.SchoolSettingsChanged:
    return linking.SchoolSettingsChanged(
        school_id=school_id,
        changed=["homework_url"],
        max_carers_per_code=4,
        printed_code_days=30,
        invitation_days=14,
        aup_version="1",
        homework_url=url,
        files_url=url,
        messages_url=url,
        email_parent_on_removal=False,
        occurred_at=at,
    )
