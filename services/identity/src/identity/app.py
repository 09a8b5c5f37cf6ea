"""Builds the identity service from its settings."""

from __future__ import annotations

import asyncio
import contextlib
from typing import ClassVar

from pydantic import Field

from contracts import identity as c
from contracts import platform, streams
from contracts.kit.logs import get_logger
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from identity import __version__
from identity.passwords import OWASP_MIN_MEMORY_KIB, OWASP_MIN_TIME_COST, HashParams, Passwords
from identity.service import IdentityService

NAME = "identity"

log = get_logger("identity.app")
MIGRATIONS = "identity:migrations"
DESCRIPTION = "Parent and staff accounts, email verification, sessions, password reset."


class Settings(ServiceSettings):
    """Settings of the identity service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)
    identity_argon2_time_cost: int = Field(default=3, ge=OWASP_MIN_TIME_COST, description="argon2id iterations.")
    identity_argon2_memory_kib: int = Field(default=64 * 1024, ge=OWASP_MIN_MEMORY_KIB, description="argon2id memory (KiB).")
    identity_argon2_parallelism: int = Field(default=4, ge=1, le=16, description="argon2id lanes.")
    identity_verify_hours: float = Field(default=48, gt=0, description="How long a verification link works.")
    identity_reset_minutes: float = Field(default=60, gt=0, description="How long a password reset link works.")
    identity_set_password_hours: float = Field(default=72, gt=0, description="How long a new staff member's set-password link works.")
    identity_resend_interval_seconds: float = Field(default=60, ge=0, description="Least time between two verification emails.")
    identity_verification_emails_per_day: int = Field(default=5, ge=1, description="Verification emails an account may get a day.")
    identity_reset_emails_per_hour: int = Field(default=3, ge=1, description="Reset emails an account may get an hour.")
    identity_parent_idle_minutes: float = Field(default=7 * 24 * 60, gt=0, description="A parent's session ends after this long unused.")
    identity_parent_absolute_hours: float = Field(default=30 * 24, gt=0, description="A parent's session ends this long after sign-in.")
    identity_staff_idle_minutes: float = Field(default=30, gt=0, description="A staff session ends after this long unused.")
    identity_staff_absolute_hours: float = Field(default=12, gt=0, description="A staff session ends this long after sign-in.")
    identity_touch_seconds: float = Field(default=60, ge=0, description="Record a session's use at most this often.")
    identity_account_failure_limit: int = Field(default=10, ge=1, description="Failed logins of one account within the window before 429.")
    identity_account_failure_window_minutes: float = Field(default=15, gt=0, description="The account's window.")
    identity_ip_failure_limit: int = Field(default=100, ge=1, description="Failed logins from one address within an hour before 429.")


def build(settings: Settings | None = None) -> ServiceRuntime:
    """Wire one replica: rpc handlers, the staff roster consumer, its events."""
    settings = settings or Settings()
    runtime = ServiceRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.IDENTITY, streams.NOTIFY_REQUESTS, streams.PLATFORM],
    )
    passwords = Passwords(
        HashParams(
            time_cost=settings.identity_argon2_time_cost,
            memory_kib=settings.identity_argon2_memory_kib,
            parallelism=settings.identity_argon2_parallelism,
        )
    )
    svc = IdentityService(runtime, settings, passwords)

    handlers = [
        (c.REGISTER, c.RegisterRequest, svc.register, "register", "A parent registers; unverified until the emailed link is used."),
        (c.VERIFY, c.VerifyRequest, svc.verify, "verify", "Use a verification token."),
        (c.RESEND_VERIFICATION, c.EmailRequest, svc.resend_verification, "resend verification", "Email a fresh verification link (rate-limited)."),
        (c.LOGIN, c.LoginRequest, svc.login, "login", "Check a password and open a session, within the guessing limits."),
        (c.LOGOUT, c.LogoutRequest, svc.logout, "logout", "End a session."),
        (c.SESSION, c.SessionRequest, svc.session, "session", "Who holds a session token (the gateway caches the answer)."),
        (c.PASSWORD_RESET, c.EmailRequest, svc.password_reset, "password reset", "Email a reset link, answering the same for any address."),
        (c.PASSWORD_RESET_CONFIRM, c.PasswordResetConfirm, svc.password_reset_confirm, "password reset confirm", "Set a new password with a reset token."),
        (c.CHECK_PASSWORD, c.CheckPasswordRequest, svc.check_password, "check password", "Whether a password meets the policy."),
        (c.CONTACTS, c.ContactsRequest, svc.contacts, "contacts", "Names and addresses of a batch of accounts."),
        (c.CREATE_STAFF, c.CreateStaffRequest, svc.create_staff, "create staff", "Create or update a member of staff by hand."),
    ]
    for subject, request, fn, title, description in handlers:
        # Every page view of every gateway replica whose session cache misses asks SESSION.
        runtime.rpc(subject, request=request, title=title, description=description, raw=subject == c.SESSION)(fn)

    runtime.consume(
        stream=streams.PLATFORM,
        subject=platform.STAFF_UPSERTED,
        durable="identity-staff",
        schemas={platform.STAFF_UPSERTED: platform.StaffUpserted},
        handler=svc.on_staff_upserted,
        title="staff roster",
        description="Creates or updates staff accounts from the platform's roster; new ones get a set-password email.",
    )
    for subject, model, title in [
        (c.PARENT_REGISTERED, c.ParentRegistered, "parent registered"),
        (c.PARENT_VERIFIED, c.ParentVerified, "parent verified"),
        (c.PASSWORD_CHANGED, c.PasswordChanged, "password changed"),
        (c.SESSION_REVOKED, c.SessionRevoked, "session revoked"),
        (c.ACCOUNT_CHANGED, c.AccountChanged, "account changed"),
    ]:
        runtime.publishes(subject, model, title=title, description=model.__doc__ or title)

    pruner: dict[str, asyncio.Task] = {}

    async def prune_forever() -> None:
        while True:
            await asyncio.sleep(600)
            with contextlib.suppress(Exception):
                await svc.prune()

    async def record_use_forever() -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await svc.record_use()
            except Exception as exc:  # noqa: BLE001 - the database may be back at the next flush
                log.warning("session_use_not_recorded", error=type(exc).__name__)

    async def start_pruner() -> None:
        pruner["task"] = asyncio.create_task(prune_forever())
        pruner["uses"] = asyncio.create_task(record_use_forever())

    async def stop_pruner() -> None:
        for task in (pruner.pop("task", None), pruner.pop("uses", None)):
            if task:
                task.cancel()
        with contextlib.suppress(Exception):
            await svc.record_use()

    runtime.app.after_startup(start_pruner)
    runtime.app.on_shutdown(stop_pruner)
    runtime.service = svc  # type: ignore[attr-defined]  # reached by tests
    return runtime
