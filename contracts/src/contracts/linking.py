"""Linking: the roster copy, school settings, link codes and QR sheets. Its requests
(`rpc.linking.*`) and events (`linking.*`).

Staff requests carry a `StaffScope`: the schools (and trusts) the caller may see, resolved by
the gateway from the caller's session. Anything outside it answers `not_found`, exactly as if it
did not exist, so the gateway can answer 404 without telling other tenants' ids apart.

Error codes (`contracts.rpc.ErrorReply.error`) and the HTTP status the gateway gives them are
listed below as `E_*`.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, model_validator

from contracts.base import Event, Message, Rpc

# -- events -----------------------------------------------------------------------------------

CODES_REGENERATED = "linking.codes.regenerated.v1"
SCHOOL_SETTINGS_CHANGED = "linking.school.settings_changed.v1"
LINK_CREATED = "linking.link.created.v1"
LINK_ACTIVATED = "linking.link.activated.v1"
LINK_REMOVED = "linking.link.removed.v1"
LINK_ALL = "linking.link.>"

# Error codes in replies (`contracts.rpc.ErrorReply.error`); the gateway maps each to HTTP.
E_NOT_FOUND = "not_found"  # 404: unknown, or outside the caller's scope
E_NO_CODE = "no_code"  # 404: no printed code yet ("create QR codes" first)
E_INVALID_CODE = "invalid_code"  # 404: bad, expired, revoked or used code
E_VALIDATION = "validation_error"  # 422: the fields name each problem
E_CODE_FULL = "code_full"  # 409: a printed code has linked as many carers as the school allows
E_AUP_REQUIRED = "aup_required"  # 422: the school's policy must be accepted first
E_TOO_MANY_ATTEMPTS = "too_many_attempts"  # 429: with retry_after
E_TOO_MANY_INVITATIONS = "too_many_invitations"  # 409: a pupil has 10 pending invitations already

RELATIONSHIPS = ("mother", "father", "carer", "guardian", "grandparent", "other")
Relationship = Literal["mother", "father", "carer", "guardian", "grandparent", "other"]
LinkStatus = Literal["awaiting_verification", "linked"]
InvitationStatus = Literal["invited", "accepted", "expired", "revoked", "bounced"]

# The link templates' only placeholder, and their defaults below the platform's URL.
PUPIL_PLACEHOLDER = "{pupil_id}"
DEFAULT_LINK_PATHS = {
    "homework_url": "/homework?pupil={pupil_id}",
    "files_url": "/files?pupil={pupil_id}",
    "messages_url": "/messages?pupil={pupil_id}",
}


def default_link_templates(platform_url: str) -> dict[str, str]:
    """The link templates a school has until it sets its own (overview uses the same)."""
    base = platform_url.rstrip("/")
    return {name: base + path for name, path in DEFAULT_LINK_PATHS.items()}


class StaffScope(Message):
    """What the calling member of staff may see: their school, or their trust's schools."""

    school_ids: list[str] = Field(default_factory=list, max_length=2000)
    trust_ids: list[str] = Field(default_factory=list, max_length=50)


class StaffRequest(Message):
    """A request made for a member of staff."""

    scope: StaffScope
    actor_id: str = Field(default="", max_length=128, description="The staff id, for the audit trail")


# -- roster views ----------------------------------------------------------------------------


class SchoolsRequest(Message):
    """The schools in a scope (the gateway turns a trust admin's trust into school ids)."""

    scope: StaffScope


class SchoolSummary(Message):
    """A school as the roster has it."""

    school_id: str
    trust_id: str
    name: str
    timezone: str


class SchoolsReply(Message):
    """Schools, by name."""

    schools: list[SchoolSummary]


class ClassesRequest(StaffRequest):
    """`GET /classes`: every class of the scope's schools (`school_id`: one of them; `q`: whose
    name holds it), a page of `limit` from `offset` when `limit` is given."""

    school_id: str | None = Field(default=None, max_length=128)
    q: str | None = Field(default=None, max_length=200)
    limit: int | None = Field(default=None, ge=1, le=500)
    offset: int = Field(default=0, ge=0)


class ClassSummary(Message):
    """One row of `GET /classes`."""

    class_id: str
    name: str
    school_id: str
    school_name: str
    pupil_count: int
    linked_pupil_count: int


class ClassesReply(Message):
    """`GET /classes` answers `classes` as its array, by school then class name."""

    classes: list[ClassSummary]
    next_offset: int | None = Field(default=None, description="Where the next page starts; null on the last")


class ClassPupilsRequest(StaffRequest):
    """`GET /classes/{class_id}/pupils`."""

    class_id: str = Field(min_length=1, max_length=128)


class ParentLinkView(Message):
    """A parent linked to a pupil; the gateway adds `name` and `email` from identity."""

    parent_id: str
    relationship: Relationship
    status: LinkStatus
    since: AwareDatetime


class InvitationView(Message):
    """An email invitation to link a pupil."""

    invitation_id: str
    email: str
    status: InvitationStatus
    sent_at: AwareDatetime
    expires_at: AwareDatetime


