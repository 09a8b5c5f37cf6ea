"""`/api/v1/auth/*` and `/api/v1/me`: registration, verification, login, logout, password reset.

Identity does the work (`IdentityClient`); these routes validate input, pass the caller's
address for the guessing limits, set and clear the session cookie, and make a logout or a
password change take effect on every replica before they answer. Registering with a child's
code is the flow `gateway.flows.register`.
"""

from __future__ import annotations

from typing import Literal

from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from contracts.addresses import looks_like_email
from contracts.identity import Principal
from gateway import flows
from gateway.auth import (
    SECURITY,
    change_password,
    clear_session_cookie,
    client_ip,
    credentials,
    csrf_token_for,
    end_replaced_sessions,
    end_session,
    forget_principal,
    session_cookie,
)
from gateway.caches.links import get_links_cache
from gateway.caches.sessions import get_auth
from gateway.clients import Clients
from gateway.errors import ApiError
from gateway.models import LoginAnswer, Me, Status
from gateway.openapi import error_responses
from gateway.settings import GatewaySettings

TAGS = ["auth"]
Relationship = Literal["mother", "father", "carer", "guardian", "grandparent", "other"]

# -- request bodies ---------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _valid_email(value: str) -> str:
    value = value.strip()
    if not looks_like_email(value):
        raise PydanticCustomError("email", "Enter an email address like name@example.org")
    return value


MAX_PASSWORD = 256
# A longer body is refused before it is read into a model: nobody types 64 KiB.
MAX_BODY_PASSWORD = 65536
PASSWORD_RULE = "12 to 256 characters, not a commonly used or easily guessed one"


class RegisterBody(_Body):
    """A parent registers; `code` and `relationship` when they came with a child's code."""

    email: str = Field(max_length=254, examples=["mary@example.org"])
    password: str = Field(max_length=MAX_BODY_PASSWORD, description=PASSWORD_RULE)
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


class DeleteAccountBody(_Body):
    """The account's password, to confirm its deletion."""

    password: str = Field(min_length=1, max_length=MAX_BODY_PASSWORD)


class ResetConfirmBody(_Body):
    """A reset token and the new password."""

    token: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=MAX_BODY_PASSWORD, description=PASSWORD_RULE)


def _not_too_long(password: str) -> None:
    # Answered here, not by identity: its requests carry at most 1,024 characters.
    if len(password) > MAX_PASSWORD:
        message = f"Use at most {MAX_PASSWORD} characters."
        raise ApiError(422, "password_too_long", message, extra={"errors": [{"field": "password", "message": message}]})


# -- routes ---------------------------------------------------------------------------------


@post(
    "/auth/register",
    status_code=202,
    tags=TAGS,
    summary="Register a parent account",
    operation_id="register",
    responses=error_responses(404, 409, 422, 429, 503),
)
async def register(request: Request, clients: NamedDependency[Clients], data: JSONBody[RegisterBody]) -> Status:
    """A verification email is sent (a known address gets a different email, and the same answer)."""
    if not data.accept_aup:
        raise ApiError(
            422,
            "aup_required",
            "Accept the acceptable-use policy to register.",
            extra={"errors": [{"field": "accept_aup", "message": "Must be true"}]},
        )
    _not_too_long(data.password)
    await flows.register(
        clients,
        flows.Registration(
            email=data.email,
            password=data.password,
            name=data.name,
            code=data.code,
            relationship=data.relationship,
            client_ip=client_ip(request),
        ),
    )
    return Status("accepted", "Check your email: we have sent a message to that address with what to do next.")


@post(
    "/auth/verify",
    status_code=200,
    tags=TAGS,
    summary="Verify an email address",
    operation_id="verify_email",
    responses=error_responses(400, 422, 503),
)
async def verify(clients: NamedDependency[Clients], data: JSONBody[TokenBody]) -> Status:
    """Use the token of a verification email; an unknown, expired or used one answers 400."""
    await clients.identity.verify(data.token)
    return Status("verified", "Your email address is confirmed: you can sign in now.")


