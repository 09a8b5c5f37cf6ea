"""`/api/v1/auth/*` and `/api/v1/me`: registration, verification, login, logout, password reset.

Identity does the work (`contracts.identity`); these routes validate input, pass the caller's
address for the guessing limits, set and clear the session cookie, and make a logout or a
password change take effect on every replica before they answer.
"""

from __future__ import annotations

import re
from typing import Literal

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from msgspec import Struct
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from contracts import identity, linking
from contracts.identity import Principal
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError
from gateway.auth import (
    SECURITY,
    check_csrf,
    clear_session_cookie,
    client_ip,
    credentials,
    csrf_token_for,
    forget_principal,
    get_auth,
    session_cookie,
    token_key,
    unauthorized,
)
from gateway.errors import ApiError
from gateway.openapi import error_responses
from gateway.rpc import ask
from gateway.settings import GatewaySettings

log = get_logger("gateway.auth_routes")

TAGS = ["auth"]
Relationship = Literal["mother", "father", "carer", "guardian", "grandparent", "other"]

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


# -- request bodies ---------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _valid_email(value: str) -> str:
    value = value.strip()
    if not _EMAIL.match(value):
        raise PydanticCustomError("email", "Enter an email address like name@example.org")
    return value


class RegisterBody(_Body):
    """A parent registers; `code` and `relationship` when they came with a child's code."""

    email: str = Field(max_length=254, examples=["mary@example.org"])
    password: str = Field(max_length=1024, description="At least 12 characters, not a commonly used one")
    name: str = Field(max_length=200, examples=["Mary Smith"])
    accept_aup: bool = Field(description="Must be true: the acceptable-use policy is accepted")
    code: str | None = Field(default=None, max_length=64, description="A child's link code, as typed")
    relationship: Relationship | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return _valid_email(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise PydanticCustomError("name", "Enter your name")
        return value


class TokenBody(_Body):
    """A token from an email link."""

    token: str = Field(min_length=1, max_length=256)


class EmailBody(_Body):
    """An email address."""

    email: str = Field(min_length=1, max_length=254, examples=["mary@example.org"])


class LoginBody(_Body):
    """Email address and password."""

    email: str = Field(min_length=1, max_length=254, examples=["mary@example.org"])
    password: str = Field(min_length=1, max_length=1024)


class ResetConfirmBody(_Body):
    """A reset token and the new password."""

    token: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=1024, description="At least 12 characters, not a commonly used one")


# -- answers ---------------------------------------------------------------------------------


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


# -- hooks for the linking issues -------------------------------------------------------------


async def default_aup_version(state: State) -> str:
    """The version of the default acceptable-use policy ("" when linking cannot say: the
    registration still goes ahead, and the version accepted is recorded as unknown)."""
    try:
        reply = await ask(state, linking.AUP, linking.AupRequest(school_id=None), timeout=1.0)
    except RpcError as exc:
        log.warning("aup_version_unavailable", error=exc.code)
        return ""
    return reply.version[:64]


# -- routes ---------------------------------------------------------------------------------


@post(
    "/auth/register",
    status_code=202,
    tags=TAGS,
    summary="Register a parent account",
    responses=error_responses(404, 409, 422, 503),
)
async def register(state: State, request: Request, data: JSONBody[RegisterBody]) -> Status:
    """A verification email is sent (a known address gets a different email, and the same answer)."""
    if not data.accept_aup:
        raise ApiError(
            422,
            "aup_required",
            "Accept the acceptable-use policy to register.",
            extra={"errors": [{"field": "accept_aup", "message": "Must be true"}]},
        )
    aup_version = None
    if data.code:
        # API.md: a bad code answers 404 and a full one 409 with nothing created, so the
        # password and the code are checked before identity creates the account.
        await ask(
            state,
            identity.CHECK_PASSWORD,
            identity.CheckPasswordRequest(password=data.password, email=data.email, name=data.name),
        )
        check = await ask(
            state,
            linking.REDEEM,
            linking.RedeemRequest(code=data.code, dry_run=True, accept_aup=True, email=data.email, client_ip=client_ip(request)),
        )
        aup_version = check.aup.version if check.aup else None
    reply = await ask(
        state,
        identity.REGISTER,
        identity.RegisterRequest(
            email=data.email,
            password=data.password,
            name=data.name,
            aup_version=aup_version if aup_version is not None else await default_aup_version(state),
        ),
    )
    if data.code and reply.created:
        # Only a new account is linked here, awaiting its verification. An address that
        # already has an account gets "you already have an account" and nothing else:
        # otherwise anyone holding a code could attach a child to a stranger's account. Its
        # owner signs in and adds the child with the same code.
        await ask(
            state,
            linking.REDEEM,
            linking.RedeemRequest(
                code=data.code,
                parent_id=reply.parent_id,
                relationship=data.relationship,
                verified=False,
                accept_aup=True,
                email=data.email,
                client_ip=client_ip(request),
            ),
        )
    return Status("accepted", "Check your email: we have sent a message to that address with what to do next.")