class PupilView(Message):
    """One pupil of `GET /classes/{class_id}/pupils`."""

    pupil_id: str
    first_name: str
    last_name: str
    code_expires_at: AwareDatetime | None = Field(description="The live printed code's expiry; null before codes")
    parents: list[ParentLinkView] = Field(default_factory=list)
    invitations: list[InvitationView] = Field(default_factory=list)


class ClassPupilsReply(Message):
    """The class and its current pupils, by last then first name."""

    class_id: str
    name: str
    school_id: str
    school_name: str
    pupils: list[PupilView]


# -- printed codes ---------------------------------------------------------------------------


class CreateCodesRequest(StaffRequest):
    """ "Create QR codes": a new printed code for every pupil of a class, or for one pupil.

    Any earlier code of those pupils stops working in the same transaction.
    """

    class_id: str | None = Field(default=None, max_length=128)
    pupil_id: str | None = Field(default=None, max_length=128)
    only_missing: bool = Field(
        default=False,
        description="Only the pupils without a live printed code get one; the others' codes keep working",
    )

    @model_validator(mode="after")
    def _one_target(self) -> CreateCodesRequest:
        if (self.class_id is None) == (self.pupil_id is None):
            raise ValueError("give exactly one of class_id and pupil_id")
        return self


class CreatedCode(Message):
    """A pupil's new printed code (the code itself is only ever printed, never listed)."""

    pupil_id: str
    code_id: str
    expires_at: AwareDatetime


class CreateCodesReply(Message):
    """The pupils that got a new code."""

    class_id: str | None = None
    codes: list[CreatedCode]


class PreviewCodeRequest(Message):
    """ "Is this my child?": what a code is for, before anyone links with it.

    `client_ip` and `parent_id` are for the guessing limits (a failed preview counts).
    """

    code: str = Field(max_length=256, description="As typed: any case, spaces and dashes")
    client_ip: str = Field(default="", max_length=64)
    parent_id: str | None = Field(default=None, max_length=128)


class AupReply(Message):
    """An acceptable-use policy and its version (the version changes whenever the text does)."""

    version: str
    text: str
    school_id: str | None = None


class CodePreview(Message):
    """`GET /link-codes/{code}`: `first_name, school_name, class_name, aup`."""

    first_name: str
    school_id: str
    school_name: str
    class_name: str
    aup: AupReply
    kind: Literal["printed", "invitation"]
    expires_at: AwareDatetime
    school_language: Literal["en", "cy"] = Field(
        default="en", description="The school's setting `language`: the page's language for a visitor"
    )


class PupilQrRequest(StaffRequest):
    """`GET /pupils/{pupil_id}/qr.svg|.png`: the pupil's live printed code as a QR code."""

    pupil_id: str = Field(min_length=1, max_length=128)
    format: Literal["svg", "png"] = "svg"


class ClassSheetRequest(StaffRequest):
    """`GET /classes/{class_id}/qr-sheet[?format=pdf]`: a printable card per pupil."""

    class_id: str = Field(min_length=1, max_length=128)
    format: Literal["html", "pdf"] = "html"


class Document(Message):
    """A rendered document: text (SVG, HTML) as is, binary (PNG, PDF) as base64."""

    content_type: str
    filename: str
    text: str | None = None
    data_base64: str | None = None

    def body(self) -> bytes:
        """The document's bytes, whichever way it travelled."""
        if self.text is not None:
            return self.text.encode()
        return base64.b64decode(self.data_base64 or "")


# -- school settings -------------------------------------------------------------------------


class SchoolSettingsRequest(StaffRequest):
    """`GET /schools/{school_id}/settings`."""

    school_id: str = Field(min_length=1, max_length=128)


class SchoolSettings(Message):
    """`GET, PUT /schools/{school_id}/settings` answer this."""

    school_id: str
    max_carers_per_code: int
    printed_code_days: int
    invitation_days: int
    aup_text: str
    aup_version: str
    homework_url: str
    files_url: str
    messages_url: str
    email_parent_on_removal: bool
    language: Literal["en", "cy"] = Field(
        default="en", description="`cy`: Welsh and English side by side on the QR sheet and invitation emails"
    )
    updated_at: AwareDatetime | None = None


# Limits checked by linking (the gateway may show them in its OpenAPI document).
SCHOOL_LANGUAGES = ("en", "cy")
SETTINGS_LIMITS: dict[str, tuple[int, int]] = {
    "max_carers_per_code": (1, 20),
    "printed_code_days": (1, 365),
    "invitation_days": (1, 90),
}
AUP_MAX_CHARS = 20_000
URL_MAX_CHARS = 500


class UpdateSchoolSettingsRequest(StaffRequest):
    """`PUT /schools/{school_id}/settings`: the fields given change, the others stay.

    `settings` is passed through as the client sent it: linking validates it and answers
    `validation_error` naming each bad field, so every client gets the same messages.
    """

    school_id: str = Field(min_length=1, max_length=128)
    settings: dict[str, Any]


class AupRequest(Message):
    """A school's policy, or the default one when no school is named."""

    school_id: str | None = Field(default=None, max_length=128)


# -- roster import ---------------------------------------------------------------------------


class RosterStatusRequest(Message):
    """Which of these roster events has linking applied? (`portal roster import` waits on it)"""

    event_ids: list[str] = Field(max_length=5000)


