"""The linking service's own tables. No other part reads them."""

from datetime import datetime

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from contracts.kit.db import UtcDateTime

# A registry of its own keeps these tables out of other services' metadata when several
# services are imported into one process (tests, the local runner).
_registry = registry()


class Base(SQLModel, registry=_registry):
    """Base of every linking table."""


metadata = _registry.metadata

ID = 128  # platform ids are opaque strings; ours are uuid hex


def _ts(nullable: bool = False) -> Column:
    return Column(UtcDateTime(), nullable=nullable)


# -- the roster copy ---------------------------------------------------------------------------
# Each row keeps the `occurred_at` of the event that last wrote it (`version_at`), so an older
# event arriving late changes nothing.


class Trust(Base, table=True):
    """A school trust (a group of schools); its name is optional in the platform's events."""

    __tablename__ = "trusts"

    trust_id: str = Field(primary_key=True, max_length=ID)
    name: str | None = Field(default=None, max_length=200)
    version_at: datetime = Field(sa_column=_ts())


class School(Base, table=True):
    """A school of the platform."""

    __tablename__ = "schools"
    __table_args__ = (Index("ix_schools_trust", "trust_id"),)

    school_id: str = Field(primary_key=True, max_length=ID)
    trust_id: str = Field(max_length=ID)
    name: str = Field(max_length=200)
    timezone: str = Field(max_length=64)
    version_at: datetime = Field(sa_column=_ts())


class SchoolClass(Base, table=True):
    """A class (form, set) of a school. Its school may arrive after it."""

    __tablename__ = "classes"
    __table_args__ = (Index("ix_classes_school", "school_id"),)

    class_id: str = Field(primary_key=True, max_length=ID)
    school_id: str = Field(max_length=ID)
    name: str = Field(max_length=200)
    version_at: datetime = Field(sa_column=_ts())


class Pupil(Base, table=True):
    """A pupil. `left_at` is set while the pupil has left the school.

    `school_id` is empty only for a pupil whose `left` event came before any upsert.
    """

    __tablename__ = "pupils"
    __table_args__ = (Index("ix_pupils_school", "school_id"),)

    pupil_id: str = Field(primary_key=True, max_length=ID)
    school_id: str = Field(default="", max_length=ID)
    first_name: str = Field(default="", max_length=200)
    last_name: str = Field(default="", max_length=200)
    # The newest upsert applied, and the newest `left` event that still stands.
    version_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    left_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ClassMember(Base, table=True):
    """A pupil in a class (a pupil is in several classes)."""

    __tablename__ = "class_members"
    __table_args__ = (Index("ix_class_members_pupil", "pupil_id"),)

    class_id: str = Field(primary_key=True, max_length=ID)
    pupil_id: str = Field(primary_key=True, max_length=ID)


# -- settings ----------------------------------------------------------------------------------


class SchoolSetting(Base, table=True):
    """A school's own settings; a school without a row has the defaults.

    A NULL policy or link template means "the default", so it follows the deployment's
    default policy and `PORTAL_PLATFORM_URL`.
    """

    __tablename__ = "school_settings"

    school_id: str = Field(primary_key=True, max_length=ID)
    # NULL: not set by the school, which then takes its trust's value (else the default).
    max_carers_per_code: int | None = None
    printed_code_days: int | None = None
    invitation_days: int | None = None
    aup_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    homework_url: str | None = Field(default=None, max_length=500)
    files_url: str | None = Field(default=None, max_length=500)
    messages_url: str | None = Field(default=None, max_length=500)
    email_parent_on_removal: bool | None = None
    language: str | None = Field(default=None, max_length=8)
    updated_at: datetime = Field(sa_column=_ts())
    updated_by: str = Field(default="", max_length=ID)


class TrustSetting(Base, table=True):
    """A trust's defaults for its schools' settings: a NULL key is the deployment's default."""

    __tablename__ = "trust_settings"

    trust_id: str = Field(primary_key=True, max_length=ID)
    max_carers_per_code: int | None = None
    printed_code_days: int | None = None
    invitation_days: int | None = None
    aup_text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    homework_url: str | None = Field(default=None, max_length=500)
    files_url: str | None = Field(default=None, max_length=500)
    messages_url: str | None = Field(default=None, max_length=500)
    email_parent_on_removal: bool | None = None
    language: str | None = Field(default=None, max_length=8)
    updated_at: datetime = Field(sa_column=_ts())
    updated_by: str = Field(default="", max_length=ID)


