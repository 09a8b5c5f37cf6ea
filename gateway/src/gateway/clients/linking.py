"""Linking as the gateway asks it: one typed method per request it makes (`contracts.linking`).

Parents' and anonymous requests are methods of `LinkingClient`; staff requests are methods of
the view `LinkingClient.staff(principal)` returns, which holds the caller's `StaffScope` and id
so that no request can be sent for a member of staff without them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from contracts import linking
from contracts.identity import Principal
from contracts.kit.gather import ReadGatherer
from gateway.clients.transport import Transport


def staff_scope(principal: Principal) -> linking.StaffScope:
    """What a member of staff may see: their school, or their trust's schools."""
    # Only the field that goes with the role counts, so a stray school_id on a trust admin's
    # account (or the reverse) widens nothing.
    if principal.role == "trust_admin":
        return linking.StaffScope(trust_ids=[principal.trust_id] if principal.trust_id else [])
    return linking.StaffScope(school_ids=[principal.school_id] if principal.school_id else [])


class LinkingClient:
    """Link codes, parents' links and the acceptable-use policy."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport
        # Parents this replica does not know yet, asked for together.
        self._active: ReadGatherer[list[str]] = ReadGatherer(self._read_active, max_keys=linking.MAX_PARENTS)

    def staff(self, principal: Principal) -> StaffLinking:
        """Linking's staff requests, within what `principal` may see."""
        return StaffLinking(self._t, staff_scope(principal), principal.account_id)

    async def aup(self, school_id: str | None = None, *, timeout: float | None = None) -> linking.AupReply:
        """A school's acceptable-use policy, or the default one."""
        return await self._t.call(linking.AUP, linking.AupRequest(school_id=school_id), timeout=timeout)

    async def preview_code(self, code: str, client_ip: str, parent_id: str | None = None) -> linking.CodePreview:
        """What a code is for (a failed preview counts towards the guessing limits)."""
        return await self._t.call(
            linking.PREVIEW_CODE, linking.PreviewCodeRequest(code=code, client_ip=client_ip, parent_id=parent_id)
        )

    async def redeem(self, request: linking.RedeemRequest) -> linking.RedeemReply:
        """A parent links a child with a code (or, `dry_run`, checks that it would)."""
        return await self._t.call(linking.REDEEM, request)

    async def children(self, parent_id: str) -> list[linking.ChildView]:
        """Every child linked to a parent, awaiting verification or linked."""
        return (await self._t.call(linking.PARENT_CHILDREN, linking.ParentRequest(parent_id=parent_id))).children

    async def active_pupils(self, parent_id: str) -> list[str]:
        """The pupils a parent may see right now, asked with the other parents asked meanwhile."""
        return await self._active.one(parent_id) or []

    async def _read_active(self, parent_ids: list[str]) -> dict[str, list[str]]:
        reply = await self._t.call(linking.ACTIVE_PUPILS_MANY, linking.ParentsRequest(parent_ids=parent_ids))
        return reply.pupil_ids

    async def unlink(self, parent_id: str, pupil_id: str) -> None:
        """A parent unlinks a child."""
        await self._t.call(linking.UNLINK, linking.UnlinkRequest(parent_id=parent_id, pupil_id=pupil_id))

    async def export(self, parent_id: str) -> linking.ParentExport:
        """Everything linking holds about a parent, for their own export."""
        return await self._t.call(linking.EXPORT, linking.ParentRequest(parent_id=parent_id))


BULK_TIMEOUT = 30.0


