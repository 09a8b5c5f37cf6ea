"""What linking keeps about a pupil who left, and for how long.

A pupil who leaves loses every link at once (`Links.on_pupil_left`) and every code is revoked.
`PORTAL_RETENTION_LEAVER_DAYS` later their roster copy goes: name, classes, codes and the
invitations sent for them (which hold parents' addresses). What stays is the pupil's id with the
time they left (so that an older roster event arriving late cannot bring them back), the
removed links and the audit trail (ids only, the record of who could see the child and when),
and safeguarding bars (a bar must hold again if the pupil comes back).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, or_, select, update
from sqlmodel import col

from contracts.kit.outbox import UnitOfWork
from contracts.kit.retention import days, rowcount
from linking.tables import ClassMember, Invitation, LinkCode, Pupil

if TYPE_CHECKING:
    from linking.app import Settings


class LinkingRetention:
    """linking's purge."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def purge(self, uow: UnitOfWork, now: datetime) -> dict[str, int]:
        """Erase the roster copy of pupils who left longer ago than the leaver retention."""
        s = uow.session
        cutoff = now - days(self.settings.retention_leaver_days)
        leavers = list((await s.execute(select(col(Pupil.pupil_id)).where(col(Pupil.left_at) < cutoff))).scalars())
        erased = {"leavers": 0, "class_members": 0, "link_codes": 0, "invitations": 0}
        for start in range(0, len(leavers), 500):
            ids = leavers[start : start + 500]
            names = await s.execute(
                update(Pupil)
                .where(col(Pupil.pupil_id).in_(ids), or_(col(Pupil.first_name) != "", col(Pupil.last_name) != ""))
                .values(first_name="", last_name="")
            )
            members = await s.execute(delete(ClassMember).where(col(ClassMember.pupil_id).in_(ids)))
            codes = await s.execute(delete(LinkCode).where(col(LinkCode.pupil_id).in_(ids)))
            invitations = await s.execute(delete(Invitation).where(col(Invitation.pupil_id).in_(ids)))
            erased["leavers"] += rowcount(names)
            erased["class_members"] += rowcount(members)
            erased["link_codes"] += rowcount(codes)
            erased["invitations"] += rowcount(invitations)
        return erased
