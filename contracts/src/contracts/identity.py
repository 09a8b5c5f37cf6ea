"""Identity: accounts, sessions and tokens. Its requests (`rpc.identity.*`) and events.

Names and email addresses of parents live in identity alone. They leave it only inside the
one reply that needs them (`contacts`, `session` for the caller's own `/me`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field

from contracts.base import Event, Message, Rpc
from contracts.names import E_INVALID_NAME

# -- requests ---------------------------------------------------------------------------------


Role = Literal["parent", "teacher", "school_admin", "trust_admin"]
# How often a parent wants the digest email of their children's week; `off` sends none.
Digest = Literal["weekly", "daily", "off"]
# The languages the portal speaks: English (the source) and Welsh.
Language = Literal["en", "cy"]
DEFAULT_DIGEST: Digest = "weekly"
DEFAULT_LANGUAGE: Language = "en"
STAFF_ROLES: tuple[str, ...] = ("teacher", "school_admin", "trust_admin")

# Error codes in replies (`contracts.rpc.ErrorReply.error`); the gateway maps each to HTTP.
E_WEAK_PASSWORD = "weak_password"  # 422
E_PASSWORD_TOO_LONG = "password_too_long"  # 422: over 256 characters
E_INVALID_TOKEN = "invalid_token"  # 400
E_INVALID_CREDENTIALS = "invalid_credentials"  # 401
E_NOT_VERIFIED = "email_not_verified"  # 403
E_TOO_MANY = "too_many_attempts"  # 429, with retry_after
E_VALIDATION = "validation_error"  # 422, with the fields
E_INVALID_SESSION = "invalid_session"  # 401
E_CONFLICT = "conflict"  # 409
E_NOT_FOUND = "not_found"  # 404: no such member of staff, or one outside the caller's scope
E_FORBIDDEN = "forbidden"  # 403: a member of staff disabling themselves
E_WRONG_PASSWORD = "wrong_password"  # 403: deleting an account with a password that is not its own
E_NOT_A_PARENT = "not_a_parent"  # 403: only parents' accounts are deleted this way
E_NO_SUCH_ACCOUNT = "no_such_account"  # 404: no parent account has that address


class RegisterRequest(Message):
    """A parent registers; the reply is the same whether the address was known or not."""

    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    name: str = Field(min_length=1, max_length=200)
    aup_version: str = Field(default="", max_length=64, description="The policy version accepted")
    client_ip: str = Field(default="", max_length=64, description="The caller's address, for the limit on failures")
    language: Language | None = Field(
        default=None, description="The new account's language (e.g. that of the school whose code brought them)"
    )


class RegisterReply(Message):
    """`parent_id` of the account the registration is about: new, or the existing one.

    An address registered before but never verified gets a new account (`created`): the
    earlier registration, its password, name and links are gone.

    The gateway never shows it to the caller (the answer must not reveal who is registered);
    linking needs it to hold a child for the registration's code.
    """

    parent_id: str
    created: bool
    verified: bool


class VerifyRequest(Message):
    """Verify an email address with the token from the email."""

    token: str = Field(max_length=256)


class VerifyReply(Message):
    """The verified account."""

    parent_id: str


class EmailRequest(Message):
    """A request that names an account by its email address (resend, password reset)."""

    email: str = Field(max_length=254)


class Accepted(Message):
    """Done (or deliberately indistinguishable from done)."""

    ok: bool = True


class LoginRequest(Message):
    """Email and password, with the caller's network address for guessing limits."""

    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    client_ip: str = Field(default="", max_length=64)


class LoginReply(Message):
    """A new session: the token is shown once and stored only as a hash."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    role: Role
    account_id: str
    session_id: str


MAX_TOKEN_LENGTH = 256  # of any token a request carries


class SessionRequest(Message):
    """Who holds this session token?"""

    token: str = Field(max_length=MAX_TOKEN_LENGTH)


# As many tokens as one gateway's first visits of a busy moment: the gateway gathers the tokens
# it does not know yet into one request, and identity reads them in one query.
MAX_SESSIONS = 200


class SessionsRequest(Message):
    """Who holds each of these session tokens?"""

    tokens: list[Annotated[str, Field(max_length=MAX_TOKEN_LENGTH)]] = Field(min_length=1, max_length=MAX_SESSIONS)


class Principal(Message):
    """The caller, as every authorisation check needs it."""

    account_id: str
    session_id: str
    role: Role
    email: str
    name: str
    school_id: str | None = None
    trust_id: str | None = None
    expires_in: int
    language: Language = DEFAULT_LANGUAGE


class SessionsReply(Message):
    """Each token's holder, in the order asked; null where the token is no live session."""

    sessions: list[Principal | None]


