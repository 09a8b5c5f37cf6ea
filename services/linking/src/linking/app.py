"""Builds the linking service from its settings."""

from __future__ import annotations

from typing import ClassVar

from contracts.kit.outbox import UnitOfWork
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from pydantic import Field

from contracts import linking as contract
from contracts import identity, notify, platform, streams
from linking import __version__, codes, roster
from linking.bars import Bars
from linking.guessing import Guessing, Limits
from linking.handlers import ROSTER_CONSUMER, Linking

NAME = "linking"
MIGRATIONS = "linking:migrations"
DESCRIPTION = "The roster copy, school settings, link codes, invitations, parent-pupil links, bars and the audit trail."

KEY_FILE = "linking-code.key"


class Settings(ServiceSettings):
    """Settings of the linking service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)
    linking_code_key: str | None = Field(
        default=None,
        repr=False,
        description="32 random bytes, URL-safe base64 (PORTAL_LINKING_CODE_KEY): codes are looked up by an HMAC and "
        "stored encrypted under keys derived from it. Unset: a development key made once and kept in "
        f"DATA_DIR/{KEY_FILE}. Changing it invalidates every code.",
    )

    linking_parent_failures_per_hour: int = Field(
        default=10, ge=1, description="Failed codes (redemptions and previews) a parent may make in an hour; then 429 until the oldest is an hour old."
    )
    linking_client_failures_per_hour: int = Field(
        default=100, ge=1, description="Failed codes from one network address in an hour before its further failures answer 429 (good codes always work)."
    )
    linking_alert_failures_per_minute: int = Field(
        default=50, ge=1, description="Failed codes attributed to one trust within a minute above which an alert is logged and kept for `portal alerts`."
    )
    linking_alert_deployment_failures_per_minute: int = Field(
        default=500, ge=1, description="Failed codes across the deployment within a minute above which an alert is logged and kept."
    )

    def limits(self) -> Limits:
        """The guessing rules' figures."""
        return Limits(
            parent_failures_per_hour=self.linking_parent_failures_per_hour,
            client_failures_per_hour=self.linking_client_failures_per_hour,
            alert_trust_failures_per_minute=self.linking_alert_failures_per_minute,
            alert_deployment_failures_per_minute=self.linking_alert_deployment_failures_per_minute,
        )

    def code_key(self) -> str:
        """The code key: the setting, else the development key file (made on first use)."""
        if self.linking_code_key:
            return self.linking_code_key
        return codes.load_or_create_key_file(self.data_dir / KEY_FILE)