class RosterStatusReply(Message):
    """`missing`: the ids not applied yet (in the order asked); done when it is empty."""

    applied: int
    missing: list[str]


# -- parents linking children -------------------------------------------------------------------


class RedeemRequest(Message):
    """A parent uses a code: registering with it (`verified` false) or signed in (true).

    `dry_run` checks everything but the bars (valid, room left, policy) and links nothing: the
    gateway asks it before a registration creates an account. `email` is the caller's address,
    for the safeguarding bars: signed in, a barred one answers `invalid_code`; registering, it
    links nothing and answers `created` false without a child, so that a registration answers
    the same whoever the address is barred for. `client_ip` is for the guessing limits.
    """

    code: str = Field(max_length=256)
    parent_id: str | None = Field(default=None, max_length=128)
    relationship: Relationship | None = None
    verified: bool = True
    accept_aup: bool = False
    email: str = Field(default="", max_length=254)
    client_ip: str = Field(default="", max_length=64)
    dry_run: bool = False


class ChildView(Message):
    """A child as its parent sees it (`GET /me/children`)."""

    pupil_id: str
    first_name: str
    last_name: str
    school_id: str
    school_name: str
    class_name: str
    relationship: Relationship
    status: LinkStatus
    since: AwareDatetime


class RedeemReply(Message):
    """The link (new, or the one that already existed), and the school's policy."""

    created: bool
    child: ChildView | None = None
    aup: AupReply | None = None
    school_language: Literal["en", "cy"] = Field(default="en", description="The school's setting `language`")


class ParentRequest(Message):
    """Something about one parent, asked by the gateway for that signed-in parent."""

    parent_id: str = Field(min_length=1, max_length=128)


# As many parents as one gateway's first visits of a busy moment (see `ACTIVE_PUPILS_MANY`).
MAX_PARENTS = 200


class ParentsRequest(Message):
    """Something about each of these parents, asked by the gateway for signed-in parents."""

    parent_ids: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(min_length=1, max_length=MAX_PARENTS)


class ChildrenReply(Message):
    """Every child the parent is linked to (awaiting verification or linked)."""

    children: list[ChildView]


class ActivePupilsReply(Message):
    """The pupils a parent may see right now (status linked): the overview's access check."""

    pupil_ids: list[str]


class UnlinkRequest(ParentRequest):
    """A parent unlinks a child themselves."""

    pupil_id: str = Field(min_length=1, max_length=128)


class Done(Message):
    """Done."""

    ok: bool = True


# -- staff managing links ----------------------------------------------------------------------


class InviteRequest(StaffRequest):
    """`POST /pupils/{pupil_id}/invitations`: email an invitation with its own single-use code."""

    pupil_id: str = Field(min_length=1, max_length=128)
    email: str = Field(min_length=3, max_length=254)


class RemoveParentRequest(StaffRequest):
    """`DELETE /pupils/{pupil_id}/parents/{parent_id}`: that parent loses this pupil only."""

    pupil_id: str = Field(min_length=1, max_length=128)
    parent_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=500)


class StaffParentRequest(StaffRequest):
    """`GET` / `DELETE /parents/{parent_id}/pupils`, within the caller's schools."""

    parent_id: str = Field(min_length=1, max_length=128)
    reason: str = Field(default="", max_length=500)


class ParentPupilView(ChildView):
    """A pupil of the caller's schools that the parent is linked to (as the parent sees it)."""


class ParentPupilsReply(Message):
    """The pupils (of the caller's schools) a parent is linked to."""

    pupils: list[ParentPupilView]


class RemovedReply(Message):
    """The pupils the parent lost."""

    pupil_ids: list[str]


class AuditRequest(StaffRequest):
    """`GET /pupils/{pupil_id}/audit`."""

    pupil_id: str = Field(min_length=1, max_length=128)


class AuditEntry(Message):
    """One row of a pupil's audit trail."""

    at: AwareDatetime
    actor: str
    action: Literal[
        "invitation_sent",
        "invitation_withdrawn",
        "link_created",
        "link_activated",
        "link_removed",
        "bar_added",
        "bar_lifted",
        "code_regenerated",
    ]
    parent_id: str | None = None
    reason: str = ""


class AuditReply(Message):
    """Oldest first."""

    entries: list[AuditEntry]


class ExportedChild(Message):
    """A child the parent is or was linked to: `status` is `removed` once the link ended
    (`ended_at`), and `since` when it was made (or, once linked, activated)."""

    pupil_id: str
    first_name: str
    last_name: str
    school_name: str
    relationship: Relationship
    status: Literal["awaiting_verification", "linked", "removed"]
    since: AwareDatetime
    ended_at: AwareDatetime | None = None


class ExportedAuditEntry(Message):
    """One audit row about the parent: when, what, which pupil (never the staff member who did
    it, nor a reason staff wrote)."""

    at: AwareDatetime
    action: str
    pupil_id: str


class ParentExport(Message):
    """What linking holds about one parent: every link ever made for them (oldest first) and
    every audit row that names them (oldest first)."""

    children: list[ExportedChild]
    audit: list[ExportedAuditEntry]


# -- events ----------------------------------------------------------------------------------


class LinkCreated(Event):
    """A parent linked a child with a code (awaiting verification, or linked at once)."""

    link_id: str
    parent_id: str
    pupil_id: str
    school_id: str
    status: LinkStatus
    via: Literal["printed", "invitation"]


