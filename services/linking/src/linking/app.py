"""Builds the linking service from its settings."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from contracts import identity, notify, platform, streams
from contracts import linking as contract
from contracts.kit import retention
from contracts.kit.logs import get_logger
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field, normalise_database_url
from linking import __version__, codes, roster
from linking.audit_export import SchoolAudit
from linking.bars import Bars
from linking.context import Limits, LinkingContext
from linking.export import ParentExports
from linking.full_roster import RosterSnapshot
from linking.guessing import Guessing
from linking.handlers import Handlers
from linking.invitations import BulkInvitations, Invitations
from linking.links import Links
from linking.printed import PrintedCodes
from linking.retention import LinkingRetention
from linking.schools import Schools
from linking.trust_settings import TrustSettings
from linking.uptake import Uptake

NAME = "linking"
MIGRATIONS = "linking:migrations"
DESCRIPTION = "The roster copy, school settings, link codes, invitations, parent-pupil links, bars and the audit trail."

KEY_FILE = "linking-code.key"

log = get_logger("linking.main")


class Settings(ServiceSettings):
    """Settings of the linking service (environment variables `PORTAL_*`)."""

    service_name: ClassVar[str] = NAME
    database_url: str | None = database_url_field(NAME)
    linking_code_key: str | None = Field(
        default=None,
        repr=False,
        description="At least 32 random bytes, URL-safe base64 or hex (`portal linking new-key` makes one): codes and "
        "bars are looked up by HMACs and stored encrypted under keys derived from it; the same on every replica. "
        "Required unless linking's database is the default SQLite file in DATA_DIR (then, when unset, a development "
        f"key is made once and kept in DATA_DIR/{KEY_FILE}). Linking refuses to start if its database holds codes or "
        "bars made under a key that is neither this nor one of PORTAL_LINKING_CODE_OLD_KEYS.",
    )
    linking_code_old_keys: str = Field(
        default="",
        repr=False,
        description="Earlier code keys, comma-separated: codes and bars made under them still work and hold. "
        "To rotate: the new key in PORTAL_LINKING_CODE_KEY, the old one here, on every replica; then "
        "`portal linking rekey`; then remove it from here.",
    )

    linking_parent_failures_per_hour: int = Field(
        default=10,
        ge=1,
        description="Failed codes (redemptions and previews) a parent may make in an hour; then 429 until the oldest is an hour old.",
    )
    linking_client_failures_per_hour: int = Field(
        default=100,
        ge=1,
        description="Failed codes from one network address in an hour before its further failures answer 429 (good codes always work).",
    )
    linking_alert_failures_per_minute: int = Field(
        default=50,
        ge=1,
        description="Failed codes attributed to one trust within a minute above which an alert is logged and kept for `portal alerts`.",
    )
    linking_alert_deployment_failures_per_minute: int = Field(
        default=500,
        ge=1,
        description="Failed codes across the deployment within a minute above which an alert is logged and kept.",
    )

    def limits(self) -> Limits:
        """The guessing rules' figures."""
        return Limits(
            parent_failures_per_hour=self.linking_parent_failures_per_hour,
            client_failures_per_hour=self.linking_client_failures_per_hour,
            alert_trust_failures_per_minute=self.linking_alert_failures_per_minute,
            alert_deployment_failures_per_minute=self.linking_alert_deployment_failures_per_minute,
        )

    def code_key(self) -> str:
        """The code key: the setting, else the development key file (made on first use)."""
        return self.code_keys().current

    def key_required(self) -> bool:
        """Whether `PORTAL_LINKING_CODE_KEY` must be set: unless the database is the default SQLite
        file in the data directory, next to which the development key file lives and dies. Any
        other database may outlive the disk, or be shared by replicas on other hosts."""
        if not self.database_url:
            return False
        url = normalise_database_url(self.database_url)
        prefix = "sqlite+aiosqlite:///"
        if not url.startswith(prefix):
            return True
        path = url[len(prefix) :].split("?", 1)[0]
        return not path or path == ":memory:" or Path(path).resolve() != (self.data_dir / f"{NAME}.db").resolve()

    def code_keys(self) -> codes.CodeKeys:
        """The current key (the setting, else the development key file, made on first use) and
        the old keys (raises `codes.CodeKeyError` when the key is required and not set)."""
        old = tuple(dict.fromkeys(k.strip() for k in self.linking_code_old_keys.split(",") if k.strip()))
        current = (self.linking_code_key or "").strip()
        if not current:
            if self.key_required():
                raise codes.CodeKeyError(
                    f"{codes.KEY_SETTING} is not set: it is required unless linking's database is the default "
                    f"SQLite file in PORTAL_DATA_DIR. Every linking replica needs the same key (one made per host "
                    f"would make replicas refuse each other's codes, and be lost with its disk); "
                    f"{codes.HOW_TO_MAKE} and keep it secret"
                )
            current = codes.load_or_create_key_file(self.data_dir / KEY_FILE)
        return codes.CodeKeys(current=current, old=tuple(k for k in old if k != current))


