"""Email requests to notify, and notify's delivery outcomes.

Requests go on the work-queue stream `NOTIFY_REQUESTS` (`notify.request.<kind>.v1`) and are
dropped once notify has recorded them; they are the one kind of message that carries what the
email needs (an address, a link with a token). A request names its recipient either by address
(`to`) or by parent id (`parent_id`: notify asks identity for the address at send time).

The outcomes (`notify.email.delivered.v1`, `notify.email.failed.v1`) carry ids only: the
request's id, its kind and the requester's `reference` (e.g. `invitation:<id>`).
"""

from __future__ import annotations

import json
from datetime import date
from typing import Literal

from pydantic import AwareDatetime, Field, model_validator

from contracts.base import Event, Message, Rpc

REQUEST_PREFIX = "notify.request"
REQUEST_ALL = "notify.request.>"
EMAIL_DELIVERED = "notify.email.delivered.v1"
EMAIL_FAILED = "notify.email.failed.v1"
EMAIL_ALL = "notify.email.>"


def request_subject(kind: str) -> str:
    """`notify.request.<kind>.v1`."""
    return f"{REQUEST_PREFIX}.{kind}.v1"


class EmailRequest(Event):
    """What every email request has: who it goes to and what the requester calls it."""

    kind: str = ""
    to: str | None = Field(default=None, max_length=254, description="The recipient's address")
    to_name: str | None = Field(default=None, max_length=200)
    parent_id: str | None = Field(default=None, description="Instead of `to`: notify asks identity")
    reference: str = Field(default="", max_length=200, description="The requester's id for it, echoed in outcomes")
    language: Literal["en", "cy"] | None = Field(
        default=None,
        description="The email's language; None: the recipient's own (known by `parent_id`), else English",
    )
    bilingual: bool = Field(
        default=False, description="Welsh and English side by side (a Welsh school's invitation): `language` first"
    )

    @model_validator(mode="after")
    def _recipient(self) -> EmailRequest:
        if not self.to and not self.parent_id:
            raise ValueError("an email request needs `to` or `parent_id`")
        return self


class VerificationEmail(EmailRequest):
    """Confirm your address: the link verifies the account."""

    kind: Literal["verification"] = "verification"
    verify_url: str
    expires_at: AwareDatetime


class AccountExistsEmail(EmailRequest):
    """Someone registered with an address that already has an account."""

    kind: Literal["account_exists"] = "account_exists"
    login_url: str
    reset_url: str


class PasswordResetEmail(EmailRequest):
    """A link to choose a new password."""

    kind: Literal["password_reset"] = "password_reset"
    reset_url: str
    expires_at: AwareDatetime


class SetPasswordEmail(EmailRequest):
    """A new member of staff chooses their first password."""

    kind: Literal["set_password"] = "set_password"
    reset_url: str
    expires_at: AwareDatetime
    school_name: str = ""


class PasswordChangedEmail(EmailRequest):
    """Your password was changed (and every session ended)."""

    kind: Literal["password_changed"] = "password_changed"
    reset_url: str


class InvitationEmail(EmailRequest):
    """A school invites a parent to see a child's account."""

    kind: Literal["invitation"] = "invitation"
    school_name: str
    pupil_first_name: str
    link_url: str
    code: str
    expires_at: AwareDatetime


class LinkActivatedEmail(EmailRequest):
    """The parent can now see the child's homework, messages and stars."""

    kind: Literal["link_activated"] = "link_activated"
    school_name: str
    pupil_first_name: str
    portal_url: str


class LinkRemovedEmail(EmailRequest):
    """The school removed the parent's access to a child."""

    kind: Literal["link_removed"] = "link_removed"
    school_name: str
    pupil_first_name: str


class DigestHomework(Message):
    """A piece of homework not done yet."""

    title: str
    due_at: AwareDatetime
    overdue: bool


class DigestMessage(Message):
    """An unread message."""

    from_name: str | None = None
    subject: str | None = None
    sent_at: AwareDatetime | None = None


class DigestStar(Message):
    """Stars awarded this week, and why."""

    stars: int
    reason: str
    at: AwareDatetime


