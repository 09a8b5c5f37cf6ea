"""Builds the notify service from its settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts import identity, streams
from contracts import notify as contract
from contracts.kit import retention
from contracts.kit.logs import get_logger
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from notify import __version__
from notify.digest import DigestRuns
from notify.export import EmailExports
from notify.handlers import Erasure, Requests
from notify.render import Renderer
from notify.retention import NotifyRetention
from notify.sender import Sender
from notify.smtp import SmtpTarget

NAME = "notify"
MIGRATIONS = "notify:migrations"
DESCRIPTION = "Every outbound email: rendered, sent over SMTP once, retried through outages."

log = get_logger("notify.app")


class Settings(ServiceSettings):
    """Settings of the notify service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)
    smtp_url: str | None = Field(
        default=None,
        description="smtp://[user:pass@]host:port[?starttls=true|false] or smtps://…: STARTTLS whenever the "
        "server offers it, required (certificate checked) with starttls=true or credentials, never with "
        "starttls=false (no credentials then); `portal up` points it at its local sink.",
    )
    smtp_ca: str | None = Field(
        default=None,
        description="A PEM file of the CA certificates to check the SMTP server's against, instead of the system's.",
    )
    mail_from: str = Field(default="no-reply@parent-portal.localhost", description="The From address of every email.")
    notify_daily_cap: int = Field(default=50, ge=1, description="Emails one address may receive in 24 hours.")
    notify_retry_base_seconds: float = Field(default=5.0, gt=0, description="First retry delay; doubles each time.")
    notify_retry_max_seconds: float = Field(default=3600.0, gt=0, description="Longest delay between two attempts.")
    notify_give_up_hours: float = Field(default=48.0, gt=0, description="An email not delivered by then fails.")
    notify_smtp_concurrency: int = Field(default=4, ge=1, le=64, description="SMTP connections per replica.")
    notify_smtp_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for each SMTP reply.")
    notify_digest_every_seconds: float = Field(
        default=300,
        ge=0,
        description="How often each replica sends the digests due (0: only `portal digest run`); every replica may, "
        "no parent gets a day's digest twice.",
    )
    notify_claim_seconds: float = Field(
        default=15.0, gt=1, description="How long a dead replica's emails wait before another takes them."
    )


class NotifyRuntime(ServiceRuntime):
    """A replica of notify, whose sender (None without an SMTP server) tests and benchmarks reach."""

    sender: Sender | None
    digest_runs: DigestRuns


def build(settings: Settings | None = None) -> NotifyRuntime:
    """Wire one replica: the request consumer, the SMTP sender, its outcome events."""
    settings = settings or Settings()
    runtime = NotifyRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.NOTIFY, streams.NOTIFY_REQUESTS, streams.IDENTITY],
    )
    renderer = Renderer(mail_from=settings.mail_from)
    target = SmtpTarget.from_url(settings.smtp_url, ca_file=settings.smtp_ca) if settings.smtp_url else None
    sender = Sender(runtime, settings, renderer, target) if target is not None else None

    requests = runtime.consume(
        stream=streams.NOTIFY_REQUESTS,
        subject=contract.REQUEST_ALL,
        durable="notify-requests",
        schemas=contract.REQUESTS,
        handler=Requests(sender).record,
        title="email requests",
        description="Records each email request in the ledger (once per request id); the sender sends it.",
    )
    runtime.consume(
        stream=streams.IDENTITY,
        subject=identity.ACCOUNT_DELETED,
        durable="notify-account-deleted",
        schemas={identity.ACCOUNT_DELETED: identity.AccountDeleted},
        handler=Erasure(runtime.db).on_account_deleted,
        title="account deleted",
        description="A parent deleted their account: every email about them or to their addresses is deleted "
        "(address and content), and later requests about them are dropped.",
    )
    # A dead letter is kept for weeks: it keeps the request's ids, never its link, code or address.
    requests.redact = contract.redact_request
    retention.install(runtime, NotifyRetention(settings).purge)
    runtime.serve(contract.EXPORT, EmailExports(runtime).export)
    digests = DigestRuns(
        runtime, sender, public_url=settings.public_url, every_seconds=settings.notify_digest_every_seconds
    )
    runtime.serve(contract.DIGEST_RUN, digests.run_request)
    runtime.app.after_startup(digests.start)
    runtime.app.on_shutdown(digests.stop)
    runtime.publishes_events(
        {contract.EMAIL_DELIVERED: contract.EmailDelivered, contract.EMAIL_FAILED: contract.EmailFailed}
    )

    if sender is not None:
        runtime.app.after_startup(sender.start)
        runtime.app.on_shutdown(sender.stop)
    else:
        log.warning("smtp_not_configured", detail="PORTAL_SMTP_URL is not set: emails are recorded but not sent")
    runtime.extra_checks["smtp"] = sender.health if sender is not None else lambda: "not configured"
    runtime.sender = sender
    runtime.digest_runs = digests
    runtime.metrics.emails_declared()
    return runtime
