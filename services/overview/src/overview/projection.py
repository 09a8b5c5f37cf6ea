"""Applying platform events to the projections, and reading a pupil's overview from them.

A batch of events is folded in memory first (per natural key, flags OR-ed together), then
written with one bulk upsert per table: thousands of events a second, and the same result
whatever the order or repetition of the events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from operator import itemgetter
from typing import Any, NamedTuple, cast
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from sqlalchemy import ColumnElement, Table, TypeDecorator, and_, bindparam, case, column, func, or_, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import JSON
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import TypeEngine, UserDefinedType
from sqlmodel import col

from contracts import linking, platform
from contracts.base import Event
from contracts.kit.db import Database, dialect_name, utc
from contracts.overview import ChildOverview, DueItem, Links
from overview.tables import Homework, HomeworkPupil, Pupil, PupilMessage, School, StarAward

NEXT_DUE = 3


def week_start(now: datetime, zone: str | None) -> datetime:
    """Monday 00:00 of `now`'s week in the school's zone, as a UTC instant (DST-safe)."""
    try:
        tz = ZoneInfo(zone) if zone else UTC
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    local = now.astimezone(tz)
    monday = local.date() - timedelta(days=local.weekday())
    return datetime.combine(monday, time(0), tzinfo=tz).astimezone(UTC)


# The insert of either dialect: both have the ON CONFLICT clauses and `excluded`.
Upsert = PgInsert | SqliteInsert


async def _upsert(
    session: AsyncSession, table: Table, rows: list[dict], on_conflict: Callable[[Upsert], Upsert]
) -> None:
    """Insert `rows` (dicts with the same keys) into `table`; `on_conflict` adds the ON CONFLICT
    clause to the insert it is given (its `excluded` names the incoming row)."""
    if dialect_name(session) != "postgresql":
        await session.execute(on_conflict(sqlite_insert(table)), rows)
        return
    # On PostgreSQL, one statement for all rows, which arrive as one JSON document: an
    # executemany runs the statement once per row on the server and binds every row's values in
    # SQLAlchemy; one array a column (the way before) had asyncpg encode every value, 3 µs of
    # this process's CPU a row against 0.7 µs to encode the JSON (the database reads either in
    # the same time). This process is what limits the rate, the database is not.
    cols = list(rows[0])
    # In the order of the table's key: batches written at once (the consumer's `writers`) then
    # lock the rows they share in the same order, and never wait on each other in a circle.
    rows = sorted(rows, key=itemgetter(*(c.name for c in table.primary_key.columns)))
    records = (
        func.json_to_recordset(sql_cast(bindparam("rows", _json(rows).decode(), type_=_AsIs()), JSON))
        .table_valued(*(column(c, _plain(table.c[c].type)) for c in cols))
        .render_derived(name="r", with_types=True)
    )
    source = select(*(records.c[c] for c in cols))
    await session.execute(on_conflict(pg_insert(table).from_select(cols, source)))


# Events' timestamps are aware (`AwareDatetime`): encoded with their offset, read as such.
_json = msgspec.json.Encoder().encode


class _AsIs(UserDefinedType):
    """A parameter handed to the driver as it is (the statement casts it to its type)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return ""

    def bind_processor(self, dialect: Dialect) -> None:
        return None


def _plain(column_type: TypeEngine) -> TypeEngine:
    # The database's own type of a column, for the record's definition.
    return column_type.impl_instance if isinstance(column_type, TypeDecorator) else column_type


def _newer_assignment(t: Any, stmt: Upsert) -> ColumnElement[bool]:
    incoming = stmt.excluded.assigned_at
    return and_(incoming.is_not(None), or_(t.assigned_at.is_(None), incoming >= t.assigned_at))


