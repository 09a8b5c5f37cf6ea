"""Staff managing invitations at scale: withdrawing one, inviting many at once.

Kept apart from `links` (which sends one invitation) so the bulk paths read what they need in a
few queries rather than one pupil at a time.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlmodel import col

from contracts import linking as contract
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcFailure
from linking import redemption
from linking.context import LinkingContext
from linking.scope import not_found, school_ids
from linking.tables import Invitation, LinkCode

log = get_logger("linking.invitations")


class Invitations:
    """Withdrawing invitations and inviting many parents in one request."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    async def withdraw(self, req: contract.WithdrawInvitationRequest) -> contract.Done:
        """A pending invitation is revoked and its code stops working in the same transaction.
        An accepted one cannot be (the parent is linked: remove the parent instead); a revoked
        or expired one is left as it is, so withdrawing twice is harmless."""
        now = self.ctx.now()
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            inv = (
                await s.execute(select(Invitation).where(col(Invitation.id) == req.invitation_id).with_for_update())
            ).scalar_one_or_none()
            # Another school's invitation is not found, exactly like one that does not exist.
            if inv is None or inv.school_id not in await school_ids(s, req.scope):
                raise not_found("invitation")
            if inv.status == "accepted":
                raise RpcFailure(
                    contract.E_ALREADY_ACCEPTED,
                    "this invitation was accepted: the parent is linked (remove the parent to end their access)",
                )
            if inv.status not in redemption.OPEN_INVITATION:
                return contract.Done()
            inv.status = "revoked"
            s.add(inv)
            await s.execute(
                update(LinkCode)
                .where(col(LinkCode.id) == inv.code_id, col(LinkCode.revoked_at).is_(None))
                .values(revoked_at=now)
            )
            self.ctx.audit(
                uow,
                pupil_id=inv.pupil_id,
                school_id=inv.school_id,
                actor=f"staff:{req.actor_id}",
                action="invitation_withdrawn",
                reason=f"invitation {inv.id}",
            )
        log.info("invitation_withdrawn", invitation_id=req.invitation_id)
        return contract.Done()
