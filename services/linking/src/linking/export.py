"""A parent's own data, for their export (`GET /me/export`): what linking holds about them.

Every link made for them, ended ones too (the roster copy's names of the child and the
school), and every audit row that names them: when, what and which pupil. Not the staff member
who acted, nor the reason staff wrote: those are the school's records about its own decisions.
Linking holds no name or address of a parent, so nothing here needs identity.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from contracts import linking as contract
from linking.context import LinkingContext
from linking.tables import AuditRow, Link, Pupil, School

REMOVED = "removed"


class ParentExports:
    """Answers `rpc.linking.export.v1`."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    async def export(self, req: contract.ParentRequest) -> contract.ParentExport:
        """The parent's links and audit rows, each oldest first."""
        async with self.ctx.db.reader() as s:
            links = (
                await s.execute(
                    select(Link, col(Pupil.first_name), col(Pupil.last_name), col(School.name))
                    .outerjoin(Pupil, col(Pupil.pupil_id) == col(Link.pupil_id))
                    .outerjoin(School, col(School.school_id) == col(Link.school_id))
                    .where(col(Link.parent_id) == req.parent_id)
                    .order_by(col(Link.created_at), col(Link.id))
                )
            ).all()
            audit = (
                await s.execute(
                    select(col(AuditRow.at), col(AuditRow.action), col(AuditRow.pupil_id))
                    .where(col(AuditRow.parent_id) == req.parent_id)
                    .order_by(col(AuditRow.at), col(AuditRow.id))
                )
            ).all()
        return contract.ParentExport(
            children=[
                contract.ExportedChild(
                    pupil_id=link.pupil_id,
                    first_name=first or "",
                    last_name=last or "",
                    school_name=school or "",
                    relationship=link.relationship,
                    status=REMOVED if link.removed_at is not None else link.status,
                    since=link.activated_at or link.created_at,
                    ended_at=link.removed_at,
                )
                for link, first, last, school in links
            ],
            audit=[
                contract.ExportedAuditEntry(at=at, action=action, pupil_id=pupil_id) for at, action, pupil_id in audit
            ],
        )
