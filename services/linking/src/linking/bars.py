"""Safeguarding bars: an address that may not be linked to a pupil, through any code.

Linking never holds parents' addresses. A bar keeps the barred address as a keyed hash (to
match the caller's verified address that the gateway passes with each redemption) and
encrypted (so school admins see whom they barred); the gateway, which may ask identity, names
the parents whose account has the address, and linking ends their links.
"""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from contracts import linking as contract
from contracts.addresses import looks_like_email, normalise_email
from contracts.kit.db import dialect_name
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcFailure, invalid
from linking.addresses import AddressVault
from linking.context import LinkingContext
from linking.links import remove_link
from linking.scope import pupil_in_scope
from linking.tables import Bar, Invitation, Link, LinkCode

log = get_logger("linking.bars")


def bound(pupil_id: str, bar_id: str) -> str:
    return f"bar:{bar_id}:{pupil_id}"


def live_key(pupil_id: str, email_hash: str) -> str:
    return f"{pupil_id}:{email_hash}"


def _lock_key(pupil_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"linking bar " + pupil_id.encode()).digest()[:8], "big", signed=True)


class Bars:
    """The verbs of bars, and the check every redemption and invitation makes."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    @property
    def vault(self) -> AddressVault:
        """The address vault; its key is the code key, read on first use."""
        return self.ctx.addresses

    async def _lock(self, s: AsyncSession, pupil_id: str, *, shared: bool) -> None:
        # On PostgreSQL a redemption that checked the bars before a bar was committed could
        # still commit its link afterwards, unseen by the bar: redemptions of a pupil share a
        # lock that adding a bar takes alone, so one waits for the other. SQLite's writers
        # take turns anyway.
        if dialect_name(s) == "postgresql":
            fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
            await s.execute(text(f"SELECT {fn}(:k)"), {"k": _lock_key(pupil_id)})

    async def is_barred(self, s: AsyncSession, pupil_id: str, email: str) -> bool:
        """Whether this address is barred from this pupil (in the caller's transaction)."""
        return bool(await self.barred(s, [(pupil_id, email)]))

    async def barred(self, s: AsyncSession, wanted: list[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (pupil, address) pairs are barred, as (pupil id, normalised address),
        in a query per 500 (in the caller's transaction)."""
        pair_of: dict[str, tuple[str, str]] = {}
        for pupil_id, email in wanted:
            for k in self._live_keys(pupil_id, email):
                pair_of[k] = (pupil_id, normalise_email(email))
        # In one order, so that two requests locking several pupils never wait on each other.
        for pupil_id in sorted({p for p, _ in wanted}):
            await self._lock(s, pupil_id, shared=True)
        keys = list(pair_of)
        found: set[tuple[str, str]] = set()
        for start in range(0, len(keys), 500):
            rows = await s.execute(select(col(Bar.live_key)).where(col(Bar.live_key).in_(keys[start : start + 500])))
            found.update(pair_of[k] for k in rows.scalars() if k is not None)
        return found

    def _live_keys(self, pupil_id: str, email: str) -> list[str]:
        # A bar made under an old key still holds: its live key is matched under every key.
        return [live_key(pupil_id, h) for h in self.vault.lookup_hashes(email)]

    async def pupil_parents(self, req: contract.PupilParentsRequest) -> contract.PupilParentsReply:
        """The parents with a standing link to the pupil (the gateway checks their addresses)."""
        async with self.ctx.db.reader() as s:
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            rows = await s.execute(
                select(col(Link.parent_id))
                .where(col(Link.pupil_id) == pupil.pupil_id, col(Link.removed_at).is_(None))
                .order_by(col(Link.created_at))
            )
            return contract.PupilParentsReply(parent_ids=list(dict.fromkeys(rows.scalars())))

    async def add(self, req: contract.AddBarRequest) -> contract.AddBarReply:
        """Bar the address: open invitations to it end, and so do the named parents' links."""
        email = req.email.strip()
        if not looks_like_email(email):
            raise invalid(email="enter an address like name@example.org")
        if not req.reason.strip():
            raise invalid(reason="say why the address is barred")
        try:
            return await self._add(req, email)
        except IntegrityError:
            # Another admin barred the same address at the same moment: theirs is the bar.
            return await self._add(req, email)

    async def _add(self, req: contract.AddBarRequest, email: str) -> contract.AddBarReply:
        now = self.ctx.now()
        actor = f"staff:{req.actor_id}"
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            await self._lock(s, pupil.pupil_id, shared=False)
            vault = self.vault
            email_hash = vault.lookup_hash(email)
            bar = (
                (await s.execute(select(Bar).where(col(Bar.live_key).in_(self._live_keys(pupil.pupil_id, email)))))
                .scalars()
                .first()
            )
            created = bar is None
            if bar is None:
                bar_id = uuid.uuid4().hex
                bar = Bar(
                    id=bar_id,
                    pupil_id=pupil.pupil_id,
                    school_id=pupil.school_id,
                    email_hash=email_hash,
                    email_cipher=vault.encrypt(email, bound_to=bound(pupil.pupil_id, bar_id)),
                    key_id=vault.key_id,
                    reason=req.reason.strip(),
                    live_key=live_key(pupil.pupil_id, email_hash),
                    created_at=now,
                    created_by=req.actor_id,
                )
                s.add(bar)
                await s.flush()
                self.ctx.audit(
                    uow,
                    pupil_id=pupil.pupil_id,
                    school_id=pupil.school_id,
                    actor=actor,
                    action="bar_added",
                    reason=f"bar {bar.id}: {bar.reason}",
                )

            # An invitation already sent to the address must not link it either.
            open_invitations = (
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
            for inv in open_invitations:
                inv.status = "revoked"
                await s.execute(update(LinkCode).where(col(LinkCode.id) == inv.code_id).values(revoked_at=now))

            standing = (
                (
                    await s.execute(
                        select(Link)
                        .where(col(Link.pupil_id) == pupil.pupil_id, col(Link.removed_at).is_(None))
                        .order_by(col(Link.created_at))
                    )
                )
                .scalars()
                .all()
            )
            barred = set(req.parent_ids)
            checked = barred | set(req.checked_parent_ids)
            removed: list[str] = []
            for link in standing:
                if link.parent_id in barred:
                    # No email to the parent: a bar is not announced to the person barred.
                    await remove_link(
                        self.ctx,
                        uow,
                        link,
                        by="bar",
                        actor=actor,
                        actor_id=req.actor_id,
                        reason=f"safeguarding bar {bar.id}",
                    )
                    removed.append(link.parent_id)
            unchecked = [link.parent_id for link in standing if link.parent_id not in checked]
        log.info(
            "bar_added" if created else "bar_confirmed",
            bar_id=bar.id,
            pupil_id=bar.pupil_id,
            removed=len(removed),
            unchecked=len(unchecked),
            revoked_invitations=len(open_invitations),
        )
        return contract.AddBarReply(
            bar_id=bar.id, created=created, removed_parent_ids=removed, unchecked_parent_ids=unchecked
        )

    async def list_bars(self, req: contract.BarsRequest) -> contract.BarsReply:
        """The pupil's bars in force, with the addresses decrypted for the school's admins."""
        async with self.ctx.db.reader() as s:
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            bars = (
                (
                    await s.execute(
                        select(Bar)
                        .where(col(Bar.pupil_id) == pupil.pupil_id, col(Bar.lifted_at).is_(None))
                        .order_by(col(Bar.created_at), col(Bar.id))
                    )
                )
                .scalars()
                .all()
            )
        vault = self.vault
        views = []
        for bar in bars:
            try:
                email = vault.decrypt(bar.email_cipher, bound_to=bound(bar.pupil_id, bar.id))
            except Exception:  # noqa: BLE001 - written under another key: still in force, address unknown
                email = ""
            views.append(
                contract.BarView(bar_id=bar.id, email=email, reason=bar.reason, at=bar.created_at, by=bar.created_by)
            )
        return contract.BarsReply(bars=views)

    async def lift(self, req: contract.LiftBarRequest) -> contract.Done:
        """Lift a bar: recorded, and the address may be linked again."""
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            pupil = await pupil_in_scope(s, req.scope, req.pupil_id)
            bar = await s.get(Bar, req.bar_id)
            if bar is None or bar.pupil_id != pupil.pupil_id or bar.lifted_at is not None:
                raise RpcFailure(contract.E_NOT_FOUND, "no such bar")
            bar.lifted_at = self.ctx.now()
            bar.lifted_by = req.actor_id
            bar.live_key = None
            s.add(bar)
            self.ctx.audit(
                uow,
                pupil_id=pupil.pupil_id,
                school_id=pupil.school_id,
                actor=f"staff:{req.actor_id}",
                action="bar_lifted",
                reason=f"bar {bar.id} lifted",
            )
        log.info("bar_lifted", bar_id=bar.id, pupil_id=bar.pupil_id)
        return contract.Done()
