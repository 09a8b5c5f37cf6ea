"""One child in detail, read from the projections: homework, unread messages, a week's stars,
and where the portal's handoff sends each area. Each read takes many pupils at once, so that
concurrent requests are answered by one query (`contracts.kit.gather.ReadGatherer`)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import linking
from contracts.overview import (
    HandoffTarget,
    HomeworkItem,
    HomeworkReply,
    MessageItem,
    MessagesReply,
    StarAwardItem,
    StarsWeek,
)
from overview.tables import Homework, HomeworkPupil, Pupil, PupilMessage, School, StarAward

# Homework done this long ago still shows, marked done.
DONE_SHOWN = timedelta(days=14)
TOKEN_PLACEHOLDER = "{token}"


def _zone(name: str | None) -> tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


async def _schools(session: AsyncSession, ids: list[str]) -> dict[str, School | None]:
    """Each pupil's school row (None when unknown)."""
    rows = await session.execute(
        select(col(Pupil.pupil_id), School)
        .select_from(Pupil)
        .join(School, col(School.school_id) == col(Pupil.school_id), isouter=True)
        .where(col(Pupil.pupil_id).in_(ids))
    )
    found: dict[str, School | None] = dict.fromkeys(ids)
    for pid, school in rows.tuples():
        found[pid] = school
    return found


async def read_homework(session: AsyncSession, ids: list[str], *, now: datetime) -> dict[str, HomeworkReply]:
    """Outstanding and overdue homework by due date, then what was done in the last 14 days
    (latest first); withdrawn homework is not shown."""
    rows = await session.execute(
        select(
            col(HomeworkPupil.pupil_id),
            col(HomeworkPupil.completed),
            col(HomeworkPupil.completed_at),
            col(Homework.homework_id),
            col(Homework.title),
            col(Homework.description),
            col(Homework.due_at),
        )
        .join(Homework, col(Homework.homework_id) == col(HomeworkPupil.homework_id))
        .where(
            col(HomeworkPupil.pupil_id).in_(ids),
            col(HomeworkPupil.assigned).is_(True),
            col(Homework.withdrawn).is_(False),
            col(Homework.title).is_not(None),
            col(Homework.due_at).is_not(None),
            or_(
                col(HomeworkPupil.completed).is_(False),
                col(HomeworkPupil.completed_at) >= now - DONE_SHOWN,
            ),
        )
        .order_by(col(Homework.due_at), col(Homework.homework_id))
    )
    todo: dict[str, list[HomeworkItem]] = defaultdict(list)
    done: dict[str, list[tuple[datetime, HomeworkItem]]] = defaultdict(list)
    for r in rows:
        item = HomeworkItem(
            homework_id=r.homework_id,
            title=r.title,
            description=r.description,
            due_at=r.due_at,
            status="done" if r.completed else "overdue" if r.due_at < now else "outstanding",
        )
        if r.completed:
            done[r.pupil_id].append((r.completed_at, item))
        else:
            todo[r.pupil_id].append(item)
    return {
        pid: HomeworkReply(
            items=[*todo[pid], *(item for _, item in sorted(done[pid], key=lambda d: d[0], reverse=True))]
        )
        for pid in ids
    }


async def read_messages(session: AsyncSession, ids: list[str]) -> dict[str, MessagesReply]:
    """Unread messages, newest first (those the platform gave no time last)."""
    rows = await session.execute(
        select(
            col(PupilMessage.pupil_id),
            col(PupilMessage.message_id),
            col(PupilMessage.from_name),
            col(PupilMessage.subject),
            col(PupilMessage.sent_at),
        ).where(
            col(PupilMessage.pupil_id).in_(ids),
            col(PupilMessage.delivered).is_(True),
            col(PupilMessage.read).is_(False),
        )
    )
    found: dict[str, list[MessageItem]] = defaultdict(list)
    for r in rows:
        found[r.pupil_id].append(
            MessageItem(message_id=r.message_id, from_name=r.from_name, subject=r.subject, sent_at=r.sent_at)
        )
    oldest = datetime.min.replace(tzinfo=UTC)
    return {
        pid: MessagesReply(items=sorted(found[pid], key=lambda m: (m.sent_at or oldest, m.message_id), reverse=True))
        for pid in ids
    }


