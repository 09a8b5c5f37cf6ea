"""Schools as staff see them: their classes and pupils, their settings and policy, the roster import.

Each public coroutine takes a request model of `contracts.linking` and returns its reply, or
raises `RpcFailure` with one of the contract's error codes. One session per call.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import col

from contracts import linking as contract
from contracts.kit.logs import get_logger
from contracts.kit.rpc import invalid
from contracts.kit.tables import processed_events
from linking import roster, school_settings
from linking.context import LinkingContext
from linking.links import Links
from linking.scope import class_in_scope, not_found, school_ids, school_in_scope
from linking.tables import ClassMember, LinkCode, Pupil, School, SchoolClass, SchoolSetting

log = get_logger("linking.schools")


class Schools:
    """The roster copy as staff see it, school settings and policies, and the import's progress."""

    def __init__(self, ctx: LinkingContext, *, links: Links) -> None:
        self.ctx = ctx
        self.links = links

    # -- roster views ---------------------------------------------------------------------------

    async def schools(self, req: contract.SchoolsRequest) -> contract.SchoolsReply:
        """The schools of a scope (how the gateway expands a trust admin's trust)."""
        async with self.ctx.db.reader() as s:
            allowed = await school_ids(s, req.scope)
            rows = (
                await s.execute(select(School).where(col(School.school_id).in_(allowed)).order_by(col(School.name)))
            ).scalars()
            return contract.SchoolsReply(
                schools=[
                    contract.SchoolSummary(school_id=x.school_id, trust_id=x.trust_id, name=x.name, timezone=x.timezone)
                    for x in rows
                ]
            )

    async def classes(self, req: contract.ClassesRequest) -> contract.ClassesReply:
        """`GET /classes`."""
        async with self.ctx.db.reader() as s:
            allowed = await school_ids(s, req.scope)
            if not allowed:
                return contract.ClassesReply(classes=[])
            counts = (
                select(col(ClassMember.class_id), func.count().label("n"))
                .join(Pupil, col(Pupil.pupil_id) == col(ClassMember.pupil_id))
                .where(col(Pupil.left_at).is_(None))
                .group_by(col(ClassMember.class_id))
                .subquery()
            )
            rows = (
                await s.execute(
                    select(SchoolClass, col(School.name), func.coalesce(counts.c.n, 0))
                    .outerjoin(School, col(School.school_id) == col(SchoolClass.school_id))
                    .outerjoin(counts, counts.c.class_id == col(SchoolClass.class_id))
                    .where(*_class_filters(allowed, req))
                    .order_by(col(School.name), col(SchoolClass.name), col(SchoolClass.class_id))
                    .offset(req.offset)
                    .limit(req.limit + 1 if req.limit else None)
                )
            ).all()
            next_offset = None
            if req.limit and len(rows) > req.limit:
                rows, next_offset = rows[: req.limit], req.offset + req.limit
            linked = await self.links.linked_counts(s, [c.class_id for c, _, _ in rows])
            return contract.ClassesReply(
                classes=[
                    contract.ClassSummary(
                        class_id=c.class_id,
                        name=c.name,
                        school_id=c.school_id,
                        school_name=school_name or "",
                        pupil_count=n,
                        linked_pupil_count=linked.get(c.class_id, 0),
                    )
                    for c, school_name, n in rows
                ],
                next_offset=next_offset,
            )

    async def class_pupils(self, req: contract.ClassPupilsRequest) -> contract.ClassPupilsReply:
        """`GET /classes/{class_id}/pupils`."""
        async with self.ctx.db.reader() as s:
            cls, school_name = await class_in_scope(s, req.scope, req.class_id)
            rows = (
                await s.execute(
                    select(Pupil, col(LinkCode.expires_at))
                    .join(ClassMember, col(ClassMember.pupil_id) == col(Pupil.pupil_id))
                    .outerjoin(LinkCode, col(LinkCode.live_pupil_id) == col(Pupil.pupil_id))
                    .where(
                        col(ClassMember.class_id) == cls.class_id,
                        col(Pupil.left_at).is_(None),
                        # A pupil who moved school is not in the old school's classes, whatever
                        # class ids the platform sent with the move.
                        col(Pupil.school_id) == cls.school_id,
                    )
                    .order_by(col(Pupil.last_name), col(Pupil.first_name), col(Pupil.pupil_id))
                )
            ).all()
            parents, invitations = await self.links.parents_and_invitations(s, [p.pupil_id for p, _ in rows])
            pupils = [
                contract.PupilView(
                    pupil_id=p.pupil_id,
                    first_name=p.first_name,
                    last_name=p.last_name,
                    code_expires_at=expires_at,
                    parents=parents[p.pupil_id],
                    invitations=invitations[p.pupil_id],
                )
                for p, expires_at in rows
            ]
        return contract.ClassPupilsReply(
            class_id=cls.class_id, name=cls.name, school_id=cls.school_id, school_name=school_name, pupils=pupils
        )

    # -- settings and policies ---------------------------------------------------------------------------

    async def get_settings(self, req: contract.SchoolSettingsRequest) -> contract.SchoolSettings:
        """`GET /schools/{school_id}/settings`."""
        async with self.ctx.db.reader() as s:
            await school_in_scope(s, req.scope, req.school_id)
            return (await self.ctx.read_settings(s, req.school_id)).reply()

    async def update_settings(self, req: contract.UpdateSchoolSettingsRequest) -> contract.SchoolSettings:
        """`PUT /schools/{school_id}/settings`: validated, stored, announced when anything changed."""
        try:
            changes = school_settings.validate(req.settings)
        except school_settings.Invalid as exc:
            raise invalid(**exc.problems) from None
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            await school_in_scope(s, req.scope, req.school_id)
            row = await s.get(SchoolSetting, req.school_id)
            trust_row = await self.ctx.trust_settings_of(s, req.school_id)
            before = self.ctx.settings_of(req.school_id, row, trust_row)
            changed = sorted(k for k, v in changes.items() if getattr(before, k) != v)
            if not changed:
                return before.reply()
            inherited = self.ctx.settings_of(req.school_id, None, trust_row)
            # Only the keys the school changes become its own; the others keep following the
            # trust (and the defaults). A text or link equal to what it would inherit is stored
            # as NULL, so it keeps following them.
            stored: dict[str, Any] = {
                name: (
                    None
                    if name in ("aup_text", "homework_url", "files_url", "messages_url")
                    and changes[name] == getattr(inherited, name)
                    else changes[name]
                )
                for name in changed
            }
            now = self.ctx.now()
            if row is None:
                row = SchoolSetting(school_id=req.school_id, updated_at=now, updated_by=req.actor_id, **stored)
                s.add(row)
            else:
                for name, value in stored.items():
                    setattr(row, name, value)
                row.updated_at, row.updated_by = now, req.actor_id
            await s.flush()
            result = self.ctx.settings_of(req.school_id, row, trust_row)
            await uow.emit(
                contract.SCHOOL_SETTINGS_CHANGED,
                contract.SchoolSettingsChanged(
                    school_id=req.school_id,
                    changed=changed,
                    max_carers_per_code=result.max_carers_per_code,
                    printed_code_days=result.printed_code_days,
                    invitation_days=result.invitation_days,
                    aup_version=result.aup_version,
                    homework_url=result.homework_url,
                    files_url=result.files_url,
                    messages_url=result.messages_url,
                    email_parent_on_removal=result.email_parent_on_removal,
                    language=result.language,
                    actor_id=req.actor_id,
                ),
                aggregate=f"school:{req.school_id}",
            )
        log.info("school_settings_changed", school_id=req.school_id, changed=changed)
        return result.reply()

    async def aup(self, req: contract.AupRequest) -> contract.AupReply:
        """A school's acceptable-use policy, or the default one."""
        if req.school_id is None:
            return contract.AupReply(version=school_settings.DEFAULT_AUP_VERSION, text=school_settings.DEFAULT_AUP)
        async with self.ctx.db.reader() as s:
            school = await s.get(School, req.school_id)
            if school is None:
                raise not_found("school")
            settings = await self.ctx.read_settings(s, req.school_id)
        return contract.AupReply(version=settings.aup_version, text=settings.aup_text, school_id=req.school_id)

    # -- roster import ----------------------------------------------------------------------------

    async def roster_status(self, req: contract.RosterStatusRequest) -> contract.RosterStatusReply:
        """Which of these roster events are applied (`portal roster import` waits for all)."""
        wanted = list(dict.fromkeys(req.event_ids))
        done: set[str] = set()
        async with self.ctx.db.reader() as s:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i : i + 500]
                done.update(
                    (
                        await s.execute(
                            select(processed_events.c.event_id).where(
                                processed_events.c.consumer == roster.CONSUMER, processed_events.c.event_id.in_(chunk)
                            )
                        )
                    ).scalars()
                )
        return contract.RosterStatusReply(applied=len(done), missing=[e for e in wanted if e not in done])


def _class_filters(allowed: set[str], req: contract.ClassesRequest) -> list[Any]:
    """Which classes `GET /classes` lists: the scope's, maybe one school's, maybe by name."""
    where: list[Any] = [col(SchoolClass.school_id).in_(allowed)]
    if req.school_id is not None:
        where.append(col(SchoolClass.school_id) == req.school_id)
    if req.q:
        # A part of the name, whatever its case; LIKE's wildcards in it are taken literally.
        term = req.q.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(func.lower(col(SchoolClass.name)).like(f"%{term}%", escape="\\"))
    return where