# What `portal service linking` reports in one line (exit 2) rather than as a traceback.
REFUSALS = (codes.CodeKeyError, codes.InvalidKey)


def check_settings(settings: Settings | None = None) -> None:
    """Refuse, before anything starts, a missing or malformed code key (raises `REFUSALS`)."""
    settings = settings or Settings()
    keys = settings.code_keys()
    codes.CodeVault(keys.current, keys.old)


def serve_requests(runtime: ServiceRuntime, h: Handlers) -> None:
    """Every `rpc.linking.*` request and the handler that answers it."""
    runtime.serve(contract.REDEEM, h.redeem)
    runtime.serve(contract.PARENT_CHILDREN, h.links.parent_children)
    # Asked on every overview whose links-cache entry is missing.
    runtime.serve(contract.ACTIVE_PUPILS, h.links.active_pupils, concurrency=1024)
    runtime.serve(contract.ACTIVE_PUPILS_MANY, h.links.active_pupils_many, concurrency=1024)
    runtime.serve(contract.DIGEST_CHILDREN, h.links.digest_children, concurrency=8)
    runtime.serve(contract.UNLINK, h.links.unlink)
    runtime.serve(contract.INVITE, h.links.invite)
    runtime.serve(contract.REMOVE_PARENT, h.links.remove_parent)
    runtime.serve(contract.PARENT_PUPILS, h.links.parent_pupils)
    runtime.serve(contract.REMOVE_PARENT_EVERYWHERE, h.links.remove_parent_everywhere)
    runtime.serve(contract.AUDIT, h.links.audit_trail)
    runtime.serve(contract.SCHOOLS, h.schools.schools)
    runtime.serve(contract.CLASSES, h.schools.classes)
    runtime.serve(contract.CLASS_PUPILS, h.schools.class_pupils)
    runtime.serve(contract.CREATE_CODES, h.printed.create_codes)
    runtime.serve(contract.PREVIEW_CODE, h.preview_code)
    runtime.serve(contract.PUPIL_QR, h.printed.pupil_qr)
    runtime.serve(contract.CLASS_SHEET, h.printed.class_sheet)
    runtime.serve(contract.GET_SCHOOL_SETTINGS, h.schools.get_settings)
    runtime.serve(contract.UPDATE_SCHOOL_SETTINGS, h.schools.update_settings)
    runtime.serve(contract.AUP, h.schools.aup)
    runtime.serve(contract.ROSTER_STATUS, h.schools.roster_status)
    runtime.serve(contract.PUPIL_PARENTS, h.bars.pupil_parents)
    runtime.serve(contract.ADD_BAR, h.bars.add)
    runtime.serve(contract.BARS, h.bars.list_bars)
    runtime.serve(contract.LIFT_BAR, h.bars.lift)
    runtime.serve(contract.ALERTS, h.guessing.alerts)
    runtime.serve(contract.EXPORT, ParentExports(h.ctx).export)
    invitations = Invitations(h.ctx)
    runtime.serve(contract.WITHDRAW_INVITATION, invitations.withdraw)
    runtime.serve(contract.PUPIL_SHEET, h.printed.pupil_sheet)
    uptake = Uptake(h.ctx)
    runtime.serve(contract.UPTAKE, uptake.uptake)
    runtime.serve(contract.UPTAKE_PARENTS, uptake.parents)
    runtime.serve(contract.ROSTER_SNAPSHOT, RosterSnapshot(h.ctx).snapshot)
    trust_settings = TrustSettings(h.ctx)
    runtime.serve(contract.GET_TRUST_SETTINGS, trust_settings.get)
    runtime.serve(contract.UPDATE_TRUST_SETTINGS, trust_settings.update)
    runtime.serve(contract.SCHOOL_AUDIT, SchoolAudit(h.ctx).page)
    runtime.serve(contract.BULK_INVITE, BulkInvitations(h.ctx, bars=h.bars).invite_many)


