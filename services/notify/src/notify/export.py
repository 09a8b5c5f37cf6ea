"""A person's emails, for their own export (`GET /me/export`): what notify holds about them.

The ledger's entries addressed to their account (by parent id) or sent to their address: when
each was asked for, its kind and what became of it. Never the content, the address or the
request (those carry the links and codes that work).
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlmodel import col

from contracts import notify as contract
from contracts.addresses import normalise_email
from contracts.kit.runtime import ServiceRuntime
from notify.tables import DELIVERING, FAILED, PENDING, SENDING, SENT, Email

# The ledger's states as the person reads them: an attempt under way, whether or not the
# server has seen all of it yet, is "sending".
STATUS = {PENDING: "pending", SENDING: "sending", DELIVERING: "sending", SENT: "sent", FAILED: "failed"}


class EmailExports:
    """Answers `rpc.notify.export.v1`."""

    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    async def export(self, req: contract.EmailsExportRequest) -> contract.EmailsExport:
        """The person's emails, oldest first."""
        mine = col(Email.parent_id) == req.parent_id
        key = normalise_email(req.email) if req.email.strip() else ""
        if key:
            mine = or_(mine, col(Email.recipient_key) == key)
        async with self.runtime.db.reader() as s:
            rows = (
                await s.execute(
                    select(col(Email.created_at), col(Email.kind), col(Email.status))
                    .where(mine)
                    .order_by(col(Email.created_at), col(Email.id))
                )
            ).all()
        return contract.EmailsExport(
            emails=[
                contract.ExportedEmail(at=at, kind=kind, status=STATUS.get(status, "pending"))
                for at, kind, status in rows
            ]
        )
