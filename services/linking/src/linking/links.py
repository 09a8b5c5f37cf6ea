"""Parents and children: redeeming codes, invitations, activation, removal, the audit trail.

Every change to a link is one transaction that also writes its event (outbox), its audit row
and, where the parent is told, its email request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, distinct, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import identity, notify
from contracts import linking as contract
from contracts.addresses import looks_like_email, normalise_email
from contracts.base import Event
from contracts.kit.db import insert
from contracts.kit.gather import ReadGatherer
from contracts.kit.logs import get_logger
from contracts.kit.outbox import UnitOfWork
from contracts.kit.rpc import RpcFailure, invalid
from linking import redemption, roster, school_settings
from linking.context import LinkingContext
from linking.invitations import MAX_PENDING_INVITATIONS, send_invitation
from linking.scope import pupil_in_scope, pupil_record_in_scope, school_ids
from linking.tables import (
    AWAITING,
    LINKED,
    PRINTED,
    AuditRow,
    AupAcceptance,
    ClassMember,
    Invitation,
    Link,
    LinkCode,
    Pupil,
    School,
    VerifiedParent,
)

if TYPE_CHECKING:
    from linking.bars import Bars
    from linking.guessing import Guessing

log = get_logger("linking.links")

# The overview's access check, as `_read_active` reads it: standing, linked (`LINKED`), pupil
# still at school.
_ACTIVE_SQL = (
    "SELECT l.parent_id, l.pupil_id FROM links l JOIN pupils p ON p.pupil_id = l.pupil_id"
    " WHERE l.parent_id IN {keys} AND l.removed_at IS NULL AND l.status = 'linked' AND p.left_at IS NULL"
    " ORDER BY l.parent_id, p.first_name, l.pupil_id"
)


def _live_key(parent_id: str, pupil_id: str) -> str:
    return f"{parent_id}:{pupil_id}"


@dataclass
class _Read:
    """A redemption's facts, and the rows they were read from (to apply the decision)."""

    facts: redemption.RedemptionFacts
    link_code: LinkCode | None = None
    pupil: Pupil | None = None
    settings: school_settings.Effective | None = None
    existing: Link | None = None
    invitation: Invitation | None = None


def invitation_status(inv: Invitation, now: datetime) -> str:
    """What staff see: an invitation still open after its date shows as expired."""
    if inv.status == "invited" and inv.expires_at <= now:
        return "expired"
    return inv.status


async def remove_link(
    ctx: LinkingContext,
    uow: UnitOfWork,
    link: Link,
    *,
    by: str,
    actor: str,
    actor_id: str = "",
    reason: str = "",
    tell_parent: bool = False,
) -> None:
    """End a link (in the caller's transaction): its event, its audit row, maybe the parent's email."""
    now = ctx.now()
    link.removed_at = now
    link.removed_by = by
    link.removed_actor = actor_id or None
    link.live_key = None
    uow.session.add(link)
    await uow.emit(
        contract.LINK_REMOVED,
        contract.LinkRemoved(
            link_id=link.id,
            parent_id=link.parent_id,
            pupil_id=link.pupil_id,
            school_id=link.school_id,
            by=by,
            actor_id=actor_id,
        ),
        aggregate=f"link:{link.parent_id}:{link.pupil_id}",
    )
    ctx.audit(
        uow,
        pupil_id=link.pupil_id,
        school_id=link.school_id,
        actor=actor,
        action="link_removed",
        parent_id=link.parent_id,
        reason=reason or f"removed by {by.replace('_', ' ')}",
    )
    if tell_parent:
        settings = await ctx.read_settings(uow.session, link.school_id)
        if settings.email_parent_on_removal:
            pupil = await uow.session.get(Pupil, link.pupil_id)
            school = await uow.session.get(School, link.school_id)
            request = notify.LinkRemovedEmail(
                parent_id=link.parent_id,
                school_name=school.name if school else "",
                pupil_first_name=pupil.first_name if pupil else "",
                reference=f"link:{link.id}",
            )
            await uow.emit(notify.request_subject(request.kind), request, aggregate=f"email:{request.event_id}")
    log.info("link_removed", link_id=link.id, parent_id=link.parent_id, pupil_id=link.pupil_id, by=by)