class LinkActivated(Event):
    """A link became active: the parent verified their address."""

    link_id: str
    parent_id: str
    pupil_id: str
    school_id: str


class LinkRemoved(Event):
    """A parent lost a child: removed by staff, by the parent, by a bar, the pupil left, the
    pupil moved to another school (`school_changed`: `school_id` is the school the link was made at),
    or the parent deleted their account (`account_deleted`)."""

    link_id: str
    parent_id: str
    pupil_id: str
    school_id: str
    by: Literal["staff", "parent", "bar", "pupil_left", "school_changed", "account_deleted"]
    actor_id: str = ""


class CodesRegenerated(Event):
    """Pupils got new printed codes; their earlier ones stopped working. Ids only."""

    school_id: str
    class_id: str | None = None
    pupil_ids: list[str]
    code_ids: list[str]
    revoked_code_ids: list[str]
    actor_id: str = ""


class SchoolSettingsChanged(Event):
    """A school's settings changed; carries the effective values (overview's link templates)."""

    school_id: str
    changed: list[str]
    max_carers_per_code: int
    printed_code_days: int
    invitation_days: int
    aup_version: str
    homework_url: str
    files_url: str
    messages_url: str
    email_parent_on_removal: bool
    language: Literal["en", "cy"] = "en"
    actor_id: str = ""


# -- part 3: safeguarding bars, guessing limits and alerts -------------------------------------


class PupilParentsRequest(StaffRequest):
    """The parents with a standing link to a pupil (ids only), within the caller's schools."""

    pupil_id: str = Field(min_length=1, max_length=128)


class PupilParentsReply(Message):
    """Parent ids; the gateway asks identity for their addresses."""

    parent_ids: list[str]


class AddBarRequest(StaffRequest):
    """`POST /pupils/{pupil_id}/bars`: bar an address from a pupil; the links it holds end.

    Linking never learns parents' addresses: the gateway asks identity and names, in
    `parent_ids`, the pupil's parents whose account has this address, and in
    `checked_parent_ids` every parent it looked at. Adding the same address again is the same
    bar (its id is answered), so the request may be repeated.
    """

    pupil_id: str = Field(min_length=1, max_length=128)
    email: str = Field(min_length=3, max_length=254)
    reason: str = Field(min_length=1, max_length=1000)
    parent_ids: list[str] = Field(default_factory=list, max_length=1000)
    checked_parent_ids: list[str] = Field(default_factory=list, max_length=1000)


class AddBarReply(Message):
    """The bar; whose links it ended; and parents who linked since the gateway looked, whose
    addresses it must check and send again (`parent_ids`) with the same request."""

    bar_id: str
    created: bool
    removed_parent_ids: list[str] = Field(default_factory=list)
    unchecked_parent_ids: list[str] = Field(default_factory=list)


class BarsRequest(StaffRequest):
    """`GET /pupils/{pupil_id}/bars`."""

    pupil_id: str = Field(min_length=1, max_length=128)


class BarView(Message):
    """A bar in force: `bar_id, email, reason, at`."""

    bar_id: str
    email: str
    reason: str
    at: AwareDatetime
    by: str = ""


class BarsReply(Message):
    """The pupil's bars in force, oldest first."""

    bars: list[BarView]


class LiftBarRequest(StaffRequest):
    """`DELETE /pupils/{pupil_id}/bars/{bar_id}`: the address may be linked again."""

    pupil_id: str = Field(min_length=1, max_length=128)
    bar_id: str = Field(min_length=1, max_length=128)


class AlertsRequest(Message):
    """`portal alerts`: guessing alerts seen in the last `hours`."""

    hours: int = Field(default=24, ge=1, le=24 * 90)
    limit: int = Field(default=200, ge=1, le=1000)


class GuessingAlert(Message):
    """Failed link codes above the per-minute threshold: one per scope and clock minute.

    `scope` is `trust` (failures attributed to `trust_id`) or `deployment` (every failure).
    `failures` is the highest count within a sliding minute seen during that clock minute.
    """

    alert_id: int
    scope: Literal["trust", "deployment"]
    trust_id: str | None = None
    at: AwareDatetime
    last_at: AwareDatetime
    failures: int
    threshold: int


class AlertsReply(Message):
    """Newest first."""

    alerts: list[GuessingAlert]


# -- requests, each declared once: subject, request, reply ---------------------------------

SCHOOLS: Rpc[SchoolsRequest, SchoolsReply] = Rpc(
    "rpc.linking.schools.v1",
    SchoolsRequest,
    SchoolsReply,
    title="schools",
    description="The schools of a scope: how the gateway expands a trust admin's trust into school ids.",
)

CLASSES: Rpc[ClassesRequest, ClassesReply] = Rpc(
    "rpc.linking.classes.v1",
    ClassesRequest,
    ClassesReply,
    title="classes",
    description="`GET /classes`: every class of the caller's schools with pupil and linked-pupil counts.",
)

