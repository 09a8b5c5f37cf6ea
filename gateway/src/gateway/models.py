"""What the API answers: one model per JSON shape, each documented in the OpenAPI document.

The web pages show the same shapes where they show the same things. Each model is built from
the services' replies by its `of(...)`, so a route is one client call and one conversion.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from contracts import identity, linking, notify

# A timestamp some answers have always given as Python's `isoformat()` ("+00:00"), where the
# others (datetime fields) are encoded by msgspec ("Z"). Kept as it was; documented as a
# date-time all the same (Litestar reads `extra` into the schema).
IsoTime = Annotated[str, Meta(extra_json_schema={"extra": {"format": "date-time"}})]


# -- sign-in ------------------------------------------------------------------------------------


class Status(Struct):
    """What happened, in a word and a sentence."""

    status: str
    detail: str


class LoginAnswer(Struct):
    """A new session. `csrf_token` goes in `X-CSRF-Token` on unsafe requests made with the cookie."""

    access_token: str
    token_type: str
    expires_in: int
    role: str
    csrf_token: str


class Me(Struct):
    """The caller."""

    id: str
    email: str
    name: str
    role: str
    csrf_token: str
    school_id: str | None
    trust_id: str | None


# -- a person's own data ------------------------------------------------------------------------


class ExportedAccount(Struct):
    """The caller's account as identity holds it (never its password hash or a token)."""

    id: str
    email: str
    name: str
    role: str
    created_at: datetime
    verified_at: Annotated[datetime | None, Meta(description="When the address was confirmed; null until then")]
    digest: Annotated[str, Meta(description="How often the digest email comes: weekly, daily or off")] = "weekly"
    language: Annotated[str, Meta(description="The language of pages and emails: en or cy")] = "en"


class Preferences(Struct):
    """How often the digest email of the children's week comes, and the language of pages and emails."""

    digest: Annotated[
        Literal["weekly", "daily", "off"],
        Meta(description="weekly (Fridays at 16:00), daily (school days at 16:00), or off"),
    ]
    language: Annotated[Literal["en", "cy"], Meta(description="en (English) or cy (Welsh)")]

    @classmethod
    def of(cls, p: identity.Preferences) -> Preferences:
        """From identity's answer."""
        return cls(digest=p.digest, language=p.language)


class ExportedChild(Struct):
    """A child the parent is or was linked to."""

    pupil_id: str
    first_name: str
    last_name: str
    school_name: str
    relationship: linking.Relationship
    status: Annotated[
        Literal["awaiting_verification", "linked", "removed"],
        Meta(description="removed once the link ended (ended_at says when)"),
    ]
    since: Annotated[datetime, Meta(description="When the link was made, or activated by verification")]
    ended_at: datetime | None


class ExportedAuditEntry(Struct):
    """One entry of a child's audit trail that names the parent (who else acted is left out)."""

    at: datetime
    action: Annotated[str, Meta(description="link_created, link_activated, link_removed, ...")]
    pupil_id: str


class ExportedEmail(Struct):
    """An email the portal sent (or is sending) to the caller: never its content or its link."""

    at: Annotated[datetime, Meta(description="When the email was asked for")]
    kind: Annotated[str, Meta(description="verification, password_reset, invitation, link_activated, ...")]
    status: Literal["pending", "sending", "sent", "failed"]


class ExportedSession(Struct):
    """One of the caller's sessions, live or ended."""

    created_at: datetime
    last_seen_at: datetime


class AccountExport(Struct):
    """Everything the portal holds about the caller (`GET /me/export`). It never contains a code,
    a token or a password hash. A member of staff's holds their account and sessions only."""

    account: ExportedAccount
    children: list[ExportedChild]
    audit: list[ExportedAuditEntry]
    emails: list[ExportedEmail]
    sessions: list[ExportedSession]

    @classmethod
    def of(
        cls,
        account: identity.AccountExport,
        links: linking.ParentExport | None = None,
        emails: list[notify.ExportedEmail] | None = None,
    ) -> AccountExport:
        """From identity's, linking's and notify's exports (a member of staff has no links)."""
        return cls(
            account=ExportedAccount(
                id=account.id,
                email=account.email,
                name=account.name,
                role=account.role,
                created_at=account.created_at,
                verified_at=account.verified_at,
                digest=account.digest,
                language=account.language,
            ),
            children=[
                ExportedChild(
                    pupil_id=c.pupil_id,
                    first_name=c.first_name,
                    last_name=c.last_name,
                    school_name=c.school_name,
                    relationship=c.relationship,
                    status=c.status,
                    since=c.since,
                    ended_at=c.ended_at,
                )
                for c in (links.children if links else [])
            ],
            audit=[
                ExportedAuditEntry(at=a.at, action=a.action, pupil_id=a.pupil_id)
                for a in (links.audit if links else [])
            ],
            emails=[ExportedEmail(at=e.at, kind=e.kind, status=e.status) for e in emails or []],
            sessions=[ExportedSession(created_at=s.created_at, last_seen_at=s.last_seen_at) for s in account.sessions],
        )


# -- link codes ---------------------------------------------------------------------------------


class Policy(Struct):
    """An acceptable-use policy; `version` changes whenever the text does."""

    version: str
    text: str

    @classmethod
    def of(cls, reply: linking.AupReply) -> Policy:
        """From linking's reply."""
        return cls(version=reply.version, text=reply.text)


