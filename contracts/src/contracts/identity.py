"""Identity: accounts, sessions and tokens. Its requests (`rpc.identity.*`) and events.

Names and email addresses of parents live in identity alone. They leave it only inside the
one reply that needs them (`contacts`, `session` for the caller's own `/me`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from contracts.base import Event, Message

# -- requests ---------------------------------------------------------------------------------

REGISTER = "rpc.identity.register.v1"
VERIFY = "rpc.identity.verify.v1"
RESEND_VERIFICATION = "rpc.identity.resend_verification.v1"
LOGIN = "rpc.identity.login.v1"
LOGOUT = "rpc.identity.logout.v1"
SESSION = "rpc.identity.session.v1"
PASSWORD_RESET = "rpc.identity.password_reset.v1"
PASSWORD_RESET_CONFIRM = "rpc.identity.password_reset_confirm.v1"
CONTACTS = "rpc.identity.contacts.v1"
CREATE_STAFF = "rpc.identity.create_staff.v1"
CHECK_PASSWORD = "rpc.identity.check_password.v1"

Role = Literal["parent", "teacher", "school_admin", "trust_admin"]
STAFF_ROLES: tuple[str, ...] = ("teacher", "school_admin", "trust_admin")

# Error codes in replies (contracts.rpc.ErrorReply.error), as the gateway maps them.
E_WEAK_PASSWORD = "weak_password"  # 422
E_INVALID_TOKEN = "invalid_token"  # 400
E_INVALID_CREDENTIALS = "invalid_credentials"  # 401
E_NOT_VERIFIED = "email_not_verified"  # 403
E_TOO_MANY = "too_many_attempts"  # 429, detail ends with "retry after N s"
E_INVALID_SESSION = "invalid_session"  # 401
E_CONFLICT = "conflict"  # 409


class RegisterRequest(Message):
    """A parent registers; the reply is the same whether the address was known or not."""

    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    name: str = Field(min_length=1, max_length=200)
    aup_version: str = Field(default="", max_length=64, description="The policy version accepted")


class RegisterReply(Message):
    """`parent_id` of the account the registration is about: new, or the existing one.

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


class SessionRequest(Message):
    """Who holds this session token?"""

    token: str = Field(max_length=256)


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


class ContactsRequest(Message):
    """Names and addresses of some accounts, for the one request that needs them."""

    ids: list[str] = Field(max_length=1000)


class Contact(Message):
    """One account's contact details."""

    id: str
    email: str
    name: str


class ContactsReply(Message):
    """The accounts found; unknown ids are left out."""

    contacts: list[Contact]


# -- events -------------------------------------------------------------------------------------

PARENT_REGISTERED = "identity.parent.registered.v1"
PARENT_VERIFIED = "identity.parent.verified.v1"
PASSWORD_CHANGED = "identity.password.changed.v1"
SESSION_REVOKED = "identity.session.revoked.v1"
ACCOUNT_CHANGED = "identity.account.changed.v1"


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


class SessionRevoked(Event):
    """Sessions ended: the listed ones, or every session of the account when `all_sessions`."""

    account_id: str
    session_ids: list[str] = Field(default_factory=list)
    all_sessions: bool = False