CLASS_PUPILS: Rpc[ClassPupilsRequest, ClassPupilsReply] = Rpc(
    "rpc.linking.class_pupils.v1",
    ClassPupilsRequest,
    ClassPupilsReply,
    title="class pupils",
    description="`GET /classes/{id}/pupils`: the class's pupils with their code expiry, parents and invitations; not_found outside the scope.",
    errors=(E_NOT_FOUND,),
)

CREATE_CODES: Rpc[CreateCodesRequest, CreateCodesReply] = Rpc(
    "rpc.linking.create_codes.v1",
    CreateCodesRequest,
    CreateCodesReply,
    title="create codes",
    description='"Create QR codes" for a class or a pupil: new printed codes, earlier ones revoked in the same transaction.',
    errors=(E_NOT_FOUND,),
)

PREVIEW_CODE: Rpc[PreviewCodeRequest, CodePreview] = Rpc(
    "rpc.linking.preview_code.v1",
    PreviewCodeRequest,
    CodePreview,
    title="preview code",
    description="`GET /link-codes/{code}`: the child's first name, school, class and the school's policy; invalid_code otherwise (a failure, counted like a redemption's: too_many_attempts past the limits).",
    errors=(E_INVALID_CODE, E_TOO_MANY_ATTEMPTS),
)

PUPIL_QR: Rpc[PupilQrRequest, Document] = Rpc(
    "rpc.linking.pupil_qr.v1",
    PupilQrRequest,
    Document,
    title="pupil QR code",
    description="`GET /pupils/{id}/qr.svg|.png`: the pupil's live printed code as a QR code (PNG as base64).",
    errors=(E_NOT_FOUND, E_NO_CODE),
)

CLASS_SHEET: Rpc[ClassSheetRequest, Document] = Rpc(
    "rpc.linking.class_sheet.v1",
    ClassSheetRequest,
    Document,
    title="class QR sheet",
    description="`GET /classes/{id}/qr-sheet[?format=pdf]`: one cut-out card per pupil, as HTML or an A4 PDF (base64).",
    errors=(E_NOT_FOUND, E_NO_CODE),
)

GET_SCHOOL_SETTINGS: Rpc[SchoolSettingsRequest, SchoolSettings] = Rpc(
    "rpc.linking.school_settings.v1",
    SchoolSettingsRequest,
    SchoolSettings,
    title="school settings",
    description="`GET /schools/{id}/settings`: the school's settings with the defaults filled in.",
    errors=(E_NOT_FOUND,),
)

UPDATE_SCHOOL_SETTINGS: Rpc[UpdateSchoolSettingsRequest, SchoolSettings] = Rpc(
    "rpc.linking.update_school_settings.v1",
    UpdateSchoolSettingsRequest,
    SchoolSettings,
    title="update school settings",
    description="`PUT /schools/{id}/settings`: validated (validation_error names each field); a change is published.",
    errors=(E_NOT_FOUND, E_VALIDATION),
)

AUP: Rpc[AupRequest, AupReply] = Rpc(
    "rpc.linking.aup.v1",
    AupRequest,
    AupReply,
    title="acceptable-use policy",
    description="A school's acceptable-use policy and its version, or the default policy when no school is named.",
    errors=(E_NOT_FOUND,),
)

ROSTER_STATUS: Rpc[RosterStatusRequest, RosterStatusReply] = Rpc(
    "rpc.linking.roster_status.v1",
    RosterStatusRequest,
    RosterStatusReply,
    title="roster status",
    description="Which of the given roster event ids linking has applied: `portal roster import` waits until none is missing.",
)

REDEEM: Rpc[RedeemRequest, RedeemReply] = Rpc(
    "rpc.linking.redeem.v1",
    RedeemRequest,
    RedeemReply,
    title="redeem code",
    description="A parent links a child with a code (or, dry run, checks that it would). invalid_code also for a signed-in parent's barred address (a registration's links nothing, silently; a dry run ignores bars); too_many_attempts for a parent past their failures this hour (refused before the code is looked at) or for a failure from an address past its own.",
    errors=(E_INVALID_CODE, E_CODE_FULL, E_AUP_REQUIRED, E_TOO_MANY_ATTEMPTS, E_VALIDATION),
)

PARENT_CHILDREN: Rpc[ParentRequest, ChildrenReply] = Rpc(
    "rpc.linking.parent_children.v1",
    ParentRequest,
    ChildrenReply,
    title="parent's children",
    description="`GET /me/children`: every child a parent is linked to.",
)

ACTIVE_PUPILS: Rpc[ParentRequest, ActivePupilsReply] = Rpc(
    "rpc.linking.active_pupils.v1",
    ParentRequest,
    ActivePupilsReply,
    title="active pupils",
    description="The pupils a parent may see now: the overview's access check.",
)


class ActivePupilsManyReply(Message):
    """Each parent's pupils they may see now, by parent id; a parent with none is left out."""

    pupil_ids: dict[str, list[str]]


ACTIVE_PUPILS_MANY: Rpc[ParentsRequest, ActivePupilsManyReply] = Rpc(
    "rpc.linking.active_pupils_many.v1",
    ParentsRequest,
    ActivePupilsManyReply,
    title="active pupils of many parents",
    description="The pupils each of many parents may see now: the gateway's cache misses of one moment, asked together.",
)

