"""The roster copy: schools, classes and pupils from the platform's events.

Events may come twice (the kit's processed-event record drops those) and out of order: each
row keeps the `occurred_at` of the event that last wrote it, and an older event changes
nothing. Nothing waits for anything else: a class before its school, or a pupil before its
classes, is kept as it came and joins up once the rest arrives.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import platform
from contracts.base import Event, utcnow
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from linking.tables import ClassMember, LinkCode, Pupil, School, SchoolClass, Trust

log = get_logger("linking.roster")

# The durable consumer of `platform.roster.*`: its processed events say what is applied.
CONSUMER = "linking-roster"

SCHEMAS: dict[str, type[Event]] = {
    platform.SCHOOL_UPSERTED: platform.SchoolUpserted,
    platform.CLASS_UPSERTED: platform.ClassUpserted,
    platform.CLASS_REMOVED: platform.ClassRemoved,
    platform.PUPIL_UPSERTED: platform.PupilUpserted,
    platform.PUPIL_LEFT: platform.PupilLeft,
    # platform.roster.staff.* belongs to identity: acknowledged unread by the consumer.
}

# Links.on_pupil_left: the pupil's links end in the same transaction as the departure.
PupilLeftHook = Callable[[UnitOfWork, str, datetime], Awaitable[None]]
# Links.on_pupil_moved(uow, pupil_id, school_id): what the pupil's earlier schools gave ends.
PupilMovedHook = Callable[[UnitOfWork, str, str], Awaitable[None]]


def _newer(incoming: datetime, stored: datetime | None) -> bool:
    # Equal times apply too: the later-arriving of two simultaneous events wins, the same
    # way on every replica because the stream delivers them in one order.
    return stored is None or incoming >= stored


@dataclass
class _Batch:
    """The rows a batch of events touches, read once; the events then change them in order."""

    s: AsyncSession
    trusts: dict[str, Trust]
    schools: dict[str, School]
    classes: dict[str, SchoolClass]
    pupils: dict[str, Pupil]
    memberships: dict[str, list[str]] = field(
        default_factory=dict
    )  # pupil -> its classes, from the newest applied upsert
    left: list[tuple[str, datetime]] = field(default_factory=list)
    moved: set[str] = field(default_factory=set)  # pupils whose school changed

    @classmethod
    async def read(cls, s: AsyncSession, items: list[tuple[str, Event]]) -> _Batch:
        """One query per kind for the whole batch; the ORM's identity map then holds them."""
        trust_ids = {e.trust_id for _, e in items if isinstance(e, platform.SchoolUpserted)}
        school_ids = {e.school_id for _, e in items if isinstance(e, platform.SchoolUpserted)}
        class_ids = {e.class_id for _, e in items if isinstance(e, platform.ClassUpserted)}
        pupil_ids = {e.pupil_id for _, e in items if isinstance(e, (platform.PupilUpserted, platform.PupilLeft))}
        trusts = (
            {
                t.trust_id: t
                for t in (await s.execute(select(Trust).where(col(Trust.trust_id).in_(trust_ids)))).scalars()
            }
            if trust_ids
            else {}
        )
        schools = (
            {
                x.school_id: x
                for x in (await s.execute(select(School).where(col(School.school_id).in_(school_ids)))).scalars()
            }
            if school_ids
            else {}
        )
        classes = (
            {
                c.class_id: c
                for c in (
                    await s.execute(select(SchoolClass).where(col(SchoolClass.class_id).in_(class_ids)))
                ).scalars()
            }
            if class_ids
            else {}
        )
        pupils = (
            {
                p.pupil_id: p
                for p in (await s.execute(select(Pupil).where(col(Pupil.pupil_id).in_(pupil_ids)))).scalars()
            }
            if pupil_ids
            else {}
        )
        return cls(s, trusts, schools, classes, pupils)

    def school_upserted(self, ev: platform.SchoolUpserted) -> None:
        """A school (and its trust, named or not) as the event says, if it is newer."""
        at = ev.occurred_at
        trust = self.trusts.get(ev.trust_id)
        if trust is None:
            trust = self.trusts[ev.trust_id] = Trust(trust_id=ev.trust_id, name=ev.trust_name, version_at=at)
            self.s.add(trust)
        elif ev.trust_name and _newer(at, trust.version_at):
            trust.name, trust.version_at = ev.trust_name, at
        school = self.schools.get(ev.school_id)
        if school is None:
            self.schools[ev.school_id] = School(
                school_id=ev.school_id, trust_id=ev.trust_id, name=ev.name, timezone=ev.timezone, version_at=at
            )
            self.s.add(self.schools[ev.school_id])
        elif _newer(at, school.version_at):
            school.trust_id, school.name, school.timezone, school.version_at = ev.trust_id, ev.name, ev.timezone, at

    def class_upserted(self, ev: platform.ClassUpserted) -> None:
        """A class as the event says, if it is newer."""
        at = ev.occurred_at
        cls = self.classes.get(ev.class_id)
        if cls is None:
            self.classes[ev.class_id] = SchoolClass(
                class_id=ev.class_id, school_id=ev.school_id, name=ev.name, version_at=at
            )
            self.s.add(self.classes[ev.class_id])
        elif _newer(at, cls.version_at):
            cls.school_id, cls.name, cls.version_at = ev.school_id, ev.name, at

    def pupil_upserted(self, ev: platform.PupilUpserted) -> None:
        """A pupil and their classes as the event says, if it is newer; a pupil who left is back."""
        at = ev.occurred_at
        pupil = self.pupils.get(ev.pupil_id)
        if pupil is None:
            pupil = self.pupils[ev.pupil_id] = Pupil(pupil_id=ev.pupil_id)
            self.s.add(pupil)
        if not _newer(at, pupil.version_at):
            return
        if pupil.school_id and pupil.school_id != ev.school_id:
            self.moved.add(ev.pupil_id)
        pupil.school_id, pupil.first_name, pupil.last_name, pupil.version_at = (
            ev.school_id,
            ev.first_name,
            ev.last_name,
            at,
        )
        if pupil.left_at is not None and at > pupil.left_at:
            pupil.left_at = None  # upserted after leaving: the pupil is back
        self.memberships[ev.pupil_id] = list(dict.fromkeys(ev.class_ids))

    def pupil_left(self, ev: platform.PupilLeft) -> None:
        """A pupil left, unless a newer upsert brought them back."""
        at = ev.occurred_at
        pupil = self.pupils.get(ev.pupil_id)
        if pupil is None:
            # Left before we heard of it: remember, so a late older upsert keeps it left.
            pupil = self.pupils[ev.pupil_id] = Pupil(pupil_id=ev.pupil_id, left_at=at)
            self.s.add(pupil)
            self.left.append((ev.pupil_id, at))
        elif pupil.version_at is not None and at < pupil.version_at:
            return  # an upsert after this departure brought the pupil back
        elif pupil.left_at is None or at > pupil.left_at:
            pupil.left_at = at
            self.left.append((ev.pupil_id, at))


