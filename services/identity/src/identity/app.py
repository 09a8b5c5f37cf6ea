"""Builds the identity service from its settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts import identity as c
from contracts import platform, streams
from contracts.kit import retention
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from identity import __version__
from identity.activity import ParentActivity
from identity.digest import Digests
from identity.export import AccountExports
from identity.passwords import OWASP_MIN_MEMORY_KIB, OWASP_MIN_TIME_COST, HashParams, Passwords
from identity.preferences import AccountPreferences
from identity.retention import IdentityRetention
from identity.service import IdentityService

NAME = "identity"

MIGRATIONS = "identity:migrations"
DESCRIPTION = "Parent and staff accounts, email verification, sessions, password reset."


class Settings(ServiceSettings):
    """Settings of the identity service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)
    identity_argon2_time_cost: int = Field(default=3, ge=OWASP_MIN_TIME_COST, description="argon2id iterations.")
    identity_argon2_memory_kib: int = Field(
        default=64 * 1024, ge=OWASP_MIN_MEMORY_KIB, description="argon2id memory (KiB)."
    )
    identity_argon2_parallelism: int = Field(default=4, ge=1, le=16, description="argon2id lanes.")
    identity_argon2_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Password hashes and checks (argon2id) a replica runs at once; more wait their turn. "
        "Each holds identity_argon2_memory_kib of memory and a core: about one per core.",
    )
    identity_argon2_queue_seconds: float = Field(
        default=3,
        gt=0,
        description="How long a login, registration or password change waits for its turn to hash before it "
        "answers 429 (try again in a few seconds). Below the gateway's PORTAL_RPC_TIMEOUT.",
    )
    identity_verify_hours: float = Field(default=48, gt=0, description="How long a verification link works.")
    identity_unsubscribe_days: float = Field(
        default=60, gt=0, description="How long a digest's one-click unsubscribe link works."
    )
    identity_reset_minutes: float = Field(default=60, gt=0, description="How long a password reset link works.")
    identity_set_password_hours: float = Field(
        default=72, gt=0, description="How long a new staff member's set-password link works."
    )
    identity_registration_emails_per_hour: int = Field(
        default=3,
        ge=1,
        description='Emails about registration (verification, "you already have an account", resent links) one '
        "address may get an hour, however often it is registered; later registrations answer the same.",
    )
    identity_resend_interval_seconds: float = Field(
        default=60, ge=0, description='Least time between two verification links sent by "send it again".'
    )
    identity_reset_emails_per_hour: int = Field(
        default=3, ge=1, description="Reset emails one address may get an hour."
    )
    identity_parent_idle_minutes: float = Field(
        default=7 * 24 * 60, gt=0, description="A parent's session ends after this long unused."
    )
    identity_parent_absolute_hours: float = Field(
        default=30 * 24, gt=0, description="A parent's session ends this long after sign-in."
    )
    identity_staff_idle_minutes: float = Field(
        default=30, gt=0, description="A staff session ends after this long unused."
    )
    identity_staff_absolute_hours: float = Field(
        default=12, gt=0, description="A staff session ends this long after sign-in."
    )
    identity_touch_seconds: float = Field(default=60, ge=0, description="Record a session's use at most this often.")
    identity_account_failure_limit: int = Field(
        default=10,
        ge=1,
        description="Failed logins of one account from one client address within the window, after which that "
        "address gets 429 for that account (the right password from another address still works).",
    )
    identity_account_failure_window_minutes: float = Field(
        default=15, gt=0, description="The window of identity_account_failure_limit."
    )
    identity_ip_failure_limit: int = Field(
        default=100,
        ge=1,
        description="Failed logins from one client address within an hour (any accounts), after which its logins "
        "get 429 before any password is checked.",
    )
    identity_registration_failure_limit: int = Field(
        default=50,
        ge=1,
        description="Refused registrations (weak password, invalid name or address) from one client address within "
        "an hour, after which its registrations get 429. Successful ones are never counted.",
    )