UNLINK: Rpc[UnlinkRequest, Done] = Rpc(
    "rpc.linking.unlink.v1",
    UnlinkRequest,
    Done,
    title="unlink",
    description="`DELETE /me/children/{id}`: a parent unlinks a child.",
    errors=(E_NOT_FOUND,),
)

INVITE: Rpc[InviteRequest, InvitationView] = Rpc(
    "rpc.linking.invite.v1",
    InviteRequest,
    InvitationView,
    title="invite",
    description="`POST /pupils/{id}/invitations`: email an invitation with a single-use code; too_many_invitations while the pupil has 10 pending.",
    errors=(E_NOT_FOUND, E_VALIDATION, E_TOO_MANY_INVITATIONS),
)

REMOVE_PARENT: Rpc[RemoveParentRequest, Done] = Rpc(
    "rpc.linking.remove_parent.v1",
    RemoveParentRequest,
    Done,
    title="remove parent",
    description="`DELETE /pupils/{id}/parents/{parent}`: one parent loses one pupil.",
    errors=(E_NOT_FOUND,),
)

PARENT_PUPILS: Rpc[StaffParentRequest, ParentPupilsReply] = Rpc(
    "rpc.linking.parent_pupils.v1",
    StaffParentRequest,
    ParentPupilsReply,
    title="parent's pupils",
    description="`GET /parents/{id}/pupils`: the pupils of the caller's schools a parent is linked to.",
    errors=(E_NOT_FOUND,),
)

REMOVE_PARENT_EVERYWHERE: Rpc[StaffParentRequest, RemovedReply] = Rpc(
    "rpc.linking.remove_parent_everywhere.v1",
    StaffParentRequest,
    RemovedReply,
    title="remove parent everywhere",
    description="`DELETE /parents/{id}/pupils`: the parent loses every pupil of the caller's schools.",
    errors=(E_NOT_FOUND,),
)

AUDIT: Rpc[AuditRequest, AuditReply] = Rpc(
    "rpc.linking.audit.v1",
    AuditRequest,
    AuditReply,
    title="audit trail",
    description="`GET /pupils/{id}/audit`: a pupil's audit trail.",
    errors=(E_NOT_FOUND,),
)

PUPIL_PARENTS: Rpc[PupilParentsRequest, PupilParentsReply] = Rpc(
    "rpc.linking.pupil_parents.v1",
    PupilParentsRequest,
    PupilParentsReply,
    title="pupil's parents",
    description="The parents with a standing link to a pupil (ids): the gateway checks their addresses before a bar.",
    errors=(E_NOT_FOUND,),
)

ADD_BAR: Rpc[AddBarRequest, AddBarReply] = Rpc(
    "rpc.linking.add_bar.v1",
    AddBarRequest,
    AddBarReply,
    title="add bar",
    description="`POST /pupils/{id}/bars`: bar an address from a pupil; the named parents' links end (by a bar), open invitations to it are revoked. Repeatable.",
    errors=(E_NOT_FOUND, E_VALIDATION),
)

BARS: Rpc[BarsRequest, BarsReply] = Rpc(
    "rpc.linking.bars.v1",
    BarsRequest,
    BarsReply,
    title="bars",
    description="`GET /pupils/{id}/bars`: the pupil's bars in force, addresses decrypted.",
    errors=(E_NOT_FOUND,),
)

LIFT_BAR: Rpc[LiftBarRequest, Done] = Rpc(
    "rpc.linking.lift_bar.v1",
    LiftBarRequest,
    Done,
    title="lift bar",
    description="`DELETE /pupils/{id}/bars/{bar}`: the address may be linked again; recorded.",
    errors=(E_NOT_FOUND,),
)

ALERTS: Rpc[AlertsRequest, AlertsReply] = Rpc(
    "rpc.linking.alerts.v1",
    AlertsRequest,
    AlertsReply,
    title="guessing alerts",
    description="`portal alerts`: failed codes per minute above the threshold, per trust and deployment-wide, newest first.",
)

EXPORT: Rpc[ParentRequest, ParentExport] = Rpc(
    "rpc.linking.export.v1",
    ParentRequest,
    ParentExport,
    title="parent's export",
    description="`GET /me/export`: every link of a parent, ended ones too, and the audit rows that name them.",
)


# -- running it across a trust (staff at scale) ---------------------------------------------------

E_ALREADY_ACCEPTED = "already_accepted"  # 409: an accepted invitation cannot be withdrawn


class WithdrawInvitationRequest(StaffRequest):
    """`DELETE /invitations/{invitation_id}`: a pending invitation is revoked, its code with it."""

    invitation_id: str = Field(min_length=1, max_length=128)


WITHDRAW_INVITATION: Rpc[WithdrawInvitationRequest, Done] = Rpc(
    "rpc.linking.withdraw_invitation.v1",
    WithdrawInvitationRequest,
    Done,
    title="withdraw invitation",
    description="`DELETE /invitations/{id}`: a pending invitation becomes revoked and its code stops working at "
    "once (a revoked or expired one: done already); already_accepted for an accepted one; not_found outside the scope.",
    errors=(E_NOT_FOUND, E_ALREADY_ACCEPTED),
)


class PupilSheetRequest(StaffRequest):
    """`GET /pupils/{pupil_id}/qr-sheet[?format=pdf]`: the pupil's one cut-out card."""

    pupil_id: str = Field(min_length=1, max_length=128)
    format: Literal["html", "pdf"] = "html"


