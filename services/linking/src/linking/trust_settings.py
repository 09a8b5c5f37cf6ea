"""A trust's defaults for its schools' settings: a school takes the trust's value for each key
it has not set itself (then the deployment's default)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlmodel import col

from contracts import linking as contract
from contracts.kit.logs import get_logger
from contracts.kit.rpc import invalid
from linking import school_settings
from linking.context import LinkingContext
from linking.scope import not_found
from linking.tables import School, SchoolSetting, TrustSetting

log = get_logger("linking.trust_settings")
_TEXTS = ("aup_text", "homework_url", "files_url", "messages_url")


def _reply(trust_id: str, eff: school_settings.Effective) -> contract.TrustSettings:
    return contract.TrustSettings(
        trust_id=trust_id,
        **{k: v for k, v in eff.reply().model_dump().items() if k != "school_id"},
    )


class TrustSettings:
    """Answers `rpc.linking.trust_settings.v1` and `update_trust_settings.v1`."""

    def __init__(self, ctx: LinkingContext) -> None:
        self.ctx = ctx

    def _check(self, scope: contract.StaffScope, trust_id: str) -> None:
        # Only the trust's own admins: a school admin's scope names no trust.
        if trust_id not in scope.trust_ids:
            raise not_found("trust")

    async def get(self, req: contract.TrustSettingsRequest) -> contract.TrustSettings:
        """The trust's defaults, the deployment's where the trust set none."""
        self._check(req.scope, req.trust_id)
        async with self.ctx.db.reader() as s:
            row = await s.get(TrustSetting, req.trust_id)
        return _reply(req.trust_id, self.ctx.settings_of("", None, row))

    async def update(self, req: contract.UpdateTrustSettingsRequest) -> contract.TrustSettings:
        """Store the changed keys; every school that follows one of them announces its settings."""
        self._check(req.scope, req.trust_id)
        try:
            changes = school_settings.validate(req.settings)
        except school_settings.Invalid as exc:
            raise invalid(**exc.problems) from None
        async with self.ctx.unit_of_work() as uow:
            s = uow.session
            row = await s.get(TrustSetting, req.trust_id)
            before = self.ctx.settings_of("", None, row)
            changed = sorted(k for k, v in changes.items() if getattr(before, k) != v)
            if not changed:
                return _reply(req.trust_id, before)
            defaults = self.ctx.settings_of("", None, None)
            schools = list((await s.execute(select(School).where(col(School.trust_id) == req.trust_id))).scalars())
            own = {
                r.school_id: r
                for r in (
                    await s.execute(
                        select(SchoolSetting).where(col(SchoolSetting.school_id).in_([x.school_id for x in schools]))
                    )
                ).scalars()
            }
            was = {x.school_id: self.ctx.settings_of(x.school_id, own.get(x.school_id), row) for x in schools}
            now = self.ctx.now()
            if row is None:
                row = TrustSetting(trust_id=req.trust_id, updated_at=now, updated_by=req.actor_id)
                s.add(row)
            for name in changed:
                value = changes[name]
                setattr(row, name, None if name in _TEXTS and value == getattr(defaults, name) else value)
            row.updated_at, row.updated_by = now, req.actor_id
            await s.flush()
            for school in schools:
                after = self.ctx.settings_of(school.school_id, own.get(school.school_id), row)
                differs = [k for k in changed if getattr(was[school.school_id], k) != getattr(after, k)]
                if differs:
                    await self._announce(uow, after, differs, req.actor_id)
            result = self.ctx.settings_of("", None, row)
        log.info("trust_settings_changed", trust_id=req.trust_id, changed=changed, schools=len(schools))
        return _reply(req.trust_id, result)

    async def _announce(self, uow: Any, eff: school_settings.Effective, changed: list[str], actor_id: str) -> None:
        await uow.emit(
            contract.SCHOOL_SETTINGS_CHANGED,
            contract.SchoolSettingsChanged(
                school_id=eff.school_id,
                changed=changed,
                max_carers_per_code=eff.max_carers_per_code,
                printed_code_days=eff.printed_code_days,
                invitation_days=eff.invitation_days,
                aup_version=eff.aup_version,
                homework_url=eff.homework_url,
                files_url=eff.files_url,
                messages_url=eff.messages_url,
                email_parent_on_removal=eff.email_parent_on_removal,
                language=eff.language,
                actor_id=actor_id,
            ),
            aggregate=f"school:{eff.school_id}",
        )