def consume_events(runtime: ServiceRuntime, h: Handlers) -> None:
    """Every event linking consumes and the handler that applies it."""
    runtime.consume(
        stream=streams.PLATFORM,
        subject=platform.ROSTER_ALL,
        durable=roster.CONSUMER,
        schemas=roster.SCHEMAS,
        batch_handler=h.apply_roster,
        title="roster",
        description="Keeps linking's copy of trusts, schools, classes and pupils (newest event wins, "
        "whatever the order they arrive in); a pupil who leaves loses their codes and links, a pupil who moves "
        "school those of the school they left. Staff events are identity's.",
    )
    runtime.consume(
        stream=streams.IDENTITY,
        subject=identity.PARENT_VERIFIED,
        durable="linking-parent-verified",
        schemas={identity.PARENT_VERIFIED: identity.ParentVerified},
        handler=h.links.on_parent_verified,
        title="parent verified",
        description="A parent verified their address: their links awaiting it become linked (and they are emailed).",
    )
    runtime.consume(
        stream=streams.IDENTITY,
        subject=identity.ACCOUNT_DELETED,
        durable="linking-account-deleted",
        schemas={identity.ACCOUNT_DELETED: identity.AccountDeleted},
        handler=h.links.on_account_deleted,
        title="account deleted",
        description="A parent deleted their account: every link of theirs ends (audit `link_removed`, reason "
        "`account_deleted`, their id only), and the addresses of invitations they accepted are erased.",
    )
    runtime.consume(
        stream=streams.NOTIFY,
        subject=notify.EMAIL_FAILED,
        durable="linking-email-failed",
        schemas={notify.EMAIL_FAILED: notify.EmailFailed},
        handler=h.links.on_email_failed,
        title="email failed",
        description="An invitation email the receiving mail server rejected shows as bounced to staff "
        "(other failures change nothing).",
    )


def document_events(runtime: ServiceRuntime) -> None:
    """Every event linking emits (through its outbox), for its AsyncAPI document."""
    runtime.publishes(
        contract.CODES_REGENERATED,
        contract.CodesRegenerated,
        title="codes regenerated",
        description="Pupils got new printed codes; their earlier codes stopped working. Ids only.",
    )
    runtime.publishes(
        contract.SCHOOL_SETTINGS_CHANGED,
        contract.SchoolSettingsChanged,
        title="school settings changed",
        description="A school's settings changed; the event carries the effective values (link templates for overview).",
    )
    runtime.publishes_events(
        {
            contract.LINK_CREATED: contract.LinkCreated,
            contract.LINK_ACTIVATED: contract.LinkActivated,
            contract.LINK_REMOVED: contract.LinkRemoved,
        }
    )


class LinkingRuntime(ServiceRuntime):
    """A replica of linking, whose parts the sheet benchmark reaches as `runtime.linking` (it clears their QR cache)."""

    linking: Handlers

    async def _on_startup(self) -> None:
        # The keys first, before NATS: a replica with a missing, malformed or changed key must not
        # start at all, rather than refuse every code and lift every bar once it serves.
        try:
            await self.linking.ctx.load_keys()
        except codes.CodeKeyError as exc:
            log.error("code_key_refused", detail=str(exc))
            raise
        await super()._on_startup()


def build(settings: Settings | None = None) -> LinkingRuntime:
    """Wire one replica of the service: its parts, then its requests, consumers and events."""
    settings = settings or Settings()
    runtime = LinkingRuntime(
        settings,
        version=__version__,
        description=DESCRIPTION,
        streams=[streams.LINKING, streams.NOTIFY_REQUESTS, streams.PLATFORM, streams.IDENTITY, streams.NOTIFY],
    )
    ctx = LinkingContext(
        runtime,
        public_url=settings.public_url,
        platform_url=settings.platform_url,
        key_provider=settings.code_keys,
        limits=settings.limits(),
    )
    guessing = Guessing(ctx)
    bars = Bars(ctx)
    links = Links(ctx, bars=bars, guessing=guessing)
    handlers = Handlers(
        ctx=ctx,
        guessing=guessing,
        bars=bars,
        links=links,
        printed=PrintedCodes(ctx, guessing=guessing),
        schools=Schools(ctx, links=links),
    )

    serve_requests(runtime, handlers)
    consume_events(runtime, handlers)
    document_events(runtime)
    retention.install(runtime, LinkingRetention(settings).purge)
    runtime.linking = handlers
    return runtime
