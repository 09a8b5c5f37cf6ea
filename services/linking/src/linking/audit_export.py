"""A school's audit trail for its admins, page by page between two times (`GET /schools/{id}/audit`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from contracts import linking as contract
from linking.context import LinkingContext
from linking.scope import school_in_scope
from linking.tables import AuditRow


class SchoolAudit:
    """Answers `rpc.linking.school_audit.v1`."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    async def page(self, req: contract.SchoolAuditRequest) -> contract.SchoolAuditReply:
        """Rows in the order they were written (their ids), after `after_id`."""
        async with self.ctx.db.reader() as s:
            school_id = await school_in_scope(s, req.scope, req.school_id)
            query = select(AuditRow).where(col(AuditRow.school_id) == school_id, col(AuditRow.id) > req.after_id)
            if req.from_at is not None:
                query = query.where(col(AuditRow.at) >= req.from_at)
            if req.to_at is not None:
                query = query.where(col(AuditRow.at) < req.to_at)
            rows = list((await s.execute(query.order_by(col(AuditRow.id)).limit(req.limit + 1))).scalars())
        more = len(rows) > req.limit
        rows = rows[: req.limit]
        return contract.SchoolAuditReply(
            entries=[
                contract.SchoolAuditEntry(
                    id=r.id or 0,
                    pupil_id=r.pupil_id,
                    at=r.at,
                    actor=r.actor,
                    action=r.action,
                    parent_id=r.parent_id,
                    reason=r.reason,
                )
                for r in rows
            ],
            next_after=rows[-1].id if more and rows else None,
        )