class CodePreviewAnswer(Struct):
    """The child a code is for, so the parent can check it is theirs, and the school's policy."""

    first_name: str
    school_name: str
    class_name: str
    aup: Policy

    @classmethod
    def of(cls, preview: linking.CodePreview) -> CodePreviewAnswer:
        """From linking's preview."""
        return cls(
            first_name=preview.first_name,
            school_name=preview.school_name,
            class_name=preview.class_name,
            aup=Policy.of(preview.aup),
        )


# -- parents ------------------------------------------------------------------------------------


class Child(Struct):
    """A child as the API answers it, to its parent or to staff."""

    pupil_id: Annotated[str, Meta(description="The id to ask this child's overview with")]
    first_name: str
    last_name: str
    school_id: str
    school_name: Annotated[str, Meta(description="The child's school now")]
    class_name: Annotated[str, Meta(description="The child's class (the first by name, when in several)")]
    relationship: Annotated[linking.Relationship, Meta(description="What the parent said they are to the child")]
    status: Annotated[linking.LinkStatus, Meta(description="awaiting_verification until the parent verifies")]
    since: Annotated[IsoTime, Meta(description="When the link was made, or activated by verification")]

    @classmethod
    def of(cls, view: linking.ChildView) -> Child:
        """From linking's view of a link."""
        return cls(
            pupil_id=view.pupil_id,
            first_name=view.first_name,
            last_name=view.last_name,
            school_id=view.school_id,
            school_name=view.school_name,
            class_name=view.class_name,
            relationship=view.relationship,
            status=view.status,
            since=view.since.isoformat(),
        )


class DueItem(Struct):
    """A piece of outstanding homework."""

    title: str
    due_at: datetime


class PlatformLinks(Struct):
    """Where the overview's buttons lead, into the learning platform."""

    homework: str
    files: str
    messages: str


class ChildOverview(Struct):
    """One child's overview. The numbers, `links` and `as_of` are null in a partial answer
    when nothing is known of the child yet."""

    pupil_id: str
    outstanding_homework: int | None
    unread_messages: int | None
    stars_this_week: int | None
    next_due: list[DueItem]
    links: PlatformLinks | None
    as_of: datetime | None
    partial: bool = False


class Overview(Struct):
    """Every linked child's overview; `partial` is there (true) only when overview did not
    answer for every child."""

    children: list[ChildOverview]
    partial: bool = False


# -- staff: classes and pupils ------------------------------------------------------------------


class ParentRow(Struct):
    """A parent linked to a pupil; `name` and `email` are null if identity no longer knows them."""

    parent_id: str
    name: str | None
    email: str | None
    relationship: linking.Relationship
    status: linking.LinkStatus
    since: datetime


class InvitationRow(Struct):
    """An invitation of `GET /classes/{id}/pupils`, as staff see it."""

    invitation_id: str
    email: str
    status: linking.InvitationStatus
    sent_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, i: linking.InvitationView) -> InvitationRow:
        """From linking's view."""
        return cls(
            invitation_id=i.invitation_id, email=i.email, status=i.status, sent_at=i.sent_at, expires_at=i.expires_at
        )


class PupilRow(Struct):
    """One pupil of `GET /classes/{class_id}/pupils`; `code_expires_at` is null before codes."""

    pupil_id: str
    first_name: str
    last_name: str
    code_expires_at: datetime | None
    parents: list[ParentRow]
    invitations: list[InvitationRow]


class NewCode(Struct):
    """A pupil's new printed code: only its expiry (the code itself is printed, never listed)."""

    pupil_id: str
    expires_at: datetime


class CreatedCodes(Struct):
    """The pupils that got a new printed code."""

    class_id: str | None
    codes: list[NewCode]

    @classmethod
    def of(cls, reply: linking.CreateCodesReply) -> CreatedCodes:
        """From linking's reply."""
        return cls(class_id=reply.class_id, codes=[NewCode(c.pupil_id, c.expires_at) for c in reply.codes])


# -- staff: parents' access ---------------------------------------------------------------------


class Invitation(Struct):
    """The invitation just sent."""

    invitation_id: str
    email: str
    status: linking.InvitationStatus
    sent_at: IsoTime
    expires_at: IsoTime

    @classmethod
    def of(cls, view: linking.InvitationView) -> Invitation:
        """From linking's view."""
        return cls(
            invitation_id=view.invitation_id,
            email=view.email,
            status=view.status,
            sent_at=view.sent_at.isoformat(),
            expires_at=view.expires_at.isoformat(),
        )


class AuditRow(Struct):
    """One row of a pupil's audit trail: `actor` is `staff:<id>`, `parent:<id>` or `system`."""

    at: IsoTime
    actor: str
    action: str
    parent_id: str | None
    reason: str

    @classmethod
    def of(cls, e: linking.AuditEntry) -> AuditRow:
        """From linking's entry."""
        return cls(at=e.at.isoformat(), actor=e.actor, action=e.action, parent_id=e.parent_id, reason=e.reason)


class Bar(Struct):
    """A safeguarding bar in force."""

    bar_id: str
    email: str
    reason: str
    at: IsoTime

    @classmethod
    def of(cls, b: linking.BarView) -> Bar:
        """From linking's view."""
        return cls(bar_id=b.bar_id, email=b.email, reason=b.reason, at=b.at.isoformat())


class BarCreated(Struct):
    """The bar (a new one, or the one already in force on that address)."""

    bar_id: str


# -- operations ---------------------------------------------------------------------------------


class Health(Struct):
    """The gateway process runs."""

    status: Literal["ok"]


class Readiness(Struct):
    """Every service answered its health request."""

    status: Literal["ready"]
    services: dict[str, str]