# -- codes ---------------------------------------------------------------------------------------

PRINTED = "printed"
INVITATION = "invitation"


class LinkCode(Base, table=True):
    """A code that links a pupil: printed (QR sheets) or, from part 2, an invitation's.

    Found by `code_hash` (a keyed hash of the normalised code); `code_cipher` holds the code
    encrypted for printing again. `live_pupil_id` equals `pupil_id` while a printed code is the
    pupil's current one and is NULL otherwise: its unique constraint allows one live printed
    code per pupil on every database (NULLs never collide).
    """

    __tablename__ = "link_codes"
    __table_args__ = (
        UniqueConstraint("code_hash", name="uq_link_codes_hash"),
        UniqueConstraint("live_pupil_id", name="uq_link_codes_live_pupil"),
        Index("ix_link_codes_pupil", "pupil_id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    kind: str = Field(max_length=16)
    pupil_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    # The class whose sheet it was made for: the preview names that class.
    class_id: str | None = Field(default=None, max_length=ID)
    code_hash: str = Field(max_length=64)
    code_cipher: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    key_id: str = Field(max_length=16)
    # The QR mask chosen once when the code was made, so rendering it again skips the search.
    qr_mask: int | None = None
    live_pupil_id: str | None = Field(default=None, max_length=ID)
    created_at: datetime = Field(sa_column=_ts())
    created_by: str = Field(default="", max_length=ID)
    expires_at: datetime = Field(sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


# -- links, invitations, policies, audit -------------------------------------------------------

AWAITING = "awaiting_verification"
LINKED = "linked"


class Link(Base, table=True):
    """A parent's access to a pupil. Never deleted: a removal is recorded on the row.

    `live_key` is `parent_id:pupil_id` while the link stands and NULL once removed, so a
    unique constraint allows one standing link per parent and pupil on every database.
    """

    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("live_key", name="uq_links_live"),
        Index("ix_links_parent", "parent_id", "removed_at"),
        Index("ix_links_pupil", "pupil_id", "removed_at"),
        Index("ix_links_code", "code_id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    parent_id: str = Field(max_length=ID)
    pupil_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    relationship: str = Field(max_length=20)
    status: str = Field(max_length=24)
    via: str = Field(max_length=16)  # printed, invitation
    code_id: str = Field(max_length=32)
    live_key: str | None = Field(default=None, max_length=2 * ID + 1)
    created_at: datetime = Field(sa_column=_ts())
    activated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    removed_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    removed_by: str | None = Field(default=None, max_length=16)  # staff, parent, bar, pupil_left, school_changed
    removed_actor: str | None = Field(default=None, max_length=ID)


class Invitation(Base, table=True):
    """An email invitation: its address, its own single-use code, and what became of it."""

    __tablename__ = "invitations"
    __table_args__ = (
        Index("ix_invitations_pupil", "pupil_id", "status"),
        Index("ix_invitations_code", "code_id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    pupil_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    email: str = Field(max_length=254)
    email_key: str = Field(max_length=254)
    code_id: str = Field(max_length=32)
    status: str = Field(max_length=16)  # invited, accepted, revoked, bounced ("expired" is derived)
    sent_at: datetime = Field(sa_column=_ts())
    expires_at: datetime = Field(sa_column=_ts())
    accepted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    accepted_by: str | None = Field(default=None, max_length=ID)
    created_by: str = Field(default="", max_length=ID)


class AupAcceptance(Base, table=True):
    """A parent accepted a school's acceptable-use policy: which school, which version, when."""

    __tablename__ = "aup_acceptances"
    __table_args__ = (UniqueConstraint("parent_id", "school_id", "version", name="uq_aup_acceptance"),)

    id: int | None = Field(default=None, primary_key=True)
    parent_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    version: str = Field(max_length=64)
    accepted_at: datetime = Field(sa_column=_ts())


class VerifiedParent(Base, table=True):
    """Parents whose address identity has verified (from `identity.parent.verified.v1`)."""

    __tablename__ = "verified_parents"

    parent_id: str = Field(primary_key=True, max_length=ID)
    verified_at: datetime = Field(sa_column=_ts())


class AuditRow(Base, table=True):
    """One entry of a pupil's audit trail: append-only, kept as long as the pupil."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_pupil_at", "pupil_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    pupil_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    at: datetime = Field(sa_column=_ts())
    actor: str = Field(max_length=ID + 16)  # "staff:<id>", "parent:<id>", "system"
    action: str = Field(max_length=32)
    parent_id: str | None = Field(default=None, max_length=ID)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


# -- bars, guessing ------------------------------------------------------------------------------


class Bar(Base, table=True):
    """A safeguarding bar: an address that may not be linked to a pupil. Never deleted.

    Found by `email_hash` (a keyed hash of the lower-cased address); `email_cipher` holds the
    address encrypted (bound to its pupil and bar) so admins see whom they barred. `live_key`
    is `pupil_id:email_hash` while the bar stands and NULL once lifted: one bar in force per
    address and pupil on every database.
    """

    __tablename__ = "bars"
    __table_args__ = (
        UniqueConstraint("live_key", name="uq_bars_live"),
        Index("ix_bars_pupil", "pupil_id", "lifted_at"),
    )

    id: str = Field(primary_key=True, max_length=32)
    pupil_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    email_hash: str = Field(max_length=64)
    email_cipher: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    key_id: str = Field(max_length=16)
    reason: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    live_key: str | None = Field(default=None, max_length=ID + 65)
    created_at: datetime = Field(sa_column=_ts())
    created_by: str = Field(default="", max_length=ID)
    lifted_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    lifted_by: str | None = Field(default=None, max_length=ID)


class GuessFailure(Base, table=True):
    """One failed code (redemption, preview or registration), for the guessing limits.

    Rows older than the longest window are pruned. `client_key` is a keyed hash of the
    caller's network address, never the address.
    """

    __tablename__ = "guess_failures"
    __table_args__ = (
        Index("ix_guess_failures_parent", "parent_id", "at"),
        Index("ix_guess_failures_client", "client_key", "at"),
        Index("ix_guess_failures_trust", "trust_id", "at"),
        Index("ix_guess_failures_at", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_column=_ts())
    kind: str = Field(max_length=16)  # redeem, preview, register
    parent_id: str | None = Field(default=None, max_length=ID)
    client_key: str | None = Field(default=None, max_length=64)
    trust_id: str | None = Field(default=None, max_length=ID)


class GuessAlert(Base, table=True):
    """Failures above the per-minute threshold: one row per scope and clock minute."""

    __tablename__ = "guess_alerts"
    __table_args__ = (
        UniqueConstraint("alert_key", name="uq_guess_alerts_key"),
        Index("ix_guess_alerts_last_at", "last_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    alert_key: str = Field(max_length=ID + 48)
    scope: str = Field(max_length=16)  # trust, deployment
    trust_id: str | None = Field(default=None, max_length=ID)
    at: datetime = Field(sa_column=_ts())
    last_at: datetime = Field(sa_column=_ts())
    failures: int
    threshold: int


# -- the school's contacts of a pupil ---------------------------------------------------------------


class PupilContact(Base, table=True):
    """One of the school's records of who cares for a pupil (roster `contact_email_N`), personal
    data of the school: the address is kept encrypted (bound to the pupil and position) like a
    bar's, with a keyed hash to match it; erased when the pupil leaves or moves school.
    """

    __tablename__ = "pupil_contacts"
    __table_args__ = (
        UniqueConstraint("pupil_id", "position", name="uq_pupil_contacts_position"),
        Index("ix_pupil_contacts_school", "school_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    pupil_id: str = Field(max_length=ID)
    school_id: str = Field(max_length=ID)
    position: int
    email_hash: str = Field(max_length=64)
    email_cipher: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    key_id: str = Field(max_length=16)
    relationship: str = Field(default="", max_length=100)
    version_at: datetime = Field(sa_column=_ts())