class StaffLinking:
    """Linking's staff requests for one caller: every one carries their scope and id."""

    def __init__(self, transport: Transport, scope: linking.StaffScope, actor_id: str) -> None:
        self._t = transport
        self.scope = scope
        self.actor_id = actor_id

    def _who(self) -> dict[str, Any]:
        return {"scope": self.scope, "actor_id": self.actor_id}

    async def schools(self) -> list[linking.SchoolSummary]:
        """The caller's schools (a trust admin's: the trust's), by name."""
        return (await self._t.call(linking.SCHOOLS, linking.SchoolsRequest(scope=self.scope))).schools

    async def classes(self) -> list[linking.ClassSummary]:
        """Every class of the caller's schools."""
        return (await self._t.call(linking.CLASSES, linking.ClassesRequest(**self._who()))).classes

    async def classes_page(
        self, *, school_id: str | None, q: str | None, limit: int, offset: int
    ) -> linking.ClassesReply:
        """A page of the caller's classes, maybe of one school, maybe by a part of their name."""
        return await self._t.call(
            linking.CLASSES,
            linking.ClassesRequest(**self._who(), school_id=school_id, q=q, limit=limit, offset=offset),
        )

    async def school_audit(
        self, school_id: str, *, from_at: datetime | None, to_at: datetime | None, after_id: int, limit: int
    ) -> linking.SchoolAuditReply:
        """A page of a school's audit rows."""
        return await self._t.call(
            linking.SCHOOL_AUDIT,
            linking.SchoolAuditRequest(
                **self._who(), school_id=school_id, from_at=from_at, to_at=to_at, after_id=after_id, limit=limit
            ),
        )

    async def class_pupils(self, class_id: str) -> linking.ClassPupilsReply:
        """A class and its pupils with their parents (ids) and invitations."""
        return await self._t.call(linking.CLASS_PUPILS, linking.ClassPupilsRequest(**self._who(), class_id=class_id))

    async def create_class_codes(self, class_id: str, *, only_missing: bool = False) -> linking.CreateCodesReply:
        """A new printed code for every pupil of a class (`only_missing`: for those without one)."""
        return await self._t.call(
            linking.CREATE_CODES,
            linking.CreateCodesRequest(**self._who(), class_id=class_id, only_missing=only_missing),
        )

    async def create_pupil_code(self, pupil_id: str) -> linking.CreateCodesReply:
        """A new printed code for one pupil."""
        return await self._t.call(linking.CREATE_CODES, linking.CreateCodesRequest(**self._who(), pupil_id=pupil_id))

    async def class_sheet(self, class_id: str, fmt: Literal["html", "pdf"]) -> linking.Document:
        """The class's printable QR sheet."""
        return await self._t.call(
            linking.CLASS_SHEET, linking.ClassSheetRequest(**self._who(), class_id=class_id, format=fmt)
        )

    async def pupil_sheet(self, pupil_id: str, fmt: Literal["html", "pdf"]) -> linking.Document:
        """One pupil's printable card."""
        return await self._t.call(
            linking.PUPIL_SHEET, linking.PupilSheetRequest(**self._who(), pupil_id=pupil_id, format=fmt)
        )

    async def pupil_qr(self, pupil_id: str, fmt: Literal["svg", "png"]) -> linking.Document:
        """A pupil's live printed code as a QR image."""
        return await self._t.call(
            linking.PUPIL_QR, linking.PupilQrRequest(**self._who(), pupil_id=pupil_id, format=fmt)
        )

    async def school_settings(self, school_id: str) -> linking.SchoolSettings:
        """A school's settings, defaults filled in."""
        return await self._t.call(
            linking.GET_SCHOOL_SETTINGS, linking.SchoolSettingsRequest(**self._who(), school_id=school_id)
        )

    async def update_school_settings(self, school_id: str, settings: dict[str, Any]) -> linking.SchoolSettings:
        """Change the settings given (linking validates them)."""
        return await self._t.call(
            linking.UPDATE_SCHOOL_SETTINGS,
            linking.UpdateSchoolSettingsRequest(**self._who(), school_id=school_id, settings=settings),
        )

    async def invite(self, pupil_id: str, email: str) -> linking.InvitationView:
        """Email an invitation to link a pupil."""
        return await self._t.call(linking.INVITE, linking.InviteRequest(**self._who(), pupil_id=pupil_id, email=email))

    async def remove_parent(self, pupil_id: str, parent_id: str, reason: str = "") -> None:
        """That parent loses this pupil (`reason` kept on the audit row)."""
        await self._t.call(
            linking.REMOVE_PARENT,
            linking.RemoveParentRequest(**self._who(), pupil_id=pupil_id, parent_id=parent_id, reason=reason),
        )

    async def bulk_invite(
        self, class_id: str, *, from_contacts: bool, rows: list[linking.InvitationRow]
    ) -> linking.BulkInviteReply:
        """Many invitations for a class at once: the rows given, or the class's roster contacts."""
        return await self._t.call(
            linking.BULK_INVITE,
            linking.BulkInviteRequest(**self._who(), class_id=class_id, from_contacts=from_contacts, invitations=rows),
            # A thousand invitations are one transaction: longer than one request's usual answer.
            timeout=BULK_TIMEOUT,
        )

    async def uptake(
        self, *, school_id: str | None, class_id: str | None, parents_limit: int = linking.MAX_UPTAKE_PARENTS
    ) -> linking.UptakeReply:
        """Uptake figures of the caller's scope, a school of it or a class, with the first page of
        its linked parents."""
        return await self._t.call(
            linking.UPTAKE,
            linking.UptakeRequest(**self._who(), school_id=school_id, class_id=class_id, parents_limit=parents_limit),
        )

    async def uptake_parents(
        self, *, school_id: str | None, class_id: str | None, after: str, limit: int = linking.MAX_UPTAKE_PARENTS
    ) -> linking.UptakeParentsReply:
        """The next page of the same uptake's linked parents, after the cursor `after`."""
        return await self._t.call(
            linking.UPTAKE_PARENTS,
            linking.UptakeParentsRequest(
                **self._who(), school_id=school_id, class_id=class_id, after=after, limit=limit
            ),
        )

    async def trust_settings(self, trust_id: str) -> linking.TrustSettings:
        """A trust's defaults for its schools."""
        return await self._t.call(
            linking.GET_TRUST_SETTINGS, linking.TrustSettingsRequest(**self._who(), trust_id=trust_id)
        )

    async def update_trust_settings(self, trust_id: str, settings: dict[str, Any]) -> linking.TrustSettings:
        """Change the trust's defaults given (linking validates them)."""
        return await self._t.call(
            linking.UPDATE_TRUST_SETTINGS,
            linking.UpdateTrustSettingsRequest(**self._who(), trust_id=trust_id, settings=settings),
        )

    async def withdraw_invitation(self, invitation_id: str) -> None:
        """A pending invitation is revoked; its code stops working."""
        await self._t.call(
            linking.WITHDRAW_INVITATION,
            linking.WithdrawInvitationRequest(**self._who(), invitation_id=invitation_id),
        )

    async def parent_pupils(self, parent_id: str) -> list[linking.ParentPupilView]:
        """The pupils of the caller's schools a parent is linked to."""
        return (
            await self._t.call(linking.PARENT_PUPILS, linking.StaffParentRequest(**self._who(), parent_id=parent_id))
        ).pupils

    async def remove_parent_everywhere(self, parent_id: str) -> list[str]:
        """That parent loses every pupil of the caller's schools; the pupils they lost."""
        reply = await self._t.call(
            linking.REMOVE_PARENT_EVERYWHERE, linking.StaffParentRequest(**self._who(), parent_id=parent_id)
        )
        return reply.pupil_ids

    async def audit(self, pupil_id: str) -> list[linking.AuditEntry]:
        """A pupil's audit trail, oldest first."""
        return (await self._t.call(linking.AUDIT, linking.AuditRequest(**self._who(), pupil_id=pupil_id))).entries

    async def pupil_parents(self, pupil_id: str) -> list[str]:
        """The ids of the parents with a standing link to a pupil."""
        reply = await self._t.call(linking.PUPIL_PARENTS, linking.PupilParentsRequest(**self._who(), pupil_id=pupil_id))
        return reply.parent_ids

    async def add_bar(
        self, pupil_id: str, email: str, reason: str, *, parent_ids: list[str], checked_parent_ids: list[str]
    ) -> linking.AddBarReply:
        """Bar an address from a pupil, naming which of the checked parents hold it."""
        return await self._t.call(
            linking.ADD_BAR,
            linking.AddBarRequest(
                **self._who(),
                pupil_id=pupil_id,
                email=email,
                reason=reason,
                parent_ids=parent_ids,
                checked_parent_ids=checked_parent_ids,
            ),
        )

    async def bars(self, pupil_id: str) -> list[linking.BarView]:
        """The bars in force on a pupil, oldest first."""
        return (await self._t.call(linking.BARS, linking.BarsRequest(**self._who(), pupil_id=pupil_id))).bars

    async def lift_bar(self, pupil_id: str, bar_id: str) -> None:
        """The address may be linked again."""
        await self._t.call(linking.LIFT_BAR, linking.LiftBarRequest(**self._who(), pupil_id=pupil_id, bar_id=bar_id))