class LogoutRequest(Message):
    """End one session."""

    token: str = Field(max_length=256)


class PasswordResetConfirm(Message):
    """Set a new password with a reset token."""

    token: str = Field(max_length=256)
    password: str = Field(max_length=1024)


class PasswordChangedReply(Message):
    """The account whose password changed (its sessions were all revoked)."""

    account_id: str


class CheckPasswordRequest(Message):
    """Would this password be accepted? (lets the gateway refuse before it creates anything)"""

    password: str = Field(max_length=1024)
    email: str = Field(default="", max_length=254)
    name: str = Field(default="", max_length=200)
    client_ip: str = Field(
        default="",
        max_length=64,
        description="The registering caller's address: a refusal counts as a refused registration",
    )


class CreateStaffRequest(Message):
    """Create (or update) a member of staff by hand (`portal staff add`)."""

    email: str = Field(max_length=254)
    name: str = Field(min_length=1, max_length=200)
    role: Literal["teacher", "school_admin", "trust_admin"]
    school_id: str | None = None
    trust_id: str | None = None
    password: str | None = Field(default=None, max_length=1024)


class CreateStaffReply(Message):
    """The staff account."""

    account_id: str
    created: bool
    disabled: bool = Field(default=False, description="Disabled: it cannot sign in until enabled again")


class AdminScope(Message):
    """The members of staff an admin may see and disable: those of these schools, and the trust
    admins of these trusts. The gateway fills it in from the caller's session (a trust admin's
    trust expanded into its schools); staff of anywhere else are unknown to the request."""

    school_ids: list[str] = Field(default_factory=list, max_length=2000)
    trust_ids: list[str] = Field(default_factory=list, max_length=50)


class StaffMember(Message):
    """A member of staff as an admin sees them."""

    account_id: str
    name: str
    email: str
    role: Literal["teacher", "school_admin", "trust_admin"]
    school_id: str | None = None
    trust_id: str | None = None
    disabled: bool = Field(description="Cannot sign in, and has no session, until enabled again")
    disabled_at: AwareDatetime | None = None


class StaffListRequest(Message):
    """Every member of staff within a scope."""

    scope: AdminScope


class StaffListReply(Message):
    """Members of staff, by name."""

    staff: list[StaffMember]


class StaffAccessRequest(Message):
    """Disable (or enable again) one member of staff, named by account id or email address.

    Without `scope` (an operator's `portal staff disable`) any member of staff; with it, only one
    inside it, anyone else answers `not_found`. `actor_id` is the caller's own account, which
    can never be disabled by itself.
    """

    account_id: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=254)
    disabled: bool
    scope: AdminScope | None = None
    actor_id: str = Field(default="", max_length=64)


class ContactsRequest(Message):
    """Names and addresses of some accounts, for the one request that needs them."""

    ids: list[str] = Field(max_length=1000)


class Contact(Message):
    """One account's contact details."""

    id: str
    email: str
    name: str
    language: Language = DEFAULT_LANGUAGE
    last_signed_in_at: AwareDatetime | None = Field(default=None, description="The last sign-in; null if never")


class ContactsReply(Message):
    """The accounts found; unknown ids are left out."""

    contacts: list[Contact]


class DeleteAccountRequest(Message):
    """A parent deletes their own account, confirming with their password."""

    account_id: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    client_ip: str = Field(default="", max_length=64, description="The caller's address, for the limit on failures")


class DeleteParentRequest(Message):
    """An operator deletes a parent's account by its address or its id (`portal parent delete`;
    the id, as audit trails name it, serves to delete again after a backup was restored)."""

    email: str = Field(default="", max_length=254)
    account_id: str = Field(default="", max_length=64)


class AccountDeletedReply(Message):
    """The account that was deleted; every one of its sessions ended."""

    account_id: str


class ExportRequest(Message):
    """Everything identity holds about one account, for that account's own export."""

    account_id: str = Field(min_length=1, max_length=64)


class ExportedSession(Message):
    """One session of the account (live or ended): when it began and when it was last used."""

    created_at: AwareDatetime
    last_seen_at: AwareDatetime


class AccountExport(Message):
    """An account as identity holds it, without its password hash or any token: its details
    and every session it still has a record of, oldest first."""

    id: str
    email: str
    name: str
    role: Role
    created_at: AwareDatetime
    verified_at: AwareDatetime | None = None
    last_signed_in_at: AwareDatetime | None = None
    sessions: list[ExportedSession]
    digest: Digest = DEFAULT_DIGEST
    language: Language = DEFAULT_LANGUAGE