class Batch:
    """Events folded per natural key, ready to be written."""

    def __init__(self) -> None:
        self.schools: dict[str, dict] = {}
        self.settings: dict[str, dict] = {}
        self.pupils: dict[str, dict] = {}
        self.left: dict[str, datetime] = {}
        self.homework: dict[str, dict] = {}
        self.homework_pupils: dict[tuple[str, str], dict] = defaultdict(
            lambda: {"assigned": False, "completed": False, "completed_at": None}
        )
        self.messages: dict[tuple[str, str], dict] = defaultdict(
            lambda: {"delivered": False, "read": False, "from_name": None, "subject": None, "sent_at": None}
        )
        self.awards: dict[str, dict] = {}
        self.touched: set[str] = set()
        self.touched_schools: set[str] = set()

    @staticmethod
    def _newer(current: dict | None, at: datetime) -> bool:
        return current is None or at >= current["at"]

    def _pupil_upserted(self, ev: platform.PupilUpserted) -> None:
        if self._newer(self.pupils.get(ev.pupil_id), ev.occurred_at):
            self.pupils[ev.pupil_id] = {"school_id": ev.school_id, "at": ev.occurred_at}
        self.touched.add(ev.pupil_id)

    def _pupil_left(self, ev: platform.PupilLeft) -> None:
        if ev.pupil_id not in self.left or ev.occurred_at > self.left[ev.pupil_id]:
            self.left[ev.pupil_id] = ev.occurred_at

    def _school_upserted(self, ev: platform.SchoolUpserted) -> None:
        if self._newer(self.schools.get(ev.school_id), ev.occurred_at):
            self.schools[ev.school_id] = {"timezone": ev.timezone, "at": ev.occurred_at}
        self.touched_schools.add(ev.school_id)

    def _settings_changed(self, ev: linking.SchoolSettingsChanged) -> None:
        if self._newer(self.settings.get(ev.school_id), ev.occurred_at):
            self.settings[ev.school_id] = {
                "homework_url": ev.homework_url,
                "files_url": ev.files_url,
                "messages_url": ev.messages_url,
                "at": ev.occurred_at,
            }
        self.touched_schools.add(ev.school_id)

    def _homework_assigned(self, ev: platform.HomeworkAssigned) -> None:
        homework = self.homework.setdefault(ev.homework_id, {"withdrawn": False})
        # The latest assignment says what the homework is, whatever the order they arrive in.
        if homework.get("assigned_at") is None or ev.occurred_at >= homework["assigned_at"]:
            homework.update(
                school_id=ev.school_id,
                title=ev.title,
                due_at=ev.due_at,
                description=ev.description,
                assigned_at=ev.occurred_at,
            )
        for pupil_id in ev.pupil_ids:
            self.homework_pupils[(ev.homework_id, pupil_id)]["assigned"] = True
            self.touched.add(pupil_id)

    def _homework_completed(self, ev: platform.HomeworkCompleted) -> None:
        part = self.homework_pupils[(ev.homework_id, ev.pupil_id)]
        part["completed"] = True
        if part["completed_at"] is None or ev.occurred_at < part["completed_at"]:
            part["completed_at"] = ev.occurred_at
        self.touched.add(ev.pupil_id)

    def _homework_withdrawn(self, ev: platform.HomeworkWithdrawn) -> None:
        self.homework.setdefault(ev.homework_id, {"withdrawn": False})["withdrawn"] = True

    def _message_delivered(self, ev: platform.MessageDelivered) -> None:
        message = self.messages[(ev.message_id, ev.pupil_id)]
        message["delivered"] = True
        # Events without the optional fields leave what an earlier one said.
        for name in ("from_name", "subject", "sent_at"):
            if getattr(ev, name) is not None:
                message[name] = getattr(ev, name)
        self.touched.add(ev.pupil_id)

    def _message_read(self, ev: platform.MessageRead) -> None:
        self.messages[(ev.message_id, ev.pupil_id)]["read"] = True
        self.touched.add(ev.pupil_id)

    def _stars_awarded(self, ev: platform.StarsAwarded) -> None:
        self.awards.setdefault(
            ev.award_id,
            {"pupil_id": ev.pupil_id, "stars": ev.stars, "awarded_at": ev.occurred_at, "reason": ev.reason},
        )
        self.touched.add(ev.pupil_id)

    def add(self, subject: str, ev: Event) -> None:
        """Fold one event in (the consumers parse each subject into its own event class)."""
        fold = _FOLDS.get(subject)
        if fold is not None:
            fold(self, ev)

    async def write(self, session: AsyncSession) -> set[str]:
        """Upsert everything folded in; returns the pupils whose overview may have changed."""
        if self.schools:
            t = School.__table__.c
            await _upsert(
                session,
                School.__table__,
                [{"school_id": k, "timezone": v["timezone"], "roster_at": v["at"]} for k, v in self.schools.items()],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["school_id"],
                    set_={"timezone": stmt.excluded.timezone, "roster_at": stmt.excluded.roster_at},
                    where=func.coalesce(t.roster_at, stmt.excluded.roster_at) <= stmt.excluded.roster_at,
                ),
            )
        if self.settings:
            t = School.__table__.c
            cols = ("homework_url", "files_url", "messages_url")
            await _upsert(
                session,
                School.__table__,
                [{"school_id": k, **{c: v[c] for c in cols}, "settings_at": v["at"]} for k, v in self.settings.items()],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["school_id"],
                    set_={**{c: getattr(stmt.excluded, c) for c in cols}, "settings_at": stmt.excluded.settings_at},
                    where=func.coalesce(t.settings_at, stmt.excluded.settings_at) <= stmt.excluded.settings_at,
                ),
            )
        if self.pupils:
            t = Pupil.__table__.c
            await _upsert(
                session,
                Pupil.__table__,
                [{"pupil_id": k, "school_id": v["school_id"], "roster_at": v["at"]} for k, v in self.pupils.items()],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["pupil_id"],
                    set_={
                        "school_id": stmt.excluded.school_id,
                        "roster_at": stmt.excluded.roster_at,
                        # Upserted after leaving: the pupil is back.
                        "left_at": case((t.left_at < stmt.excluded.roster_at, None), else_=t.left_at),
                    },
                    where=func.coalesce(t.roster_at, stmt.excluded.roster_at) <= stmt.excluded.roster_at,
                ),
            )
        if self.left:
            t = Pupil.__table__.c
            # Left unless a newer upsert brought them back; a pupil not heard of yet is
            # remembered as left, so that an older upsert arriving late keeps them left.
            await _upsert(
                session,
                Pupil.__table__,
                [{"pupil_id": k, "school_id": "", "roster_at": None, "left_at": at} for k, at in self.left.items()],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["pupil_id"],
                    set_={"left_at": stmt.excluded.left_at},
                    where=and_(
                        func.coalesce(t.roster_at, stmt.excluded.left_at) < stmt.excluded.left_at,
                        func.coalesce(t.left_at, stmt.excluded.left_at) <= stmt.excluded.left_at,
                    ),
                ),
            )
        if self.homework:
            t = Homework.__table__.c
            await _upsert(
                session,
                Homework.__table__,
                [
                    {
                        "homework_id": k,
                        "school_id": v.get("school_id"),
                        "title": v.get("title"),
                        "due_at": v.get("due_at"),
                        "withdrawn": v["withdrawn"],
                        "description": v.get("description"),
                        "assigned_at": v.get("assigned_at"),
                    }
                    for k, v in self.homework.items()
                ],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["homework_id"],
                    set_={
                        **{
                            # An assignment at least as new as the one held replaces what it
                            # says; a withdrawal alone (no assignment) leaves it.
                            c: case((_newer_assignment(t, stmt), getattr(stmt.excluded, c)), else_=t[c])
                            for c in ("school_id", "title", "due_at", "description", "assigned_at")
                        },
                        "withdrawn": t.withdrawn | stmt.excluded.withdrawn,
                    },
                ),
            )
            # A withdrawal changes the overview of every pupil it was assigned to.
            withdrawn = [k for k, v in self.homework.items() if v["withdrawn"]]
            if withdrawn:
                rows = await session.execute(
                    select(col(HomeworkPupil.pupil_id)).where(col(HomeworkPupil.homework_id).in_(withdrawn))
                )
                self.touched.update(rows.scalars())
        if self.homework_pupils:
            t = HomeworkPupil.__table__.c
            await _upsert(
                session,
                HomeworkPupil.__table__,
                [{"homework_id": h, "pupil_id": p, **v} for (h, p), v in self.homework_pupils.items()],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["homework_id", "pupil_id"],
                    set_={
                        "assigned": t.assigned | stmt.excluded.assigned,
                        "completed": t.completed | stmt.excluded.completed,
                        # The earliest completion, whatever order they arrive in.
                        "completed_at": case(
                            (t.completed_at.is_(None), stmt.excluded.completed_at),
                            (stmt.excluded.completed_at.is_(None), t.completed_at),
                            (stmt.excluded.completed_at < t.completed_at, stmt.excluded.completed_at),
                            else_=t.completed_at,
                        ),
                    },
                ),
            )
        if self.messages:
            t = PupilMessage.__table__.c
            await _upsert(
                session,
                PupilMessage.__table__,
                [{"message_id": m, "pupil_id": p, **v} for (m, p), v in self.messages.items()],
                lambda stmt: stmt.on_conflict_do_update(
                    index_elements=["message_id", "pupil_id"],
                    set_={
                        "delivered": t.delivered | stmt.excluded.delivered,
                        "read": t.read | stmt.excluded.read,
                        "from_name": func.coalesce(stmt.excluded.from_name, t.from_name),
                        "subject": func.coalesce(stmt.excluded.subject, t.subject),
                        "sent_at": func.coalesce(stmt.excluded.sent_at, t.sent_at),
                    },
                ),
            )
        if self.awards:
            await _upsert(
                session,
                StarAward.__table__,
                [{"award_id": k, **v} for k, v in self.awards.items()],
                lambda stmt: stmt.on_conflict_do_nothing(index_elements=["award_id"]),
            )
        if self.touched_schools:
            rows = await session.execute(
                select(col(Pupil.pupil_id)).where(col(Pupil.school_id).in_(self.touched_schools))
            )
            self.touched.update(rows.scalars())
        return self.touched