def build(settings: Settings | None = None) -> ServiceRuntime:
    """Wire one replica of the service: its streams, consumers and rpc handlers."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.LINKING, streams.NOTIFY_REQUESTS, streams.PLATFORM, streams.IDENTITY, streams.NOTIFY],
    )
    linking = Linking(
        runtime, public_url=settings.public_url, platform_url=settings.platform_url, key_provider=settings.code_key
    )
    runtime.linking = linking  # type: ignore[attr-defined]  # reached by tests and benchmarks

    bars = Bars(linking)
    guessing = Guessing(linking, lambda ip: bars.vault.client_key(ip), settings.limits())
    runtime.bars = bars  # type: ignore[attr-defined]
    runtime.guessing = guessing  # type: ignore[attr-defined]
    linking.links.is_barred = bars.is_barred
    linking.links.on_redeem_failure = guessing.redeem_failed
    linking.on_code_failure = guessing.preview_failed

    async def on_startup() -> None:
        # Read (or make) the key before serving: a bad key fails the start, not a request.
        _ = linking.vault, bars.vault

    runtime.app.on_startup(on_startup)

    links = linking.links

    async def apply_roster(uow: UnitOfWork, items: list) -> None:
        await roster.apply_batch(uow, items, on_pupil_left=links.on_pupil_left)

    runtime.consume(
        stream=streams.PLATFORM,
        subject=platform.ROSTER_ALL,
        durable=ROSTER_CONSUMER,
        schemas=roster.SCHEMAS,
        batch_handler=apply_roster,
        title="roster",
        description="Keeps linking's copy of trusts, schools, classes and pupils (newest event wins, "
        "whatever the order they arrive in); a pupil who leaves loses their codes. Staff events are identity's.",
    )
    runtime.publishes(
        contract.CODES_REGENERATED,
        contract.CodesRegenerated,
        title="codes regenerated",
        description="Pupils got new printed codes; their earlier codes stopped working. Ids only.",
    )
    runtime.publishes(
        contract.SCHOOL_SETTINGS_CHANGED,
        contract.SchoolSettingsChanged,
        title="school settings changed",
        description="A school's settings changed; the event carries the effective values (link templates for overview).",
    )

    runtime.consume(
        stream=streams.IDENTITY,
        subject=identity.PARENT_VERIFIED,
        durable="linking-parent-verified",
        schemas={identity.PARENT_VERIFIED: identity.ParentVerified},
        handler=links.on_parent_verified,
        title="parent verified",
        description="A parent verified their address: their links awaiting it become linked (and they are emailed).",
    )
    runtime.consume(
        stream=streams.NOTIFY,
        subject=notify.EMAIL_FAILED,
        durable="linking-email-failed",
        schemas={notify.EMAIL_FAILED: notify.EmailFailed},
        handler=links.on_email_failed,
        title="email failed",
        description="An invitation email that could not be delivered shows as bounced to staff.",
    )
    for subject, model, title in [
        (contract.LINK_CREATED, contract.LinkCreated, "link created"),
        (contract.LINK_ACTIVATED, contract.LinkActivated, "link activated"),
        (contract.LINK_REMOVED, contract.LinkRemoved, "link removed"),
    ]:
        runtime.publishes(subject, model, title=title, description=model.__doc__ or title)

    async def redeem(req: contract.RedeemRequest) -> contract.RedeemReply:
        await guessing.check_parent(req.parent_id)
        return await links.redeem(req)

    async def preview_code(req: contract.PreviewCodeRequest) -> contract.CodePreview:
        await guessing.check_parent(req.parent_id)
        return await linking.preview_code(req)

    rpcs = [
        (contract.REDEEM, contract.RedeemRequest, redeem, "redeem code", "A parent links a child with a code (or, dry run, checks that it would). invalid_code also for a barred address; too_many_attempts for a parent past their failures this hour (refused before the code is looked at) or for a failure from an address past its own."),
        (contract.PARENT_CHILDREN, contract.ParentRequest, links.parent_children, "parent's children", "`GET /me/children`: every child a parent is linked to."),
        (contract.ACTIVE_PUPILS, contract.ParentRequest, links.active_pupils, "active pupils", "The pupils a parent may see now: the overview's access check."),
        (contract.UNLINK, contract.UnlinkRequest, links.unlink, "unlink", "`DELETE /me/children/{id}`: a parent unlinks a child."),
        (contract.INVITE, contract.InviteRequest, links.invite, "invite", "`POST /pupils/{id}/invitations`: email an invitation with a single-use code."),
        (contract.REMOVE_PARENT, contract.RemoveParentRequest, links.remove_parent, "remove parent", "`DELETE /pupils/{id}/parents/{parent}`: one parent loses one pupil."),
        (contract.PARENT_PUPILS, contract.StaffParentRequest, links.parent_pupils, "parent's pupils", "`GET /parents/{id}/pupils`: the pupils of the caller's schools a parent is linked to."),
        (contract.REMOVE_PARENT_EVERYWHERE, contract.StaffParentRequest, links.remove_parent_everywhere, "remove parent everywhere", "`DELETE /parents/{id}/pupils`: the parent loses every pupil of the caller's schools."),
        (contract.AUDIT, contract.AuditRequest, links.audit_trail, "audit trail", "`GET /pupils/{id}/audit`: a pupil's audit trail."),
        (contract.SCHOOLS, contract.SchoolsRequest, linking.schools, "schools", "The schools of a scope: how the gateway expands a trust admin's trust into school ids."),
        (contract.CLASSES, contract.ClassesRequest, linking.classes, "classes", "`GET /classes`: every class of the caller's schools with pupil and linked-pupil counts."),
        (contract.CLASS_PUPILS, contract.ClassPupilsRequest, linking.class_pupils, "class pupils", "`GET /classes/{id}/pupils`: the class's pupils with their code expiry, parents and invitations; not_found outside the scope."),
        (contract.CREATE_CODES, contract.CreateCodesRequest, linking.create_codes, "create codes", "\"Create QR codes\" for a class or a pupil: new printed codes, earlier ones revoked in the same transaction."),
        (contract.PREVIEW_CODE, contract.PreviewCodeRequest, preview_code, "preview code", "`GET /link-codes/{code}`: the child's first name, school, class and the school's policy; invalid_code otherwise (a failure, counted like a redemption's: too_many_attempts past the limits)."),
        (contract.PUPIL_QR, contract.PupilQrRequest, linking.pupil_qr, "pupil QR code", "`GET /pupils/{id}/qr.svg|.png`: the pupil's live printed code as a QR code (PNG as base64)."),
        (contract.CLASS_SHEET, contract.ClassSheetRequest, linking.class_sheet, "class QR sheet", "`GET /classes/{id}/qr-sheet[?format=pdf]`: one cut-out card per pupil, as HTML or an A4 PDF (base64)."),
        (contract.GET_SCHOOL_SETTINGS, contract.SchoolSettingsRequest, linking.get_settings, "school settings", "`GET /schools/{id}/settings`: the school's settings with the defaults filled in."),
        (contract.UPDATE_SCHOOL_SETTINGS, contract.UpdateSchoolSettingsRequest, linking.update_settings, "update school settings", "`PUT /schools/{id}/settings`: validated (validation_error names each field); a change is published."),
        (contract.AUP, contract.AupRequest, linking.aup, "acceptable-use policy", "A school's acceptable-use policy and its version, or the default policy when no school is named."),
        (contract.ROSTER_STATUS, contract.RosterStatusRequest, linking.roster_status, "roster status", "Which of the given roster event ids linking has applied: `portal roster import` waits until none is missing."),
        (contract.PUPIL_PARENTS, contract.PupilParentsRequest, bars.pupil_parents, "pupil's parents", "The parents with a standing link to a pupil (ids): the gateway checks their addresses before a bar."),
        (contract.ADD_BAR, contract.AddBarRequest, bars.add, "add bar", "`POST /pupils/{id}/bars`: bar an address from a pupil; the named parents' links end (by a bar), open invitations to it are revoked. Repeatable."),
        (contract.BARS, contract.BarsRequest, bars.list_bars, "bars", "`GET /pupils/{id}/bars`: the pupil's bars in force, addresses decrypted."),
        (contract.LIFT_BAR, contract.LiftBarRequest, bars.lift, "lift bar", "`DELETE /pupils/{id}/bars/{bar}`: the address may be linked again; recorded."),
        (contract.ALERTS, contract.AlertsRequest, guessing.alerts, "guessing alerts", "`portal alerts`: failed codes per minute above the threshold, per trust and deployment-wide, newest first."),
    ]
    for subject, request, handler, title, description in rpcs:
        # ACTIVE_PUPILS is asked on every overview whose links-cache entry is missing.
        runtime.rpc(subject, request=request, title=title, description=description, raw=subject == contract.ACTIVE_PUPILS)(handler)
    return runtime