# -- preferences ------------------------------------------------------------------------------


class PreferencesRequest(Message):
    """An account's preferences."""

    account_id: str = Field(min_length=1, max_length=64)


class Preferences(Message):
    """How often the digest email comes, and the language of pages and emails."""

    digest: Digest
    language: Language


class SetPreferencesRequest(Message):
    """Change the preferences given; those left out stay."""

    account_id: str = Field(min_length=1, max_length=64)
    digest: Digest | None = None
    language: Language | None = None


# -- events -------------------------------------------------------------------------------------

PARENT_REGISTERED = "identity.parent.registered.v1"
PARENT_VERIFIED = "identity.parent.verified.v1"
PASSWORD_CHANGED = "identity.password.changed.v1"
SESSION_REVOKED = "identity.session.revoked.v1"
ACCOUNT_CHANGED = "identity.account.changed.v1"
STAFF_ACCESS_CHANGED = "identity.staff.access_changed.v1"
ACCOUNT_DELETED = "identity.account.deleted.v1"
PREFERENCES_CHANGED = "identity.preferences.changed.v1"


class ParentRegistered(Event):
    """A parent account was created (not yet verified)."""

    parent_id: str


class ParentVerified(Event):
    """A parent verified their email address: links awaiting it become active."""

    parent_id: str


class PasswordChanged(Event):
    """An account's password changed; every one of its sessions ended."""

    account_id: str


class AccountChanged(Event):
    """What a session of this account stands for changed (role, school, trust, name or address):
    whoever caches the account's sessions asks again."""

    account_id: str


class StaffAccessChanged(Event):
    """A member of staff was disabled (every session of theirs ended with it) or enabled again;
    `by` is the account that did it, or `operator` / `roster`."""

    account_id: str
    disabled: bool
    by: str = ""


class PreferencesChanged(Event):
    """A parent's preferences as they now are: on every change, and at registration when the
    account does not start with the defaults (weekly, en). An account never announced has
    the defaults."""

    account_id: str
    digest: Digest
    language: Language


class AccountDeleted(Event):
    """A parent's account was deleted: identity holds nothing of it any more (its sessions ended
    in the same transaction). Every service erases what it keeps about that parent. Ids only:
    the address and name are gone, and a later registration of the address is a new account."""

    account_id: str
    role: Role = "parent"


class SessionRevoked(Event):
    """Sessions ended: the listed ones, or every session of the account when `all_sessions`."""

    account_id: str
    session_ids: list[str] = Field(default_factory=list)
    all_sessions: bool = False


# -- requests, each declared once: subject, request, reply ---------------------------------

REGISTER: Rpc[RegisterRequest, RegisterReply] = Rpc(
    "rpc.identity.register.v1",
    RegisterRequest,
    RegisterReply,
    title="register",
    description="A parent registers; unverified until the emailed link is used.",
    errors=(E_WEAK_PASSWORD, E_PASSWORD_TOO_LONG, E_VALIDATION, E_INVALID_NAME, E_TOO_MANY, E_CONFLICT),
)

VERIFY: Rpc[VerifyRequest, VerifyReply] = Rpc(
    "rpc.identity.verify.v1",
    VerifyRequest,
    VerifyReply,
    title="verify",
    description="Use a verification token.",
    errors=(E_INVALID_TOKEN,),
)

RESEND_VERIFICATION: Rpc[EmailRequest, Accepted] = Rpc(
    "rpc.identity.resend_verification.v1",
    EmailRequest,
    Accepted,
    title="resend verification",
    description="Email a fresh verification link (rate-limited).",
)

LOGIN: Rpc[LoginRequest, LoginReply] = Rpc(
    "rpc.identity.login.v1",
    LoginRequest,
    LoginReply,
    title="login",
    description="Check a password and open a session, within the guessing limits.",
    errors=(E_INVALID_CREDENTIALS, E_NOT_VERIFIED, E_TOO_MANY),
)

LOGOUT: Rpc[LogoutRequest, Accepted] = Rpc(
    "rpc.identity.logout.v1",
    LogoutRequest,
    Accepted,
    title="logout",
    description="End a session.",
)

SESSION: Rpc[SessionRequest, Principal] = Rpc(
    "rpc.identity.session.v1",
    SessionRequest,
    Principal,
    title="session",
    description="Who holds a session token (the gateway caches the answer).",
    errors=(E_INVALID_SESSION,),
)