# Each subject's fold, looked up once per event rather than matched against every subject in
# turn (thousands of events a second). Each consumer parses a subject into its own event class.
_FOLDS: dict[str, Callable[[Batch, Any], None]] = {
    platform.PUPIL_UPSERTED: Batch._pupil_upserted,  # noqa: SLF001 - the class's own table
    platform.PUPIL_LEFT: Batch._pupil_left,  # noqa: SLF001
    platform.SCHOOL_UPSERTED: Batch._school_upserted,  # noqa: SLF001
    linking.SCHOOL_SETTINGS_CHANGED: Batch._settings_changed,  # noqa: SLF001
    platform.HOMEWORK_ASSIGNED: Batch._homework_assigned,  # noqa: SLF001
    platform.HOMEWORK_COMPLETED: Batch._homework_completed,  # noqa: SLF001
    platform.HOMEWORK_WITHDRAWN: Batch._homework_withdrawn,  # noqa: SLF001
    platform.MESSAGE_DELIVERED: Batch._message_delivered,  # noqa: SLF001
    platform.MESSAGE_READ: Batch._message_read,  # noqa: SLF001
    platform.STARS_AWARDED: Batch._stars_awarded,  # noqa: SLF001
}


# The overview's read (`read_overviews`): every first visit of a busy morning that the gateways
# do not know yet comes here. One statement for the four things it needs, one row shape for all
# (what a row is, then its pupil), so that each read is one call of the driver: on SQLite each
# call is a trip to the driver's thread and back, on PostgreSQL a round trip, and four of them
# took longer than the queries. The first column says which (`_SCHOOL` ... `_AWARD`, written as
# numbers in the statement). Unused places are NULL, typed in the first branch, from which
# PostgreSQL takes each column's type.
_SCHOOL, _DUE, _UNREAD, _AWARD = 0, 1, 2, 3
_OVERVIEW_SQL = (
    "SELECT 0, p.pupil_id, s.timezone, s.homework_url, s.files_url, s.messages_url,"
    " CAST(NULL AS BIGINT), CAST(NULL AS TIMESTAMPTZ)"
    " FROM pupils p LEFT JOIN schools s ON s.school_id = p.school_id WHERE p.pupil_id IN {keys}"
    " UNION ALL"
    " SELECT 1, hp.pupil_id, h.title, h.homework_id, NULL, NULL, NULL, h.due_at"
    " FROM homework_pupils hp JOIN homework h ON h.homework_id = hp.homework_id"
    " WHERE hp.pupil_id IN {keys} AND hp.assigned AND NOT hp.completed AND NOT h.withdrawn AND h.title IS NOT NULL"
    " UNION ALL"
    " SELECT 2, m.pupil_id, NULL, NULL, NULL, NULL, COUNT(*), NULL"
    " FROM messages m WHERE m.pupil_id IN {keys} AND m.delivered AND NOT m.read GROUP BY m.pupil_id"
    " UNION ALL"
    # Each award of the last seven days, which hold every school's week so far (a week starts at
    # most seven days ago, whatever the zone): each pupil's own week is summed from them.
    " SELECT 3, a.pupil_id, NULL, NULL, NULL, NULL, a.stars, a.awarded_at"
    " FROM star_awards a WHERE a.pupil_id IN {keys} AND a.awarded_at >= {p1} AND a.awarded_at <= {p2}"
)