@post(
    "/auth/resend-verification",
    status_code=202,
    tags=TAGS,
    summary="Send the verification email again",
    operation_id="resend_verification",
    responses=error_responses(422, 503),
)
async def resend_verification(clients: NamedDependency[Clients], data: JSONBody[EmailBody]) -> Status:
    """The same answer whatever the address: a fresh link goes only to an unverified account."""
    await clients.identity.resend_verification(data.email)
    return Status("accepted", "If that address has an account waiting to be confirmed, a new link is on its way.")


@post(
    "/auth/login",
    status_code=200,
    tags=TAGS,
    summary="Sign in",
    operation_id="login",
    responses=error_responses(401, 403, 422, 429, 503),
)
async def login(
    state: State, request: Request, clients: NamedDependency[Clients], data: JSONBody[LoginBody]
) -> Response[LoginAnswer]:
    """A new session: the token as bearer token and in the session cookie, with its CSRF token.
    A session the request still carried (cookie or bearer token) ends."""
    reply = await clients.identity.login(data.email, data.password, client_ip(request))
    await end_replaced_sessions(request)
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
    operation_id="logout",
    security=SECURITY,
    responses={
        204: ResponseSpec(None, description="Signed out; the session cookie is cleared."),
        **error_responses(401, 403, 503),
    },
)
async def logout(state: State, request: Request) -> Response[None]:
    """The session ends at once on every replica; the cookie is cleared."""
    await end_session(request)
    # Ended already (or never valid): signing out is done all the same.
    return Response(None, status_code=204, cookies=[clear_session_cookie(state.settings)])


@post(
    "/auth/password-reset",
    status_code=202,
    tags=TAGS,
    summary="Ask for a password reset link",
    operation_id="request_password_reset",
    responses=error_responses(422, 503),
)
async def password_reset(clients: NamedDependency[Clients], data: JSONBody[EmailBody]) -> Status:
    """The same answer for any address; a known one gets a link that works once, for an hour."""
    await clients.identity.password_reset(data.email)
    return Status("accepted", "If that address has an account, a link to choose a new password is on its way.")


@post(
    "/auth/password-reset/confirm",
    status_code=200,
    tags=TAGS,
    summary="Choose a new password",
    operation_id="confirm_password_reset",
    responses=error_responses(400, 422, 503),
)
async def password_reset_confirm(state: State, data: JSONBody[ResetConfirmBody]) -> Status:
    """Set the new password; every session of the account ends, on every replica, before the answer."""
    _not_too_long(data.password)
    await change_password(state, data.token, data.password)
    return Status(
        "password_changed", "Your password is changed and every session was signed out: sign in with the new one."
    )


@get(
    "/me",
    tags=TAGS,
    summary="The signed-in caller",
    operation_id="get_me",
    security=SECURITY,
    responses=error_responses(401, 503),
)
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


@delete(
    "/me",
    status_code=204,
    tags=TAGS,
    summary="Delete my account",
    operation_id="delete_me",
    security=SECURITY,
    responses={
        204: ResponseSpec(None, description="The account is deleted; every session ended and the cookie is cleared."),
        **error_responses(401, 403, 422, 429, 503),
    },
)
async def delete_me(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    principal: NamedDependency[Principal],
    data: JSONBody[DeleteAccountBody],
) -> Response[None]:
    """A parent deletes their account with their password: every session ends at once on every
    replica, every link ends, and their name and address are erased from every service (a later
    registration of the address is a new account). A wrong password answers 403
    `wrong_password` and changes nothing; a member of staff gets 403 `forbidden` (staff accounts
    come from the school's roster)."""
    if len(data.password) > MAX_PASSWORD:
        # No password that long was ever accepted: wrong, without asking identity.
        raise ApiError(403, "wrong_password", "That is not your password: nothing was deleted.")
    await flows.delete_account(
        clients, get_auth(state), get_links_cache(state), principal, data.password, client_ip(request)
    )
    forget_principal(request)
    return Response(None, status_code=204, cookies=[clear_session_cookie(state.settings)])


ROUTES = [
    register,
    verify,
    resend_verification,
    login,
    logout,
    password_reset,
    password_reset_confirm,
    me,
    delete_me,
]