SESSIONS: Rpc[SessionsRequest, SessionsReply] = Rpc(
    "rpc.identity.sessions.v1",
    SessionsRequest,
    SessionsReply,
    title="sessions",
    description="Who holds each of many session tokens: the gateway's cache misses of one moment, asked together.",
)

PASSWORD_RESET: Rpc[EmailRequest, Accepted] = Rpc(
    "rpc.identity.password_reset.v1",
    EmailRequest,
    Accepted,
    title="password reset",
    description="Email a reset link, answering the same for any address.",
)

PASSWORD_RESET_CONFIRM: Rpc[PasswordResetConfirm, PasswordChangedReply] = Rpc(
    "rpc.identity.password_reset_confirm.v1",
    PasswordResetConfirm,
    PasswordChangedReply,
    title="password reset confirm",
    description="Set a new password with a reset token.",
    errors=(E_INVALID_TOKEN, E_WEAK_PASSWORD, E_PASSWORD_TOO_LONG, E_TOO_MANY),
)

CHECK_PASSWORD: Rpc[CheckPasswordRequest, Accepted] = Rpc(
    "rpc.identity.check_password.v1",
    CheckPasswordRequest,
    Accepted,
    title="check password",
    description="Whether a password meets the policy.",
    errors=(E_WEAK_PASSWORD, E_PASSWORD_TOO_LONG, E_TOO_MANY),
)

CONTACTS: Rpc[ContactsRequest, ContactsReply] = Rpc(
    "rpc.identity.contacts.v1",
    ContactsRequest,
    ContactsReply,
    title="contacts",
    description="Names and addresses of a batch of accounts.",
)

CREATE_STAFF: Rpc[CreateStaffRequest, CreateStaffReply] = Rpc(
    "rpc.identity.create_staff.v1",
    CreateStaffRequest,
    CreateStaffReply,
    title="create staff",
    description="Create or update a member of staff by hand.",
    errors=(E_VALIDATION, E_INVALID_NAME, E_CONFLICT, E_WEAK_PASSWORD, E_PASSWORD_TOO_LONG, E_TOO_MANY),
)

STAFF_LIST: Rpc[StaffListRequest, StaffListReply] = Rpc(
    "rpc.identity.staff_list.v1",
    StaffListRequest,
    StaffListReply,
    title="staff list",
    description="The members of staff of a scope, disabled ones included.",
)

SET_STAFF_ACCESS: Rpc[StaffAccessRequest, StaffMember] = Rpc(
    "rpc.identity.set_staff_access.v1",
    StaffAccessRequest,
    StaffMember,
    title="set staff access",
    description="Disable a member of staff (their sessions end, logging in fails as with a wrong password) "
    "or enable them again with their old password.",
    errors=(E_VALIDATION, E_NOT_FOUND, E_FORBIDDEN),
)

DELETE_ACCOUNT: Rpc[DeleteAccountRequest, AccountDeletedReply] = Rpc(
    "rpc.identity.delete_account.v1",
    DeleteAccountRequest,
    AccountDeletedReply,
    title="delete account",
    description="A parent deletes their account with their password: sessions end, the account is erased.",
    errors=(E_WRONG_PASSWORD, E_NOT_A_PARENT, E_INVALID_SESSION, E_TOO_MANY),
)

DELETE_PARENT: Rpc[DeleteParentRequest, AccountDeletedReply] = Rpc(
    "rpc.identity.delete_parent.v1",
    DeleteParentRequest,
    AccountDeletedReply,
    title="delete parent",
    description="An operator deletes a parent's account by its address (no password asked).",
    errors=(E_NO_SUCH_ACCOUNT, E_NOT_A_PARENT, E_VALIDATION),
)

EXPORT: Rpc[ExportRequest, AccountExport] = Rpc(
    "rpc.identity.export.v1",
    ExportRequest,
    AccountExport,
    title="export",
    description="An account's own data for its export (`GET /me/export`): details and sessions, never a "
    "password hash or a token. invalid_session when the account is gone.",
    errors=(E_INVALID_SESSION,),
)


# -- staff at scale ------------------------------------------------------------------------------

# As many as a page of an uptake's linked parents: 20,000 ids of 32 characters are 700 KB of
# JSON, one NATS message (1 MB) with room.
MAX_ACTIVITY_IDS = 20_000

# A parent's state in `ParentActivityReply.states`.
NEVER_SIGNED_IN = "n"
SIGNED_IN = "s"  # signed in, but neither signed in nor seen since `since`
ACTIVE = "a"  # signed in or seen since `since`