PUPIL_SHEET: Rpc[PupilSheetRequest, Document] = Rpc(
    "rpc.linking.pupil_sheet.v1",
    PupilSheetRequest,
    Document,
    title="pupil QR card",
    description="`GET /pupils/{id}/qr-sheet[?format=pdf]`: one pupil's cut-out card, as HTML or an A4 PDF (base64).",
    errors=(E_NOT_FOUND, E_NO_CODE),
)


# At most this many rows in one bulk invitation request (the gateway answers 413 beyond it).
MAX_BULK_INVITATIONS = 1000
SkipReason = Literal[
    "invalid_email",
    "unknown_pupil",
    "duplicate",
    "already_invited",
    "already_linked",
    "barred",
    "too_many_invitations",
]


class InvitationRow(Message):
    """One row of a bulk invitation: a pupil and an address (checked by linking, row by row)."""

    pupil_id: str = Field(max_length=320)
    email: str = Field(max_length=320)


class BulkInviteRequest(StaffRequest):
    """`POST /classes/{class_id}/invitations`: a list of invitations, or every contact of the
    class's pupils who have no linked parent (`from_contacts`)."""

    class_id: str = Field(min_length=1, max_length=128)
    from_contacts: bool = False
    invitations: list[InvitationRow] = Field(default_factory=list, max_length=MAX_BULK_INVITATIONS)


class SkippedInvitation(Message):
    """A row that was not sent, and why."""

    pupil_id: str
    email: str
    reason: SkipReason


class BulkInviteReply(Message):
    """How many invitations were sent; the rows skipped with their reasons, in the order given."""

    sent: int
    skipped: list[SkippedInvitation] = Field(default_factory=list)


BULK_INVITE: Rpc[BulkInviteRequest, BulkInviteReply] = Rpc(
    "rpc.linking.bulk_invite.v1",
    BulkInviteRequest,
    BulkInviteReply,
    title="bulk invite",
    description="`POST /classes/{id}/invitations`: up to 1,000 invitations in one transaction (a bad row is "
    "skipped with its reason, the rest sent), or every roster contact of the class's pupils without a linked "
    "parent and without a pending invitation to that address; not_found outside the scope.",
    errors=(E_NOT_FOUND,),
)


# A page of an uptake's linked parents holds at most this many, and fewer when their ids would
# not fit one NATS message (a trust's parents can be more than one holds).
MAX_UPTAKE_PARENTS = 20_000


class UptakeRequest(StaffRequest):
    """`GET /uptake[?school_id=…|?class_id=…]`: default, the caller's whole scope, with the
    first `parents_limit` of its linked parents."""

    school_id: str | None = Field(default=None, max_length=128)
    class_id: str | None = Field(default=None, max_length=128)
    parents_limit: int = Field(default=MAX_UPTAKE_PARENTS, ge=1, le=MAX_UPTAKE_PARENTS)


class UptakeCounts(Message):
    """Linking's uptake figures of a scope or a row (identity adds whether parents sign in)."""

    pupils: int = 0
    pupils_with_linked_parent: int = 0
    invitations_pending: int = 0
    invitations_bounced: int = 0
    parents_linked: int = 0


class UptakeRow(UptakeCounts):
    """A school (trust scope) or class (school scope); `parents` are those of its linked parents
    in the reply's page of `parent_ids`, as positions in it (each id is sent once, whatever its
    rows)."""

    id: str
    name: str
    parents: list[int] = Field(default_factory=list)


class UptakeReply(UptakeCounts):
    """The scope's figures, the first page of its linked parents (for identity's figures) and a
    row per school or class. `parents_after` is the cursor of the next page
    (`rpc.linking.uptake_parents.v1`), null on the last: a trust's parents can be more than one
    NATS message holds."""

    scope: Literal["trust", "school", "class"]
    parent_ids: list[str] = Field(default_factory=list)
    rows: list[UptakeRow] = Field(default_factory=list)
    parents_after: str | None = None


class UptakeParentsRequest(StaffRequest):
    """The next page of the linked parents of the same scope as an `UptakeRequest`: those after
    `after` (ids in the database's order), at most `limit` and as many as one message holds."""

    school_id: str | None = Field(default=None, max_length=128)
    class_id: str | None = Field(default=None, max_length=128)
    after: str = Field(min_length=1, max_length=128)
    limit: int = Field(default=MAX_UPTAKE_PARENTS, ge=1, le=MAX_UPTAKE_PARENTS)


class UptakeParentsRow(Message):
    """A row of the uptake (school or class id) and its parents in the page, as positions in it."""

    id: str
    parents: list[int]


class UptakeParentsReply(Message):
    """A page of linked parents; `parents_after` is the next page's cursor, null on the last."""

    parent_ids: list[str]
    rows: list[UptakeParentsRow] = Field(default_factory=list)
    parents_after: str | None = None


UPTAKE: Rpc[UptakeRequest, UptakeReply] = Rpc(
    "rpc.linking.uptake.v1",
    UptakeRequest,
    UptakeReply,
    title="uptake",
    description="`GET /uptake`: pupils, pupils with a linked parent, pending and bounced invitations and linked "
    "parents (ids) of a trust's schools, a school's classes or a class; not_found outside the scope.",
    errors=(E_NOT_FOUND,),
)

