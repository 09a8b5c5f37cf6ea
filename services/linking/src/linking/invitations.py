"""Staff managing invitations at scale: withdrawing one, inviting many at once.

Kept apart from `links` (which sends one invitation) so the bulk paths read what they need in a
few queries rather than one pupil at a time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import linking as contract
from contracts import notify
from contracts.addresses import looks_like_email, normalise_email
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.rpc import RpcFailure
from linking import codes, contacts, redemption, school_settings
from linking.context import LinkingContext
from linking.scope import class_in_scope, not_found, school_ids
from linking.tables import INVITATION, LINKED, ClassMember, Invitation, Link, LinkCode, Pupil, School

if TYPE_CHECKING:
    from linking.bars import Bars

log = get_logger("linking.invitations")

# Pending (sent, unanswered, unexpired) invitations a pupil may have at once. A child has a few
# carers; more open invitations than this are not a family but a way to send the school's email,
# naming the child, to many addresses (a staff account misused or taken over).
MAX_PENDING_INVITATIONS = 10


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


# -- many at once ----------------------------------------------------------------------------------


@dataclass
class _Wanted:
    pupil_id: str
    email: str


class BulkInvitations:
    """Inviting many parents of a class in one request and one transaction: a row that cannot
    be sent is skipped with its reason, the others are sent."""

    def __init__(self, ctx: LinkingContext, *, bars: Bars) -> None:
        self.ctx = ctx
        self.bars = bars

    async def invite_many(self, req: contract.BulkInviteRequest) -> contract.BulkInviteReply:
        """The rows of `req.invitations`, or (`from_contacts`) the roster contacts of the class."""
        now = self.ctx.now()
        skipped: list[contract.SkippedInvitation] = []
        sent: list[tuple[Invitation, str]] = []
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            cls, _ = await class_in_scope(s, req.scope, req.class_id)
            if req.from_contacts:
                wanted = await self._from_contacts(s, cls.class_id, cls.school_id, skipped)
            else:
                wanted = [_Wanted(r.pupil_id, r.email) for r in req.invitations]
            pupils = await self._pupils(s, cls.school_id, [w.pupil_id for w in wanted])
            # Invitations of these pupils take turns with single ones (`Links.invite` locks the
            # same rows), in one order so that two bulk requests never wait on each other.
            if pupils:
                await s.execute(
                    select(col(Pupil.pupil_id))
                    .where(col(Pupil.pupil_id).in_(sorted(pupils)))
                    .order_by(col(Pupil.pupil_id))
                    .with_for_update()
                )
            pending = await self._pending(s, cls.school_id, list(pupils), now)
            settings = await self.ctx.read_settings(s, cls.school_id)
            school = await s.get(School, cls.school_id)
            seen: set[tuple[str, str]] = set()

            def skip(w: _Wanted, reason: contract.SkipReason) -> None:
                # Echoed as given (cut short): the page shows staff which row of theirs it was.
                skipped.append(
                    contract.SkippedInvitation(pupil_id=w.pupil_id[:128], email=w.email[:254], reason=reason)
                )

            # The bars of every row at once, rather than a query per row.
            barred = await self.bars.barred(
                s,
                [
                    (w.pupil_id, w.email.strip())
                    for w in wanted
                    if w.pupil_id in pupils and looks_like_email(w.email.strip())
                ],
            )
            for w in wanted:
                email = w.email.strip()
                key = normalise_email(email)
                pupil = pupils.get(w.pupil_id)
                if not looks_like_email(email):
                    skip(w, "invalid_email")
                elif pupil is None:
                    # Unknown, left, or another school's: the same answer, as everywhere in a scope.
                    skip(w, "unknown_pupil")
                elif (w.pupil_id, key) in seen:
                    skip(w, "duplicate")
                elif key in pending.get(w.pupil_id, set()):
                    skip(w, "already_invited")
                elif (w.pupil_id, key) in barred:
                    skip(w, "barred")
                elif len(pending.get(w.pupil_id, set())) >= MAX_PENDING_INVITATIONS:
                    skip(w, "too_many_invitations")
                else:
                    seen.add((w.pupil_id, key))
                    pending.setdefault(w.pupil_id, set()).add(key)
                    inv = await send_invitation(
                        self.ctx,
                        uow,
                        pupil,
                        school,
                        email,
                        days=settings.invitation_days,
                        actor_id=req.actor_id,
                        language=settings.language,
                    )
                    sent.append((inv, email))
        log.info("invitations_sent", class_id=req.class_id, sent=len(sent), skipped=len(skipped))
        return contract.BulkInviteReply(sent=len(sent), skipped=skipped)

    async def _pupils(self, s: AsyncSession, school_id: str, pupil_ids: list[str]) -> dict[str, Pupil]:
        ids = sorted({p for p in pupil_ids if 0 < len(p) <= 128})
        found: dict[str, Pupil] = {}
        for start in range(0, len(ids), 500):
            for pupil in (
                await s.execute(
                    select(Pupil).where(
                        col(Pupil.pupil_id).in_(ids[start : start + 500]),
                        col(Pupil.school_id) == school_id,
                        col(Pupil.left_at).is_(None),
                    )
                )
            ).scalars():
                found[pupil.pupil_id] = pupil
        return found

    async def _pending(
        self, s: AsyncSession, school_id: str, pupil_ids: list[str], now: datetime
    ) -> dict[str, set[str]]:
        """Each pupil's addresses with an invitation waiting for an answer."""
        out: dict[str, set[str]] = {}
        for start in range(0, len(pupil_ids), 500):
            rows = await s.execute(
                select(col(Invitation.pupil_id), col(Invitation.email_key)).where(
                    col(Invitation.pupil_id).in_(pupil_ids[start : start + 500]),
                    col(Invitation.school_id) == school_id,
                    col(Invitation.status) == "invited",
                    col(Invitation.expires_at) > now,
                )
            )
            for pupil_id, key in rows:
                out.setdefault(pupil_id, set()).add(key)
        return out

    async def _from_contacts(
        self, s: AsyncSession, class_id: str, school_id: str, skipped: list[contract.SkippedInvitation]
    ) -> list[_Wanted]:
        """The roster contacts of the class's pupils who have no linked parent (at this school);
        those of pupils who have one go to `skipped` as `already_linked`."""
        pupil_ids = list(
            (
                await s.execute(
                    select(col(Pupil.pupil_id))
                    .join(ClassMember, col(ClassMember.pupil_id) == col(Pupil.pupil_id))
                    .where(
                        col(ClassMember.class_id) == class_id,
                        col(Pupil.school_id) == school_id,
                        col(Pupil.left_at).is_(None),
                    )
                    .order_by(col(Pupil.last_name), col(Pupil.first_name), col(Pupil.pupil_id))
                )
            ).scalars()
        )
        linked = set(
            (
                await s.execute(
                    select(col(Link.pupil_id)).where(
                        col(Link.pupil_id).in_(pupil_ids),
                        col(Link.school_id) == school_id,
                        col(Link.status) == LINKED,
                        col(Link.removed_at).is_(None),
                    )
                )
            ).scalars()
        )
        found = await contacts.of_pupils(s, self.ctx.addresses, school_id, pupil_ids)
        wanted: list[_Wanted] = []
        for pid in pupil_ids:
            for email, _ in found.get(pid, []):
                if pid in linked:
                    skipped.append(contract.SkippedInvitation(pupil_id=pid, email=email, reason="already_linked"))
                else:
                    wanted.append(_Wanted(pid, email))
        return wanted