@post("/auth/verify", status_code=200, tags=TAGS, summary="Verify an email address", responses=error_responses(400, 422, 503))
async def verify(state: State, data: JSONBody[TokenBody]) -> Status:
    """Use the token of a verification email; an unknown, expired or used one answers 400."""
    await ask(state, identity.VERIFY, identity.VerifyRequest(token=data.token))
    return Status("verified", "Your email address is confirmed: you can sign in now.")


@post(
    "/auth/resend-verification",
    status_code=202,
    tags=TAGS,
    summary="Send the verification email again",
    responses=error_responses(422, 503),
)
async def resend_verification(state: State, data: JSONBody[EmailBody]) -> Status:
    """The same answer whatever the address: a fresh link goes only to an unverified account."""
    await ask(state, identity.RESEND_VERIFICATION, identity.EmailRequest(email=data.email))
    return Status("accepted", "If that address has an account waiting to be confirmed, a new link is on its way.")


@post(
    "/auth/login",
    status_code=200,
    tags=TAGS,
    summary="Sign in",
    responses=error_responses(401, 403, 422, 429, 503),
)
async def login(state: State, request: Request, data: JSONBody[LoginBody]) -> Response[LoginAnswer]:
    """A new session: the token as bearer token and in the session cookie, with its CSRF token."""
    reply = await ask(
        state,
        identity.LOGIN,
        identity.LoginRequest(email=data.email, password=data.password, client_ip=client_ip(request)),
    )
    settings: GatewaySettings = state.settings
    body = LoginAnswer(
        access_token=reply.access_token,
        token_type=reply.token_type,
        expires_in=reply.expires_in,
        role=reply.role,
        csrf_token=csrf_token_for(reply.access_token),
    )
    return Response(body, cookies=[session_cookie(settings, reply.access_token, reply.expires_in)])


@post(
    "/auth/logout",
    status_code=204,
    tags=TAGS,
    summary="Sign out",
    security=SECURITY,
    responses=error_responses(401, 403, 503),
)
async def logout(state: State, request: Request) -> Response[None]:
    """The session ends at once on every replica; the cookie is cleared."""
    creds = credentials(request)
    if creds is None:
        raise unauthorized()
    if creds.source == "cookie":
        await check_csrf(request, creds.token)
    auth = get_auth(state)
    principal, _ = await auth.resolve(state, creds.token)
    # This replica stops accepting the token now, whatever identity and the event do next.
    auth.cache.drop_token(token_key(creds.token))
    if principal is not None:
        await auth.until_revoked(
            ask(state, identity.LOGOUT, identity.LogoutRequest(token=creds.token)),
            session_id=principal.session_id,
        )
        log.info("logout", account_id=principal.account_id, session_id=principal.session_id)
    forget_principal(request)
    # Ended already (or never valid): signing out is done all the same.
    return Response(None, status_code=204, cookies=[clear_session_cookie(state.settings)])


@post(
    "/auth/password-reset",
    status_code=202,
    tags=TAGS,
    summary="Ask for a password reset link",
    responses=error_responses(422, 503),
)
async def password_reset(state: State, data: JSONBody[EmailBody]) -> Status:
    """The same answer for any address; a known one gets a link that works once, for an hour."""
    await ask(state, identity.PASSWORD_RESET, identity.EmailRequest(email=data.email))
    return Status("accepted", "If that address has an account, a link to choose a new password is on its way.")


@post(
    "/auth/password-reset/confirm",
    status_code=200,
    tags=TAGS,
    summary="Choose a new password",
    responses=error_responses(400, 422, 503),
)
async def password_reset_confirm(state: State, data: JSONBody[ResetConfirmBody]) -> Status:
    """Set the new password; every session of the account ends, on every replica, before the answer."""
    await get_auth(state).until_account_revoked(
        ask(
            state,
            identity.PASSWORD_RESET_CONFIRM,
            identity.PasswordResetConfirm(token=data.token, password=data.password),
        )
    )
    return Status("password_changed", "Your password is changed and every session was signed out: sign in with the new one.")


@get("/me", tags=TAGS, summary="The signed-in caller", security=SECURITY, responses=error_responses(401, 503))
async def me(request: Request, principal: NamedDependency[Principal]) -> Me:
    """`id, email, name, role`, the CSRF token of this session, and the school or trust of staff."""
    creds = credentials(request)
    assert creds is not None  # a principal implies a token
    return Me(
        id=principal.account_id,
        email=principal.email,
        name=principal.name,
        role=principal.role,
        csrf_token=csrf_token_for(creds.token),
        school_id=principal.school_id,
        trust_id=principal.trust_id,
    )


ROUTES = [register, verify, resend_verification, login, logout, password_reset, password_reset_confirm, me]