async def apply_batch(
    uow: UnitOfWork,
    items: list[tuple[str, Event]],
    *,
    on_pupil_left: PupilLeftHook | None = None,
    on_pupil_moved: PupilMovedHook | None = None,
) -> None:
    """Apply a batch of roster events in one transaction, in stream order."""
    s = uow.session
    batch = await _Batch.read(s, items)
    for _, ev in items:
        if isinstance(ev, platform.SchoolUpserted):
            batch.school_upserted(ev)
        elif isinstance(ev, platform.ClassUpserted):
            batch.class_upserted(ev)
        elif isinstance(ev, platform.PupilUpserted):
            batch.pupil_upserted(ev)
        elif isinstance(ev, platform.PupilLeft):
            batch.pupil_left(ev)

    await s.flush()
    if batch.memberships:
        await s.execute(delete(ClassMember).where(col(ClassMember.pupil_id).in_(list(batch.memberships))))
        rows = [{"class_id": c, "pupil_id": p} for p, cs in batch.memberships.items() for c in cs]
        if rows:
            await s.execute(insert(ClassMember), rows)
    for pupil_id in sorted(batch.moved):
        # Moved within the batch, perhaps more than once: what counts is the school now.
        school_id = batch.pupils[pupil_id].school_id
        await revoke_pupil_codes(uow, pupil_id, except_school_id=school_id)
        if on_pupil_moved is not None:
            await on_pupil_moved(uow, pupil_id, school_id)
        log.info("pupil_moved", pupil_id=pupil_id, school_id=school_id)
    for pupil_id, at in batch.left:
        await revoke_pupil_codes(uow, pupil_id)
        if on_pupil_left is not None:
            await on_pupil_left(uow, pupil_id, at)
        log.info("pupil_left", pupil_id=pupil_id)


async def revoke_pupil_codes(uow: UnitOfWork, pupil_id: str, *, except_school_id: str | None = None) -> None:
    """Stop every code of a pupil who left (nobody can link a pupil who is not at the school),
    or, for a pupil who moved, every code of the schools they left (`except_school_id`: the
    school they are at now, whose codes stay)."""
    where = [col(LinkCode.pupil_id) == pupil_id, col(LinkCode.revoked_at).is_(None)]
    if except_school_id is not None:
        where.append(col(LinkCode.school_id) != except_school_id)
    await uow.session.execute(update(LinkCode).where(*where).values(revoked_at=utcnow(), live_pupil_id=None))


async def class_name(s: AsyncSession, pupil_id: str, preferred: str | None = None) -> str:
    """The name of the pupil's class: `preferred` if they are in it, else the first by name."""
    rows = (
        await s.execute(
            select(col(SchoolClass.class_id), col(SchoolClass.name))
            .join(ClassMember, col(ClassMember.class_id) == col(SchoolClass.class_id))
            .where(col(ClassMember.pupil_id) == pupil_id)
            .order_by(col(SchoolClass.name))
        )
    ).all()
    for class_id, name in rows:
        if class_id == preferred:
            return name
    return rows[0][1] if rows else ""