async def send_invitation(
    ctx: LinkingContext,
    uow: UnitOfWork,
    pupil: Pupil,
    school: School | None,
    email: str,
    *,
    days: int,
    actor_id: str,
    language: str = "en",
) -> Invitation:
    """One invitation with its own single-use code, its email request and its audit row (in the
    caller's transaction, which has checked the address, the bars and the pupil's room)."""
    now = ctx.now()
    code = codes.generate()
    expires = now + timedelta(days=days)
    code_id = uuid.uuid4().hex
    uow.session.add(
        LinkCode(
            id=code_id,
            kind=INVITATION,
            pupil_id=pupil.pupil_id,
            school_id=pupil.school_id,
            code_hash=ctx.vault.lookup_hash(code),
            code_cipher=None,  # emailed once, never printed
            key_id=ctx.vault.key_id,
            created_at=now,
            created_by=actor_id,
            expires_at=expires,
        )
    )
    invitation = Invitation(
        id=uuid.uuid4().hex,
        pupil_id=pupil.pupil_id,
        school_id=pupil.school_id,
        email=email,
        email_key=normalise_email(email),
        code_id=code_id,
        status="invited",
        sent_at=now,
        expires_at=expires,
        created_by=actor_id,
    )
    uow.session.add(invitation)
    request = notify.InvitationEmail(
        to=email,
        school_name=school.name if school else "",
        pupil_first_name=pupil.first_name,
        link_url=ctx.link_url(code),
        code=codes.display(code),
        expires_at=expires,
        reference=f"invitation:{invitation.id}",
        **school_settings.invitation_language(language),
    )
    await uow.emit(notify.request_subject(request.kind), request, aggregate=f"email:{request.event_id}")
    ctx.audit(
        uow,
        pupil_id=pupil.pupil_id,
        school_id=pupil.school_id,
        actor=f"staff:{actor_id}",
        action="invitation_sent",
        reason=f"invitation {invitation.id}",
    )
    return invitation