class DigestChildPart(Message):
    """One child's part of a digest."""

    first_name: str
    school_name: str
    homework: list[DigestHomework]
    homework_more: int = Field(default=0, description="Pieces of homework to do beyond those listed")
    messages: list[DigestMessage]
    messages_more: int = Field(default=0, description="Unread messages beyond those listed")
    stars_total: int
    stars: list[DigestStar]
    homework_url: str
    files_url: str
    messages_url: str


class DigestEmail(EmailRequest):
    """A parent's weekly or daily digest: per child, homework, unread messages and stars.
    Its id is `digest:<parent id>:<local date>`, so one parent gets one digest per day at most."""

    kind: Literal["digest"] = "digest"
    schedule: Literal["weekly", "daily"]
    period: date
    timezone: str
    children: list[DigestChildPart]
    unsubscribe_url: str
    preferences_url: str


REQUESTS: dict[str, type[EmailRequest]] = {
    request_subject(m.model_fields["kind"].default): m
    for m in (
        VerificationEmail,
        AccountExistsEmail,
        PasswordResetEmail,
        SetPasswordEmail,
        PasswordChangedEmail,
        InvitationEmail,
        LinkActivatedEmail,
        LinkRemovedEmail,
        DigestEmail,
    )
}


# What a request may keep once it can no longer be sent (delivered, given up, dead-lettered):
# its ids and kind. Everything else is either the working link, code or token the email carries,
# or the recipient's address and name.
KEPT_FIELDS = ("event_id", "occurred_at", "kind", "reference", "parent_id")


def redact_request(data: bytes | str) -> bytes:
    """An email request (JSON) with only `KEPT_FIELDS` left: no link, code, token or address.

    Whatever is not a JSON object keeps nothing at all.
    """
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return b'{"redacted": true}'
    kept = {k: parsed[k] for k in KEPT_FIELDS if k in parsed and isinstance(parsed[k], str | None)}
    return json.dumps({**kept, "redacted": True}, separators=(",", ":")).encode()


class EmailDelivered(Event):
    """The SMTP server accepted the email."""

    request_id: str
    kind: str
    reference: str = ""
    attempts: int


class EmailFailed(Event):
    """The email will not be delivered (rejected, gave up, over the daily cap, no recipient, or
    a request that cannot become an email: `render_failed`, e.g. an address that is not one)."""

    request_id: str
    kind: str
    reference: str = ""
    attempts: int
    reason: Literal["rejected", "gave_up", "daily_cap", "no_recipient", "render_failed"]
    smtp_code: int | None = None
    detail: str = ""


# -- requests ---------------------------------------------------------------------------------


class EmailsExportRequest(Message):
    """The emails of one person, for their own export: those addressed to their account, and
    those sent to their address."""

    parent_id: str = Field(min_length=1, max_length=128)
    email: str = Field(default="", max_length=254)


class ExportedEmail(Message):
    """One email of the ledger: when it was asked for, its kind, and what became of it
    (`pending` until an attempt, `sending` while one runs, `sent`, or `failed`). Never its
    content, its address or its link."""

    at: AwareDatetime
    kind: str
    status: Literal["pending", "sending", "sent", "failed"]


class EmailsExport(Message):
    """Oldest first."""

    emails: list[ExportedEmail]


EXPORT: Rpc[EmailsExportRequest, EmailsExport] = Rpc(
    "rpc.notify.export.v1",
    EmailsExportRequest,
    EmailsExport,
    title="export",
    description="`GET /me/export`: the emails of one person (by account id, or to their address), without "
    "their content.",
)


class DigestRunRequest(Message):
    """Send the digests due at `at` (default: now)."""

    at: AwareDatetime | None = None


class DigestRunReply(Message):
    """What a run did: `recipients` parents wanting a digest, `no_children` of them with no linked
    child, `not_due` not due at `at`, `already` whose digest of the period was recorded before,
    `recorded` digests recorded now for the sender (which sends them as every email: daily cap,
    retries)."""

    at: AwareDatetime
    recipients: int
    no_children: int
    not_due: int
    already: int
    recorded: int


DIGEST_RUN: Rpc[DigestRunRequest, DigestRunReply] = Rpc(
    "rpc.notify.digest_run.v1",
    DigestRunRequest,
    DigestRunReply,
    title="digest run",
    description="`portal digest run`: compose and record the digests due at a moment (never twice for a parent and "
    "day), from the data as it is now.",
)