UPTAKE_PARENTS: Rpc[UptakeParentsRequest, UptakeParentsReply] = Rpc(
    "rpc.linking.uptake_parents.v1",
    UptakeParentsRequest,
    UptakeParentsReply,
    title="uptake parents",
    description="The next page of an uptake's linked parents (ids, and the rows each is in), after the cursor "
    "`parents_after` of the uptake or of the previous page; not_found outside the scope.",
    errors=(E_NOT_FOUND,),
)


class SchoolAuditRequest(StaffRequest):
    """`GET /schools/{school_id}/audit`: the school's audit rows from `from_at` (inclusive) to
    `to_at` (exclusive), oldest first, a page of `limit` after the row `after_id`."""

    school_id: str = Field(min_length=1, max_length=128)
    from_at: AwareDatetime | None = None
    to_at: AwareDatetime | None = None
    after_id: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=500)


class SchoolAuditEntry(AuditEntry):
    """An audit row with its pupil."""

    pupil_id: str
    id: int


class SchoolAuditReply(Message):
    """A page of the school's audit rows; `next_after` is where the next page starts (null: the last)."""

    entries: list[SchoolAuditEntry]
    next_after: int | None = None


SCHOOL_AUDIT: Rpc[SchoolAuditRequest, SchoolAuditReply] = Rpc(
    "rpc.linking.school_audit.v1",
    SchoolAuditRequest,
    SchoolAuditReply,
    title="school audit",
    description="`GET /schools/{id}/audit`: a page of the school's audit rows between two times; not_found outside the scope.",
    errors=(E_NOT_FOUND,),
)


class RosterSnapshotRequest(Message):
    """`portal roster import --full`: what linking holds of one school now."""

    school_id: str = Field(min_length=1, max_length=128)


class RosterSnapshotReply(Message):
    """The school's current pupils (not those who left) and classes, ids only."""

    pupil_ids: list[str]
    class_ids: list[str]


ROSTER_SNAPSHOT: Rpc[RosterSnapshotRequest, RosterSnapshotReply] = Rpc(
    "rpc.linking.roster_snapshot.v1",
    RosterSnapshotRequest,
    RosterSnapshotReply,
    title="roster snapshot",
    description="`portal roster import --full`: a school's current pupils and classes (ids), to tell who left.",
)


class TrustSettingsRequest(StaffRequest):
    """`GET /trusts/{trust_id}/settings` (trust admins)."""

    trust_id: str = Field(min_length=1, max_length=128)


class UpdateTrustSettingsRequest(StaffRequest):
    """`PUT /trusts/{trust_id}/settings`: the fields given change (validated as a school's)."""

    trust_id: str = Field(min_length=1, max_length=128)
    settings: dict[str, Any]


class TrustSettings(Message):
    """The trust's defaults for its schools: each key the trust's value, else the deployment's."""

    trust_id: str
    max_carers_per_code: int
    printed_code_days: int
    invitation_days: int
    aup_text: str
    aup_version: str
    homework_url: str
    files_url: str
    messages_url: str
    email_parent_on_removal: bool
    language: Literal["en", "cy"] = Field(
        default="en", description="`cy`: Welsh and English side by side on the QR sheet and invitation emails"
    )
    updated_at: AwareDatetime | None = None


GET_TRUST_SETTINGS: Rpc[TrustSettingsRequest, TrustSettings] = Rpc(
    "rpc.linking.trust_settings.v1",
    TrustSettingsRequest,
    TrustSettings,
    title="trust settings",
    description="`GET /trusts/{id}/settings`: the trust's defaults for its schools; not_found unless the caller "
    "administers the trust.",
    errors=(E_NOT_FOUND,),
)

UPDATE_TRUST_SETTINGS: Rpc[UpdateTrustSettingsRequest, TrustSettings] = Rpc(
    "rpc.linking.update_trust_settings.v1",
    UpdateTrustSettingsRequest,
    TrustSettings,
    title="update trust settings",
    description="`PUT /trusts/{id}/settings`: validated like a school's; each school that takes a changed key "
    "from the trust announces its new settings.",
    errors=(E_NOT_FOUND, E_VALIDATION),
)


# -- the digest ------------------------------------------------------------------------------------


class DigestChildrenRequest(Message):
    """Parents whose digest may be due (at most 1,000)."""

    parent_ids: list[str] = Field(max_length=1000)


class DigestChild(Message):
    """A child as the digest names it, with their school's timezone."""

    pupil_id: str
    first_name: str
    school_name: str
    timezone: str


class DigestParent(Message):
    """A parent's linked children (status linked, not left), first linked first."""

    parent_id: str
    children: list[DigestChild]


class DigestChildrenReply(Message):
    """Every parent asked who has a linked child; parents with none are left out."""

    parents: list[DigestParent]


DIGEST_CHILDREN: Rpc[DigestChildrenRequest, DigestChildrenReply] = Rpc(
    "rpc.linking.digest_children.v1",
    DigestChildrenRequest,
    DigestChildrenReply,
    title="digest children",
    description="For the digest: each parent's linked children, first linked first, with school name and timezone.",
)