def star_key(pupil_id: str, week: date | None) -> str:
    """A stars read's key: the pupil and the week asked for ("" for this week)."""
    return f"{week.isoformat() if week else ''}|{pupil_id}"


async def read_stars(session: AsyncSession, keys: list[str], *, now: datetime) -> dict[str, StarsWeek]:
    """Each key's (`star_key`) week of stars, in the pupil's school's timezone; as the overview's
    "stars this week", an award counts from its `occurred_at` on, not before."""
    asked = [(k, *k.split("|", 1)) for k in keys]
    schools = await _schools(session, list({pid for _, _, pid in asked}))
    spans: dict[str, tuple[str, date, datetime, datetime]] = {}
    for key, week, pid in asked:
        school = schools.get(pid)
        tz = _zone(school.timezone if school else None)
        day = date.fromisoformat(week) if week else now.astimezone(tz).date()
        monday = day - timedelta(days=day.weekday())
        start = datetime.combine(monday, time(0), tzinfo=tz).astimezone(UTC)
        end = datetime.combine(monday + timedelta(days=7), time(0), tzinfo=tz).astimezone(UTC)
        spans[key] = (pid, monday, start, end)
    lo = min(s[2] for s in spans.values())
    hi = max(s[3] for s in spans.values())
    rows = await session.execute(
        select(StarAward)
        .where(
            and_(
                col(StarAward.pupil_id).in_(list({s[0] for s in spans.values()})),
                col(StarAward.awarded_at) >= lo,
                col(StarAward.awarded_at) < hi,
            )
        )
        .order_by(col(StarAward.awarded_at), col(StarAward.award_id))
    )
    awards: dict[str, list[StarAward]] = defaultdict(list)
    for (award,) in rows.tuples():
        awards[award.pupil_id].append(award)
    out = {}
    for key, (pid, monday, start, end) in spans.items():
        mine = [
            StarAwardItem(award_id=a.award_id, stars=a.stars, reason=a.reason, at=a.awarded_at)
            for a in awards[pid]
            if start <= a.awarded_at < end and a.awarded_at <= now
        ]
        out[key] = StarsWeek(week_start=monday, total=sum(a.stars for a in mine), awards=mine)
    return out


def with_token(template: str) -> str:
    """A school's template with a `{token}` place: one it has, else `token=` appended."""
    if TOKEN_PLACEHOLDER in template:
        return template
    return f"{template}{'&' if '?' in template else '?'}token={TOKEN_PLACEHOLDER}"


async def read_targets(session: AsyncSession, ids: list[str], *, defaults: dict[str, str]) -> dict[str, HandoffTarget]:
    """Each pupil's school and where its link templates lead, `{pupil_id}` filled in."""
    schools = await _schools(session, ids)
    rows = await session.execute(select(col(Pupil.pupil_id), col(Pupil.school_id)).where(col(Pupil.pupil_id).in_(ids)))
    school_ids = {pid: sid or None for pid, sid in rows.tuples()}
    out = {}
    for pid in ids:
        school = schools.get(pid)

        def target(name: str) -> str:
            template = (getattr(school, name, None) if school else None) or defaults[name]  # noqa: B023 - called within the iteration
            return with_token(template).replace(linking.PUPIL_PLACEHOLDER, pid)  # noqa: B023 - called within the iteration

        out[pid] = HandoffTarget(
            pupil_id=pid,
            school_id=school_ids.get(pid),
            homework=target("homework_url"),
            files=target("files_url"),
            messages=target("messages_url"),
        )
    return out