def serve_requests(runtime: ServiceRuntime, svc: IdentityService) -> None:
    """Every `rpc.identity.*` request and the verb that answers it."""
    runtime.serve(c.REGISTER, svc.register)
    runtime.serve(c.VERIFY, svc.verify)
    runtime.serve(c.RESEND_VERIFICATION, svc.resend_verification)
    runtime.serve(c.LOGIN, svc.login)
    runtime.serve(c.LOGOUT, svc.logout)
    # Every page view of every gateway replica whose session cache misses asks it.
    runtime.serve(c.SESSION, svc.session, concurrency=1024)
    runtime.serve(c.SESSIONS, svc.sessions, concurrency=1024)
    runtime.serve(c.PASSWORD_RESET, svc.password_reset)
    runtime.serve(c.PASSWORD_RESET_CONFIRM, svc.password_reset_confirm)
    runtime.serve(c.CHECK_PASSWORD, svc.check_password)
    runtime.serve(c.CONTACTS, svc.contacts)
    runtime.serve(c.CREATE_STAFF, svc.create_staff)
    runtime.serve(c.STAFF_LIST, svc.staff_list)
    runtime.serve(c.SET_STAFF_ACCESS, svc.set_staff_access)
    runtime.serve(c.DELETE_ACCOUNT, svc.delete_account)
    runtime.serve(c.DELETE_PARENT, svc.delete_parent)
    runtime.serve(c.EXPORT, AccountExports(runtime).export)
    runtime.serve(c.PARENT_ACTIVITY, ParentActivity(runtime).activity)
    preferences = AccountPreferences(runtime)
    runtime.serve(c.PREFERENCES, preferences.get)
    runtime.serve(c.SET_PREFERENCES, preferences.set)
    digests = Digests(runtime, svc.s)
    runtime.serve(c.DIGEST_RECIPIENTS, digests.recipients)
    runtime.serve(c.DIGEST_ADDRESSES, digests.addresses)
    runtime.serve(c.UNSUBSCRIBE, digests.unsubscribe)


class IdentityRuntime(ServiceRuntime):
    """A replica of identity, whose verbs tests reach as `runtime.service`."""

    service: IdentityService


def build(settings: Settings | None = None) -> IdentityRuntime:
    """Wire one replica: rpc handlers, the staff roster consumer, its events."""
    settings = settings or Settings()
    runtime = IdentityRuntime(
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
        ),
        concurrency=settings.identity_argon2_concurrency,
        queue_seconds=settings.identity_argon2_queue_seconds,
    )
    svc = IdentityService(runtime, settings, passwords)

    serve_requests(runtime, svc)
    # One consumer for both subjects, so a member of staff's events apply in the order the
    # platform published them (a departure then a return ends enabled).
    runtime.consume(
        stream=streams.PLATFORM,
        subject=platform.STAFF_ALL,
        durable="identity-staff",
        schemas={platform.STAFF_UPSERTED: platform.StaffUpserted, platform.STAFF_LEFT: platform.StaffLeft},
        handler=svc.on_staff_event,
        title="staff roster",
        description="Creates or updates staff accounts from the platform's roster; new ones get a set-password email. "
        "A member of staff who left is disabled (their sessions end); naming them again enables them.",
    )
    runtime.publishes_events(
        {
            c.PARENT_REGISTERED: c.ParentRegistered,
            c.PARENT_VERIFIED: c.ParentVerified,
            c.PASSWORD_CHANGED: c.PasswordChanged,
            c.SESSION_REVOKED: c.SessionRevoked,
            c.ACCOUNT_CHANGED: c.AccountChanged,
            c.STAFF_ACCESS_CHANGED: c.StaffAccessChanged,
            c.ACCOUNT_DELETED: c.AccountDeleted,
            c.PREFERENCES_CHANGED: c.PreferencesChanged,
        }
    )

    retention.install(runtime, IdentityRetention(settings).purge)
    runtime.app.after_startup(svc.start_background)
    runtime.app.on_shutdown(svc.stop_background)
    runtime.service = svc
    return runtime
