"""What `portal roster import --full` needs of linking: a school's pupils and classes now, and
the removal of a class the school's whole roster no longer has."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlmodel import col

from contracts import linking as contract
from contracts import platform
from contracts.base import Event
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from linking.context import LinkingContext
from linking.tables import ClassMember, Pupil, SchoolClass

log = get_logger("linking.full_roster")


async def apply_removals(uow: UnitOfWork, items: list[tuple[str, Event]]) -> None:
    """A removed class goes with its memberships (its pupils stay at the school), unless an
    upsert newer than the removal wrote it."""
    s = uow.session
    for _, ev in items:
        if not isinstance(ev, platform.ClassRemoved):
            continue
        cls = await s.get(SchoolClass, ev.class_id)
        if cls is None or cls.school_id != ev.school_id or cls.version_at > ev.occurred_at:
            continue
        await s.execute(delete(ClassMember).where(col(ClassMember.class_id) == ev.class_id))
        await s.delete(cls)
        log.info("class_removed", class_id=ev.class_id, school_id=ev.school_id)


class RosterSnapshot:
    """Answers `rpc.linking.roster_snapshot.v1` (the operator's only)."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    async def snapshot(self, req: contract.RosterSnapshotRequest) -> contract.RosterSnapshotReply:
        """The school's current pupils and its classes."""
        async with self.ctx.db.reader() as s:
            pupils = await s.execute(
                select(col(Pupil.pupil_id)).where(col(Pupil.school_id) == req.school_id, col(Pupil.left_at).is_(None))
            )
            classes = await s.execute(
                select(col(SchoolClass.class_id)).where(col(SchoolClass.school_id) == req.school_id)
            )
            return contract.RosterSnapshotReply(pupil_ids=sorted(pupils.scalars()), class_ids=sorted(classes.scalars()))