class ParentActivityRequest(Message):
    """Whether each of these accounts signed in, and whether it was seen since `since` (uptake
    figures)."""

    ids: list[str] = Field(max_length=MAX_ACTIVITY_IDS)
    since: AwareDatetime


class ParentActivityReply(Message):
    """`states`: one character per requested id, in the request's order: `a` signed in or seen
    since `since`, `s` signed in before it only, `n` never signed in (or no such account).
    "Signed in" is kept on the account: sessions are erased some days after they end."""

    states: str


PREFERENCES: Rpc[PreferencesRequest, Preferences] = Rpc(
    "rpc.identity.preferences.v1",
    PreferencesRequest,
    Preferences,
    title="preferences",
    description="An account's digest frequency and language.",
    errors=(E_NOT_FOUND,),
)

SET_PREFERENCES: Rpc[SetPreferencesRequest, Preferences] = Rpc(
    "rpc.identity.set_preferences.v1",
    SetPreferencesRequest,
    Preferences,
    title="set preferences",
    description="Change an account's digest frequency or language; a language change is announced as "
    "`identity.account.changed.v1` (sessions carry the language).",
    errors=(E_NOT_FOUND,),
)

PARENT_ACTIVITY: Rpc[ParentActivityRequest, ParentActivityReply] = Rpc(
    "rpc.identity.parent_activity.v2",
    ParentActivityRequest,
    ParentActivityReply,
    title="parent activity",
    description="For uptake figures: whether each of up to 20,000 accounts has signed in, and was seen since a "
    "time (from its last sign-in and its sessions' last use), as one character per id. Ids only.",
)


# -- the digest ------------------------------------------------------------------------------------

DigestSchedule = Literal["weekly", "daily"]
MAX_DIGEST_PAGE = 1000


class DigestRecipientsRequest(Message):
    """A page of the verified parents whose digest is not `off`, by account id after `after`."""

    after: str = Field(default="", max_length=64)
    limit: int = Field(default=MAX_DIGEST_PAGE, ge=1, le=MAX_DIGEST_PAGE)


class DigestRecipient(Message):
    """A parent who wants a digest, and how often. Ids only: no name, no address."""

    account_id: str
    digest: DigestSchedule
    language: Language = DEFAULT_LANGUAGE


class DigestRecipientsReply(Message):
    """`after` for the next page, or None when this was the last."""

    recipients: list[DigestRecipient]
    after: str | None = None


class DigestAddressesRequest(Message):
    """The parents a digest is about to go to (at most 1,000)."""

    ids: list[str] = Field(max_length=MAX_DIGEST_PAGE)


class DigestAddress(Message):
    """Where one parent's digest goes, and a token that turns their digest off in one click
    (valid for `PORTAL_IDENTITY_UNSUBSCRIBE_DAYS`)."""

    id: str
    email: str
    name: str
    unsubscribe_token: str


class DigestAddressesReply(Message):
    """The parents found still wanting a digest; others are left out."""

    addresses: list[DigestAddress]


class UnsubscribeRequest(Message):
    """The token of a digest's one-click unsubscribe link."""

    token: str = Field(min_length=1, max_length=200)


class UnsubscribeReply(Message):
    """The digest of the token's account is now `off`."""

    account_id: str


DIGEST_RECIPIENTS: Rpc[DigestRecipientsRequest, DigestRecipientsReply] = Rpc(
    "rpc.identity.digest_recipients.v1",
    DigestRecipientsRequest,
    DigestRecipientsReply,
    title="digest recipients",
    description="A page of the verified parents whose digest is weekly or daily, with their language: ids only.",
)

DIGEST_ADDRESSES: Rpc[DigestAddressesRequest, DigestAddressesReply] = Rpc(
    "rpc.identity.digest_addresses.v1",
    DigestAddressesRequest,
    DigestAddressesReply,
    title="digest addresses",
    description="Names and addresses of parents whose digest is due, each with a new one-click unsubscribe token.",
)

UNSUBSCRIBE: Rpc[UnsubscribeRequest, UnsubscribeReply] = Rpc(
    "rpc.identity.unsubscribe.v1",
    UnsubscribeRequest,
    UnsubscribeReply,
    title="unsubscribe",
    description="A digest's one-click unsubscribe (RFC 8058): the token's account's digest becomes off. "
    "invalid_token for a token that is unknown, altered or expired (nothing changes).",
    errors=(E_INVALID_TOKEN,),
)