class _SchoolRow(NamedTuple):
    timezone: str | None
    homework_url: str | None
    files_url: str | None
    messages_url: str | None


async def read_overviews(
    db: Database, pupil_ids: list[str], *, now: datetime, defaults: dict[str, str], go: str | None = None
) -> dict[str, ChildOverview]:
    """The overview of each pupil, computed from the projections. With `go` (the portal's public
    URL) the links lead through the portal's signed handoff (`<go>/go/<pupil_id>/<area>`), which
    looks up the school's templates at the moment of the click."""
    if not pupil_ids:
        return {}
    ids = list(dict.fromkeys(pupil_ids))
    schools: dict[str, _SchoolRow] = {}
    outstanding: dict[str, list[tuple[datetime, str, str]]] = defaultdict(list)
    unread: dict[str, int] = {}
    awards: list[tuple[str, int, datetime]] = []
    rows = await db.read_keys(_OVERVIEW_SQL, ids, now - timedelta(days=7), now)
    for kind, pid, t1, t2, t3, t4, n, at in rows:
        if kind == _DUE:
            outstanding[pid].append((cast(datetime, utc(at)), t2, t1))
        elif kind == _AWARD:
            awards.append((pid, n, cast(datetime, utc(at))))
        elif kind == _UNREAD:
            unread[pid] = n
        elif kind == _SCHOOL:
            schools[pid] = _SchoolRow(t1, t2, t3, t4)
    # "This week" is each school's own week.
    starts = {pid: week_start(now, row.timezone if (row := schools.get(pid)) else None) for pid in ids}
    stars: dict[str, int] = defaultdict(int)
    for pid, count, awarded_at in awards:
        if awarded_at >= starts[pid]:
            stars[pid] += count
    out: dict[str, ChildOverview] = {}
    for pid in ids:
        row = schools.get(pid)

        def link(name: str) -> str:
            if go is not None:
                return f"{go}/go/{quote(pid, safe='')}/{name.removesuffix('_url')}"  # noqa: B023 - called within the iteration
            template = (getattr(row, name, None) if row else None) or defaults[name]  # noqa: B023 - called within the iteration
            return template.replace(linking.PUPIL_PLACEHOLDER, pid)  # noqa: B023 - called within the iteration

        items = sorted(outstanding.get(pid, ()))  # soonest due first; then by homework_id
        out[pid] = ChildOverview(
            pupil_id=pid,
            outstanding_homework=len(items),
            unread_messages=int(unread.get(pid, 0)),
            stars_this_week=int(stars.get(pid) or 0),
            next_due=[DueItem(title=t, due_at=d) for d, _, t in items[:NEXT_DUE]],
            links=Links(homework=link("homework_url"), files=link("files_url"), messages=link("messages_url")),
            as_of=now,
        )
    return out