class Links:
    """The verbs of parents' links: redeeming, invitations, removal, the parent's and staff's views."""

    def __init__(self, ctx: LinkingContext, *, bars: Bars, guessing: Guessing) -> None:
        self.ctx = ctx
        self.bars = bars
        self.guessing = guessing
        # The overview's access check of concurrent requests, read in one query.
        self._active: ReadGatherer[list[str]] = ReadGatherer(self._read_active)

    async def _child_view(self, s: AsyncSession, link: Link) -> contract.ChildView:
        pupil = await s.get(Pupil, link.pupil_id)
        assert pupil is not None  # a link is made for a pupil of the roster copy, which never deletes one
        school = await s.get(School, link.school_id)
        return contract.ChildView(
            pupil_id=link.pupil_id,
            first_name=pupil.first_name,
            last_name=pupil.last_name,
            school_id=link.school_id,
            school_name=school.name if school else "",
            class_name=await roster.class_name(s, link.pupil_id),
            relationship=link.relationship,
            status=link.status,
            since=link.activated_at or link.created_at,
        )

    # -- redeeming -------------------------------------------------------------------------------

    async def redeem(self, req: contract.RedeemRequest) -> contract.RedeemReply:
        """Link the code's child to the parent (or, with `dry_run`, only say whether it would)."""
        try:
            return await self._redeem(req)
        except IntegrityError:
            # The same parent redeemed for the same child at the same moment: the other request
            # made the link; answer with it.
            return await self._redeem(req)
        except RpcFailure as failure:
            if failure.code == contract.E_INVALID_CODE:
                await self.guessing.redeem_failed(req)
            raise

    async def _redeem(self, req: contract.RedeemRequest) -> contract.RedeemReply:
        code = redemption.check_request(req.code, dry_run=req.dry_run, parent_id=req.parent_id)
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            read = await self._read_redemption(s, req, code)
            decision = redemption.decide(read.facts)
            # The rules passed: the code, its pupil and the school's settings were all read.
            assert read.link_code is not None and read.pupil is not None and read.settings is not None
            link_code, pupil, settings = read.link_code, read.pupil, read.settings
            aup = contract.AupReply(version=settings.aup_version, text=settings.aup_text, school_id=pupil.school_id)
            if decision.outcome is redemption.Outcome.ALREADY_LINKED:
                assert read.existing is not None
                return contract.RedeemReply(
                    created=False,
                    child=await self._child_view(s, read.existing),
                    aup=aup,
                    school_language=settings.language,
                )
            if decision.outcome in (redemption.Outcome.WOULD_LINK, redemption.Outcome.NOT_LINKED):
                return contract.RedeemReply(created=False, child=None, aup=aup, school_language=settings.language)

            now = read.facts.now
            parent_id = req.parent_id
            assert parent_id  # check_request: a redemption that is not a dry run names its parent
            if decision.record_acceptance:
                await self._accept_aup(s, parent_id, pupil.school_id, settings.aup_version, now)
            link = Link(
                id=uuid.uuid4().hex,
                parent_id=parent_id,
                pupil_id=pupil.pupil_id,
                school_id=pupil.school_id,
                relationship=req.relationship or "other",
                status=decision.status,
                via=link_code.kind,
                code_id=link_code.id,
                live_key=_live_key(parent_id, pupil.pupil_id),
                created_at=now,
                activated_at=now if decision.status == LINKED else None,
            )
            s.add(link)
            if decision.use_up_invitation:
                assert read.invitation is not None
                read.invitation.status = "accepted"
                read.invitation.accepted_at = now
                read.invitation.accepted_by = parent_id
                link_code.revoked_at = now  # an invitation's code works once
            await s.flush()
            await uow.emit(
                contract.LINK_CREATED,
                contract.LinkCreated(
                    link_id=link.id,
                    parent_id=parent_id,
                    pupil_id=pupil.pupil_id,
                    school_id=pupil.school_id,
                    status=link.status,
                    via=link.via,
                ),
                aggregate=f"link:{parent_id}:{pupil.pupil_id}",
            )
            self.ctx.audit(
                uow,
                pupil_id=pupil.pupil_id,
                school_id=pupil.school_id,
                actor=f"parent:{parent_id}",
                action="link_created",
                parent_id=parent_id,
                reason=f"{link.via} code, {link.relationship}",
            )
            child = await self._child_view(s, link)
        log.info(
            "link_created",
            link_id=link.id,
            parent_id=parent_id,
            pupil_id=link.pupil_id,
            status=link.status,
            via=link.via,
        )
        return contract.RedeemReply(created=True, child=child, aup=aup, school_language=settings.language)

    async def _read_redemption(self, s: AsyncSession, req: contract.RedeemRequest, code: str) -> _Read:
        # Read in the order the rules use them; past a missing code, or a pupil who left, nothing
        # more can matter.
        facts = redemption.RedemptionFacts(
            now=self.ctx.now(),
            parent_id=req.parent_id,
            dry_run=req.dry_run,
            accept_aup=req.accept_aup,
            code=None,
            registering=not req.verified and not req.dry_run,
        )
        # Redemptions of one code take turns (a row lock on PostgreSQL; SQLite's writers
        # take turns anyway), so a code with room for four links four, however many race.
        link_code = (
            (
                await s.execute(
                    select(LinkCode)
                    .where(col(LinkCode.code_hash).in_(self.ctx.vault.lookup_hashes(code)))
                    .with_for_update()
                )
            )
            .scalars()
            .first()
        )
        if link_code is None:
            return _Read(facts)
        facts = replace(
            facts,
            code=redemption.CodeFacts(
                kind=link_code.kind, revoked=link_code.revoked_at is not None, expires_at=link_code.expires_at
            ),
            pupil_id=link_code.pupil_id,
        )
        pupil = await s.get(Pupil, link_code.pupil_id)
        # A code links its pupil only at the school that made it: one printed by a school the
        # pupil has since left for another must not link them at the new one.
        if pupil is None or pupil.left_at is not None or pupil.school_id != link_code.school_id:
            return _Read(facts, link_code)
        barred = await self.bars.is_barred(s, pupil.pupil_id, req.email) if req.email else False
        settings = await self.ctx.read_settings(s, pupil.school_id)

        existing = None
        removed_via_code = False
        if req.parent_id:
            existing = (
                await s.execute(select(Link).where(col(Link.live_key) == _live_key(req.parent_id, pupil.pupil_id)))
            ).scalar_one_or_none()
            removed_via_code = (
                await s.execute(
                    select(func.count()).where(
                        col(Link.code_id) == link_code.id,
                        col(Link.parent_id) == req.parent_id,
                        col(Link.removed_by).in_(["staff", "bar"]),
                    )
                )
            ).scalar_one() > 0

        other_carers = 0
        invitation = None
        if link_code.kind == PRINTED:
            other_carers = (
                await s.execute(
                    select(func.count(distinct(col(Link.parent_id)))).where(
                        col(Link.code_id) == link_code.id, col(Link.parent_id) != (req.parent_id or "")
                    )
                )
            ).scalar_one()
        else:
            invitation = (
                await s.execute(select(Invitation).where(col(Invitation.code_id) == link_code.id))
            ).scalar_one_or_none()

        accepted_before = False
        if not req.accept_aup and req.parent_id:
            accepted_before = (
                await s.execute(
                    select(func.count()).where(
                        col(AupAcceptance.parent_id) == req.parent_id,
                        col(AupAcceptance.school_id) == pupil.school_id,
                        col(AupAcceptance.version) == settings.aup_version,
                    )
                )
            ).scalar_one() > 0
        verified = req.verified
        if not verified and not req.dry_run and req.parent_id:
            verified = (await s.get(VerifiedParent, req.parent_id)) is not None

        facts = replace(
            facts,
            pupil_at_school=True,
            barred=barred,
            already_linked=existing is not None,
            removed_via_code=removed_via_code,
            other_carers=other_carers,
            max_carers=settings.max_carers_per_code,
            invitation_status=invitation.status if invitation is not None else None,
            policy_accepted_before=accepted_before,
            parent_verified=verified,
        )
        return _Read(facts, link_code, pupil, settings, existing, invitation)

    async def _accept_aup(self, s: AsyncSession, parent_id: str, school_id: str, version: str, now: datetime) -> None:
        await s.execute(
            insert(s, AupAcceptance)
            .values(parent_id=parent_id, school_id=school_id, version=version, accepted_at=now)
            .on_conflict_do_nothing(index_elements=["parent_id", "school_id", "version"])
        )

    # -- the parent's view ------------------------------------------------------------------------

    async def parent_children(self, req: contract.ParentRequest) -> contract.ChildrenReply:
        """Every child the parent is linked to."""
        async with self.ctx.db.reader() as s:
            links = (
                (
                    await s.execute(
                        select(Link)
                        .join(Pupil, col(Pupil.pupil_id) == col(Link.pupil_id))
                        .where(
                            col(Link.parent_id) == req.parent_id,
                            col(Link.removed_at).is_(None),
                            col(Pupil.left_at).is_(None),
                        )
                        .order_by(col(Pupil.first_name), col(Pupil.pupil_id))
                    )
                )
                .scalars()
                .all()
            )
            return contract.ChildrenReply(children=[await self._child_view(s, link) for link in links])

    async def active_pupils(self, req: contract.ParentRequest) -> contract.ActivePupilsReply:
        """The pupils the parent may see now (the overview's access check)."""
        return contract.ActivePupilsReply(pupil_ids=await self._active.one(req.parent_id) or [])

    async def active_pupils_many(self, req: contract.ParentsRequest) -> contract.ActivePupilsManyReply:
        """The pupils each parent may see now, read with whatever else is asked meanwhile."""
        found = await self._active.get(req.parent_ids)
        return contract.ActivePupilsManyReply(pupil_ids={pid: pupils for pid, pupils in found.items() if pupils})

    async def _read_active(self, parent_ids: list[str]) -> dict[str, list[str]]:
        """Each parent's active pupils, by first name: many parents in one query (every cache
        miss of every gateway comes here: one driver call, `read_keys`)."""
        found: dict[str, list[str]] = {}
        for parent_id, pupil_id in await self.ctx.db.read_keys(_ACTIVE_SQL, parent_ids):
            found.setdefault(parent_id, []).append(pupil_id)
        return found

    async def digest_children(self, req: contract.DigestChildrenRequest) -> contract.DigestChildrenReply:
        """Each parent's linked children for the digest, first linked first (the first one's
        school's timezone decides when the digest goes), in one query for the lot."""
        found: dict[str, list[contract.DigestChild]] = {}
        if req.parent_ids:
            async with self.ctx.db.reader() as s:
                rows = await s.execute(
                    select(
                        col(Link.parent_id),
                        col(Pupil.pupil_id),
                        col(Pupil.first_name),
                        col(School.name),
                        col(School.timezone),
                    )
                    .join(Pupil, col(Pupil.pupil_id) == col(Link.pupil_id))
                    .join(School, col(School.school_id) == col(Pupil.school_id))
                    .where(
                        col(Link.parent_id).in_(req.parent_ids),
                        col(Link.removed_at).is_(None),
                        col(Link.status) == LINKED,
                        col(Pupil.left_at).is_(None),
                    )
                    .order_by(
                        col(Link.parent_id),
                        func.coalesce(col(Link.activated_at), col(Link.created_at)),
                        col(Link.pupil_id),
                    )
                )
                for parent_id, pupil_id, first_name, school_name, timezone in rows:
                    found.setdefault(parent_id, []).append(
                        contract.DigestChild(
                            pupil_id=pupil_id, first_name=first_name, school_name=school_name, timezone=timezone
                        )
                    )
        return contract.DigestChildrenReply(
            parents=[contract.DigestParent(parent_id=p, children=c) for p, c in found.items()]
        )

    async def unlink(self, req: contract.UnlinkRequest) -> contract.Done:
        """The parent unlinks a child themselves."""
        async with self.ctx.unit_of_work() as uow:
            link = (
                await uow.session.execute(
                    select(Link).where(col(Link.live_key) == _live_key(req.parent_id, req.pupil_id))
                )
            ).scalar_one_or_none()
            if link is None:
                raise RpcFailure(contract.E_NOT_FOUND, "no such child")
            await remove_link(self.ctx, uow, link, by="parent", actor=f"parent:{req.parent_id}", actor_id=req.parent_id)
        return contract.Done()

    # -- removing ---------------------------------------------------------------------------------

    async def remove_parent(self, req: contract.RemoveParentRequest) -> contract.Done:
        """Staff end one parent's access to one pupil (siblings untouched)."""
        async with self.ctx.unit_of_work() as uow:
            pupil = await pupil_in_scope(uow.session, req.scope, req.pupil_id)
            link = (
                await uow.session.execute(
                    select(Link).where(col(Link.live_key) == _live_key(req.parent_id, pupil.pupil_id))
                )
            ).scalar_one_or_none()
            if link is None:
                raise RpcFailure(contract.E_NOT_FOUND, "no such parent of this pupil")
            await remove_link(
                self.ctx,
                uow,
                link,
                by="staff",
                actor=f"staff:{req.actor_id}",
                actor_id=req.actor_id,
                reason=req.reason,
                tell_parent=True,
            )
        return contract.Done()

    async def _parent_links_in_scope(self, s: AsyncSession, scope: contract.StaffScope, parent_id: str) -> list[Link]:
        allowed = await school_ids(s, scope)
        if not allowed:
            return []
        return list(
            (
                await s.execute(
                    select(Link)
                    .join(Pupil, col(Pupil.pupil_id) == col(Link.pupil_id))
                    .where(
                        col(Link.parent_id) == parent_id,
                        col(Link.removed_at).is_(None),
                        col(Link.school_id).in_(allowed),
                        col(Pupil.left_at).is_(None),
                    )
                    .order_by(col(Pupil.first_name), col(Link.pupil_id))
                )
            ).scalars()
        )

    async def parent_pupils(self, req: contract.StaffParentRequest) -> contract.ParentPupilsReply:
        """The pupils of the caller's schools this parent is linked to."""
        async with self.ctx.db.reader() as s:
            links = await self._parent_links_in_scope(s, req.scope, req.parent_id)
            if not links:
                raise RpcFailure(contract.E_NOT_FOUND, "no such parent")
            views = [await self._child_view(s, link) for link in links]
        return contract.ParentPupilsReply(pupils=[contract.ParentPupilView(**v.model_dump()) for v in views])

    async def remove_parent_everywhere(self, req: contract.StaffParentRequest) -> contract.RemovedReply:
        """The parent loses every pupil of the caller's schools at once, one audit row each."""
        async with self.ctx.unit_of_work() as uow:
            links = await self._parent_links_in_scope(uow.session, req.scope, req.parent_id)
            if not links:
                raise RpcFailure(contract.E_NOT_FOUND, "no such parent")
            for link in links:
                await remove_link(
                    self.ctx,
                    uow,
                    link,
                    by="staff",
                    actor=f"staff:{req.actor_id}",
                    actor_id=req.actor_id,
                    reason=req.reason,
                    tell_parent=True,
                )
        return contract.RemovedReply(pupil_ids=[link.pupil_id for link in links])

    async def on_pupil_left(self, uow: UnitOfWork, pupil_id: str, at: datetime | None = None) -> None:
        """A pupil left the school: every parent's link ends."""
        links = (
            (
                await uow.session.execute(
                    select(Link).where(col(Link.pupil_id) == pupil_id, col(Link.removed_at).is_(None))
                )
            )
            .scalars()
            .all()
        )
        for link in links:
            await remove_link(self.ctx, uow, link, by="pupil_left", actor="system", reason="the pupil left the school")

    async def on_pupil_moved(self, uow: UnitOfWork, pupil_id: str, school_id: str) -> None:
        """A pupil moved to `school_id`: the links made at their earlier schools end, and so do
        those schools' open invitations (their codes are revoked with the pupil's other codes).

        A parent linked through one school is known to that school, not to the next one: the
        new school's staff must not find them on the pupil's page, and the old school's staff
        no longer have the pupil. Parents link again through the new school's codes.
        """
        s = uow.session
        links = (
            (
                await s.execute(
                    select(Link).where(
                        col(Link.pupil_id) == pupil_id,
                        col(Link.removed_at).is_(None),
                        col(Link.school_id) != school_id,
                    )
                )
            )
            .scalars()
            .all()
        )
        for link in links:
            await remove_link(self.ctx, uow, link, by="school_changed", actor="system", reason="school_changed")
        await s.execute(
            update(Invitation)
            .where(
                col(Invitation.pupil_id) == pupil_id,
                col(Invitation.school_id) != school_id,
                col(Invitation.status).in_(redemption.OPEN_INVITATION),
            )
            .values(status="revoked")
        )

    # -- invitations ------------------------------------------------------------------------------

    async def invite(self, req: contract.InviteRequest) -> contract.InvitationView:
        """Email an invitation with its own single-use code; an earlier open one to the same
        address for this pupil is revoked."""
        email = req.email.strip()
        if not looks_like_email(email):
            raise invalid(email="enter an address like name@example.org")
        now = self.ctx.now()
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            if await self.bars.is_barred(s, pupil.pupil_id, email):
                # Staff may know: the invitation would name the child to someone barred from them.
                raise invalid(email="this address cannot be invited for this pupil (ask a school admin)")
            await self._check_room_for_invitation(s, pupil, normalise_email(email), now)
            school = await s.get(School, pupil.school_id)
            settings = await self.ctx.read_settings(s, pupil.school_id)
            earlier = (
                (
                    await s.execute(
                        select(Invitation).where(
                            col(Invitation.pupil_id) == pupil.pupil_id,
                            col(Invitation.email_key) == normalise_email(email),
                            col(Invitation.status).in_(["invited", "bounced"]),
                        )
                    )
                )
                .scalars()
                .all()
            )
            for inv in earlier:
                inv.status = "revoked"
                await s.execute(update(LinkCode).where(col(LinkCode.id) == inv.code_id).values(revoked_at=now))
            invitation = await send_invitation(
                self.ctx,
                uow,
                pupil,
                school,
                email,
                days=settings.invitation_days,
                actor_id=req.actor_id,
                language=settings.language,
            )
        log.info("invitation_sent", invitation_id=invitation.id, pupil_id=pupil.pupil_id, revoked=len(earlier))
        return contract.InvitationView(
            invitation_id=invitation.id,
            email=email,
            status="invited",
            sent_at=invitation.sent_at,
            expires_at=invitation.expires_at,
        )

    async def _check_room_for_invitation(self, s: AsyncSession, pupil: Pupil, email_key: str, now: datetime) -> None:
        # Invitations of one pupil take turns on PostgreSQL (SQLite's writers do anyway), so
        # that two at once cannot both find room for the tenth.
        await s.execute(select(col(Pupil.pupil_id)).where(col(Pupil.pupil_id) == pupil.pupil_id).with_for_update())
        pending = (
            await s.execute(
                select(func.count()).where(
                    col(Invitation.pupil_id) == pupil.pupil_id,
                    col(Invitation.school_id) == pupil.school_id,
                    col(Invitation.status) == "invited",
                    col(Invitation.expires_at) > now,
                    # Inviting the same address again replaces its invitation: no more pending.
                    col(Invitation.email_key) != email_key,
                )
            )
        ).scalar_one()
        if pending >= MAX_PENDING_INVITATIONS:
            raise RpcFailure(
                contract.E_TOO_MANY_INVITATIONS,
                f"this pupil has {MAX_PENDING_INVITATIONS} invitations waiting for an answer already: "
                "wait until one is accepted or expires",
            )

    # -- events from other services -----------------------------------------------------------------

    async def on_parent_verified(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """A parent verified their address: their links awaiting it become active."""
        assert isinstance(event, identity.ParentVerified)  # the consumer's only schema
        s = uow.session
        now = self.ctx.now()
        await s.execute(
            insert(s, VerifiedParent)
            .values(parent_id=event.parent_id, verified_at=now)
            .on_conflict_do_nothing(index_elements=["parent_id"])
        )
        links = (
            (
                await s.execute(
                    select(Link).where(
                        col(Link.parent_id) == event.parent_id,
                        col(Link.status) == AWAITING,
                        col(Link.removed_at).is_(None),
                    )
                )
            )
            .scalars()
            .all()
        )
        for link in links:
            link.status = LINKED
            link.activated_at = now
            s.add(link)
            await uow.emit(
                contract.LINK_ACTIVATED,
                contract.LinkActivated(
                    link_id=link.id, parent_id=link.parent_id, pupil_id=link.pupil_id, school_id=link.school_id
                ),
                aggregate=f"link:{link.parent_id}:{link.pupil_id}",
            )
            self.ctx.audit(
                uow,
                pupil_id=link.pupil_id,
                school_id=link.school_id,
                actor="system",
                action="link_activated",
                parent_id=link.parent_id,
                reason="the parent verified their email address",
            )
            pupil = await s.get(Pupil, link.pupil_id)
            school = await s.get(School, link.school_id)
            request = notify.LinkActivatedEmail(
                parent_id=link.parent_id,
                school_name=school.name if school else "",
                pupil_first_name=pupil.first_name if pupil else "",
                portal_url=f"{self.ctx.public_url}/",
                reference=f"link:{link.id}",
            )
            await uow.emit(notify.request_subject(request.kind), request, aggregate=f"email:{request.event_id}")
            log.info("link_activated", link_id=link.id, parent_id=link.parent_id, pupil_id=link.pupil_id)

    async def on_account_deleted(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """A parent deleted their account: every link of theirs ends (standing or awaiting
        verification, which is how a registration's code holds a child), each with its audit
        row (`link_removed`, reason `account_deleted`, the parent's id and nothing else), and
        the addresses of the invitations they accepted are erased, with every other invitation
        to those addresses (open ones are revoked: nobody is left to accept them). Nobody is
        emailed. Applied again, it finds nothing left to do."""
        assert isinstance(event, identity.AccountDeleted)  # the consumer's only schema
        s = uow.session
        parent_id = event.account_id
        links = (
            (await s.execute(select(Link).where(col(Link.parent_id) == parent_id, col(Link.removed_at).is_(None))))
            .scalars()
            .all()
        )
        for link in links:
            await remove_link(
                self.ctx,
                uow,
                link,
                by="account_deleted",
                actor=f"parent:{parent_id}",
                actor_id=parent_id,
                reason="account_deleted",
            )
        keys = set(
            (
                await s.execute(
                    select(col(Invitation.email_key)).where(
                        col(Invitation.accepted_by) == parent_id, col(Invitation.email_key) != ""
                    )
                )
            ).scalars()
        )
        erased = 0
        if keys:
            await s.execute(
                update(Invitation)
                .where(col(Invitation.email_key).in_(keys), col(Invitation.status).in_(redemption.OPEN_INVITATION))
                .values(status="revoked")
            )
            result = await s.execute(
                update(Invitation).where(col(Invitation.email_key).in_(keys)).values(email="", email_key="")
            )
            erased = int(getattr(result, "rowcount", 0) or 0)
        await s.execute(delete(VerifiedParent).where(col(VerifiedParent.parent_id) == parent_id))
        await s.execute(delete(AupAcceptance).where(col(AupAcceptance.parent_id) == parent_id))
        uow.after_commit(self.ctx.db.scrub_soon)
        log.info("account_erased", parent_id=parent_id, links_ended=len(links), invitations_erased=erased)

    async def on_email_failed(self, uow: UnitOfWork, event: Event, subject: str) -> None:
        """An invitation the receiving mail server rejected shows as bounced to staff.

        Only a rejection says the address is wrong. Notify also gives up on emails for reasons
        of its own (a recipient's daily cap, a mail server down for two days): the address may
        be right, so the invitation stays as it was ("invited") and staff are not led to replace
        a good address.
        """
        assert isinstance(event, notify.EmailFailed)  # the consumer's only schema
        if event.reason != "rejected" or not event.reference.startswith("invitation:"):
            return
        await uow.session.execute(
            update(Invitation)
            .where(col(Invitation.id) == event.reference.split(":", 1)[1], col(Invitation.status) == "invited")
            .values(status="bounced")
        )

    # -- staff views ---------------------------------------------------------------------------------

    async def parents_and_invitations(
        self, s: AsyncSession, pupil_ids: list[str]
    ) -> tuple[dict[str, list[contract.ParentLinkView]], dict[str, list[contract.InvitationView]]]:
        """Each pupil's standing links and invitations (for `GET /classes/{id}/pupils`)."""
        now = self.ctx.now()
        parents: dict[str, list[contract.ParentLinkView]] = {p: [] for p in pupil_ids}
        invitations: dict[str, list[contract.InvitationView]] = {p: [] for p in pupil_ids}
        if not pupil_ids:
            return parents, invitations
        # Only what the pupil's school now gave: a school a pupil came from keeps its
        # invitations (addresses its staff typed) to itself.
        at_school = col(Pupil.pupil_id) == col(Link.pupil_id), col(Pupil.school_id) == col(Link.school_id)
        for link in (
            await s.execute(
                select(Link)
                .join(Pupil, and_(*at_school))
                .where(col(Link.pupil_id).in_(pupil_ids), col(Link.removed_at).is_(None))
                .order_by(col(Link.created_at))
            )
        ).scalars():
            parents[link.pupil_id].append(
                contract.ParentLinkView(
                    parent_id=link.parent_id,
                    relationship=link.relationship,
                    status=link.status,
                    since=link.activated_at or link.created_at,
                )
            )
        for inv in (
            await s.execute(
                select(Invitation)
                .join(
                    Pupil,
                    and_(
                        col(Pupil.pupil_id) == col(Invitation.pupil_id),
                        col(Pupil.school_id) == col(Invitation.school_id),
                    ),
                )
                .where(col(Invitation.pupil_id).in_(pupil_ids))
                .order_by(col(Invitation.sent_at))
            )
        ).scalars():
            invitations[inv.pupil_id].append(
                contract.InvitationView(
                    invitation_id=inv.id,
                    email=inv.email,
                    status=invitation_status(inv, now),
                    sent_at=inv.sent_at,
                    expires_at=inv.expires_at,
                )
            )
        return parents, invitations

    async def linked_counts(self, s: AsyncSession, class_ids: list[str]) -> dict[str, int]:
        """Per class, how many current pupils have at least one linked parent."""
        if not class_ids:
            return {}
        rows = await s.execute(
            select(col(ClassMember.class_id), func.count(distinct(col(ClassMember.pupil_id))))
            .join(Pupil, col(Pupil.pupil_id) == col(ClassMember.pupil_id))
            .join(Link, col(Link.pupil_id) == col(ClassMember.pupil_id))
            .where(
                col(ClassMember.class_id).in_(class_ids),
                col(Pupil.left_at).is_(None),
                col(Link.removed_at).is_(None),
                col(Link.status) == LINKED,
            )
            .group_by(col(ClassMember.class_id))
        )
        return dict(rows.all())

    async def audit_trail(self, req: contract.AuditRequest) -> contract.AuditReply:
        """A pupil's audit trail, oldest first."""
        async with self.ctx.db.reader() as s:
            allowed = await school_ids(s, req.scope)
            # Each school sees the entries of its own time with the pupil: a school the pupil
            # moved to does not see which parents the earlier one linked (nor its bars' reasons),
            # and the earlier one still sees its own.
            rows = (
                (
                    await s.execute(
                        select(AuditRow)
                        .where(col(AuditRow.pupil_id) == req.pupil_id, col(AuditRow.school_id).in_(allowed))
                        .order_by(col(AuditRow.at), col(AuditRow.id))
                    )
                )
                .scalars()
                .all()
            )
            if not rows:
                await pupil_record_in_scope(s, req.scope, req.pupil_id)
            return contract.AuditReply(
                entries=[
                    contract.AuditEntry(at=r.at, actor=r.actor, action=r.action, parent_id=r.parent_id, reason=r.reason)
                    for r in rows
                ]
            )
