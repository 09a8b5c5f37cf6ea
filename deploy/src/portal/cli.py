"""The `portal` command: run, migrate and look after the Parent Portal.

Each group of commands is a typer sub-app (`dead-letters` here; `roster` and `staff` slot in
the same way). Heavy imports (services, NATS client) happen inside the commands, so that
`portal service <name>` starts no slower than the service itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from portal.up import SERVICES

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js.client import JetStreamContext

    from contracts.identity import CreateStaffReply, StaffMember
    from contracts.kit.deadletters import DeadLetter
    from contracts.kit.rpc import RpcError
    from contracts.linking import AlertsReply

PARTS = (*SERVICES, "gateway")
T = TypeVar("T")

app = typer.Typer(
    name="portal",
    help="Run and look after the Parent Portal. Settings come from PORTAL_* environment variables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_letters_app = typer.Typer(
    help="Messages a consumer gave up on: list them, replay one to its original subject.",
    no_args_is_help=True,
)
app.add_typer(dead_letters_app, name="dead-letters")
staff_app = typer.Typer(help="Staff accounts (most come from the platform's roster).", no_args_is_help=True)
app.add_typer(staff_app, name="staff")
from portal.roster import roster_app  # noqa: E402 - its commands import this module's helpers when run

app.add_typer(roster_app, name="roster")
from portal.parents import parent_app  # noqa: E402 - its command imports this module's helpers when run

app.add_typer(parent_app, name="parent")

from portal.retention import retention_app  # noqa: E402 - its command imports this module's helpers when run

app.add_typer(retention_app, name="retention")
from portal.digest import digest_app  # noqa: E402 - its command imports this module's helpers when run

app.add_typer(digest_app, name="digest")
from portal.natsconfig import nats_config, prepare  # noqa: E402 - its command imports the contracts when run

app.command("nats-config")(nats_config)
app.command("prepare", hidden=True)(prepare)

from portal.linking_keys import linking_keys_app  # noqa: E402 - its commands import this module's helpers when run

app.add_typer(linking_keys_app, name="linking")
from portal.status import status as status_command  # noqa: E402 - it imports this module's helpers when run

app.command("status")(status_command)


def fail(message: str, code: int) -> NoReturn:
    """Print `portal: <message>` on stderr and exit with `code`."""
    typer.echo(f"portal: {message}", err=True)
    raise typer.Exit(code)


def service_module(name: str) -> ModuleType:
    """The `app` module of a service: `NAME`, `MIGRATIONS`, `Settings`, `build`."""
    return importlib.import_module(f"{name}.app")


@app.command()
def up(demo: bool = typer.Option(False, "--demo", help="Seed a demo trust and print how to log in.")) -> None:
    """Run the whole system on this machine until Ctrl-C: NATS, every service, the gateway, a mail sink."""
    from portal.up import run_up

    raise typer.Exit(run_up(demo=demo))


@app.command()
def migrate() -> None:
    """Bring every service's database to the current schema."""
    from contracts.kit.service import migrate as migrate_service

    for name in SERVICES:
        module = service_module(name)
        try:
            migrate_service(module)
        except Exception as exc:  # noqa: BLE001 - one line for the operator, not a traceback
            fail(f"migrating the {name} database failed: {type(exc).__name__}: {exc}", 1)
        typer.echo(f"{name}: database schema is current")


@app.command()
def service(
    name: str = typer.Argument(..., metavar="NAME", help=f"One of: {', '.join(PARTS)}."),
    no_migrate: bool = typer.Option(False, "--no-migrate", help="Do not bring the database schema up to date first."),
) -> None:
    """Run one replica of one part in the foreground, as a deployment runs it."""
    if name not in PARTS:
        fail(f"unknown part {name!r}: choose one of {', '.join(PARTS)}", 2)
    try:
        from setproctitle import setproctitle

        setproctitle(f"portal service {name}")
    except ImportError:
        pass  # the command line already reads `portal service <name>`
    if name == "gateway":
        try:
            from gateway.__main__ import serve as serve_gateway
        except ImportError as exc:
            fail(f"the gateway is not installed in this environment ({exc})", 1)
        serve_gateway()
        return
    from contracts.kit.logs import configure_logging
    from contracts.kit.service import serve
    from contracts.kit.settings import CommonSettings

    common = CommonSettings()
    # Before the settings checks: what they log (a development key made) is a JSON line as well.
    configure_logging(service=name, level=common.log_level, fmt=common.log_format)
    module = service_module(name)
    # Settings a part refuses to start with: one line naming the setting, exit 2, before migrating.
    refusals: tuple[type[Exception], ...] = getattr(module, "REFUSALS", ())
    try:
        if check := getattr(module, "check_settings", None):
            check()
        serve(module, run_migrations=not no_migrate)
    except refusals as exc:
        fail(str(exc), 2)


@app.command("mail-sink", hidden=True)
def mail_sink(
    port: int = typer.Option(..., "--port", help="Port on 127.0.0.1."),
    maildir: Path = typer.Option(..., "--maildir", help="Maildir to store messages in."),
) -> None:
    """Run the local SMTP mail sink (started by `portal up`)."""
    from contracts.kit.settings import CommonSettings
    from portal.mailsink import serve

    settings = CommonSettings()
    serve(port, maildir, level=settings.log_level, fmt=settings.log_format)


def _nats_url() -> str:
    """The portal's NATS URL, or a one-line error (exit 2) when there is none."""
    from contracts.kit.settings import CommonSettings, NatsNotFound

    try:
        return CommonSettings().resolve_nats_url()
    except NatsNotFound as exc:
        fail(str(exc), 2)


def _nats_options() -> dict[str, Any]:
    """How the `portal` command connects: as the `operator` user with PORTAL_NATS_CREDS_DIR, TLS
    with PORTAL_NATS_CA/CERT/KEY; a one-line error (exit 2) when a file is missing."""
    from contracts.kit.settings import CommonSettings, NatsCredentialsMissing

    try:
        return CommonSettings().nats_connect_options("operator")
    except NatsCredentialsMissing as exc:
        fail(str(exc), 2)


def _run_with_jetstream(url: str, action: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Run `action(js)` against the NATS at `url`; a one-line error (exit 2) when unreachable."""
    return _run_with_nats(url, lambda nc: action(nc.jetstream()))


def _run_with_nats(url: str, action: Callable[[NatsClient], Awaitable[T]]) -> T:
    """Run `action(nc)` against the NATS at `url`; a one-line error (exit 2) when unreachable."""
    from contracts.kit.settings import NatsUrlInvalid, nats_servers
    from portal.up import redact_url

    options = _nats_options()
    try:
        servers = nats_servers(url)
    except NatsUrlInvalid as exc:
        fail(str(exc), 2)

    async def run() -> T:
        import nats
        import nats.errors

        from contracts.kit.permissions import permission_refusal

        first_error: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        unreachable = 0

        async def on_error(exc: Exception) -> None:
            nonlocal unreachable
            refusal = permission_refusal(exc)
            if refusal is not None:
                # The operator's user lacks this: say which subject, since the command would
                # otherwise only time out.
                typer.echo(f"portal: NATS refused the operator user: {refusal}", err=True)
            elif isinstance(exc, OSError | asyncio.TimeoutError):
                # One server of a cluster away: nats-py tries the next; give up once each was tried.
                unreachable += 1
                if unreachable < len(servers):
                    return
            if not first_error.done():
                first_error.set_result(exc)

        # nats-py keeps retrying a refused first connection even with reconnects off: give up
        # once every server failed (or one refused the user) instead, as an operator's command should.
        connecting = asyncio.ensure_future(
            nats.connect(
                servers,
                connect_timeout=2,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=on_error,
                **options,
            )
        )
        racing: set[asyncio.Future[Any]] = {connecting, first_error}
        done, _ = await asyncio.wait(racing, timeout=5 + 2 * len(servers), return_when=asyncio.FIRST_COMPLETED)
        if connecting not in done or connecting.exception() is not None:
            connecting.cancel()
            cause = (
                first_error.result()
                if first_error.done()
                else (connecting.exception() if connecting.done() and not connecting.cancelled() else TimeoutError())
            )
            if isinstance(cause, nats.errors.AuthorizationError) or "Authorization Violation" in str(cause):
                fail(
                    f"NATS at {redact_url(url)} refused the connection: it needs credentials "
                    "(PORTAL_NATS_CREDS_DIR, the directory `portal nats-config` wrote)",
                    2,
                )
            fail(f"cannot reach NATS at {redact_url(url)} ({type(cause).__name__}); is `portal up` running?", 2)
        nc = connecting.result()
        try:
            return await action(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


def _cell(value: object, width: int | None = None) -> str:
    text = " ".join(str(value).split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


@dead_letters_app.command("list")
def dead_letters_list() -> None:
    """List every dead letter still kept, oldest first."""
    url = _nats_url()
    from contracts.kit.deadletters import list_dead_letters

    letters = _run_with_jetstream(url, list_dead_letters)
    if not letters:
        typer.echo("no dead letters")
        return
    header = ("id", "service", "consumer", "subject", "deliveries", "error", "at")
    rows = [(str(d.id), d.service, d.consumer, d.subject, d.deliveries, _cell(d.error, 60), d.at) for d in letters]
    widths = [max(len(_cell(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(_cell(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@dead_letters_app.command("replay")
def dead_letters_replay(dead_letter_id: int = typer.Argument(..., metavar="ID", help="The id `list` shows.")) -> None:
    """Publish a dead letter again on its original subject, then remove it."""
    url = _nats_url()
    from contracts.kit.deadletters import DeadLetterNotFound, DeadLetterRedacted, replay_dead_letter

    async def replay(js: JetStreamContext) -> DeadLetter | None | str:
        try:
            return await replay_dead_letter(js, dead_letter_id)
        except DeadLetterNotFound:
            return None
        except DeadLetterRedacted:
            return "redacted"

    dl = _run_with_jetstream(url, replay)
    if dl == "redacted":
        fail(
            f"dead letter {dead_letter_id} keeps only the ids of an email request (never its link, code or "
            "address), so it cannot be sent again: ask for the email again (e.g. resend the invitation)",
            1,
        )
    if dl is None or isinstance(dl, str):
        fail(f"no dead letter with id {dead_letter_id} (see `portal dead-letters list`)", 1)
    typer.echo(f"replayed dead letter {dl.id} to {dl.subject} (consumer {dl.consumer} of {dl.service})")


@staff_app.command("add")
def staff_add(
    email: str = typer.Option(..., "--email", help="The member of staff's email address (their login)."),
    name: str = typer.Option(..., "--name", help="Their name as parents and colleagues see it."),
    role: str = typer.Option(..., "--role", help="teacher, school_admin or trust_admin."),
    school: str | None = typer.Option(None, "--school", help="SCHOOL_ID (teacher, school_admin)."),
    trust: str | None = typer.Option(None, "--trust", help="TRUST_ID (trust_admin)."),
    password_stdin: bool = typer.Option(
        False,
        "--password-stdin",
        help="Read the password from standard input; without it they get a set-password email.",
    ),
) -> None:
    """Create (or update) one member of staff."""
    import sys

    roles = ("teacher", "school_admin", "trust_admin")
    if role not in roles:
        fail(f"--role must be one of {', '.join(roles)}", 2)
    if role == "trust_admin" and not trust:
        fail("a trust_admin needs --trust TRUST_ID", 2)
    if role != "trust_admin" and not school:
        fail(f"a {role} needs --school SCHOOL_ID", 2)
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("no password on standard input", 2)
    url = _nats_url()
    from contracts import identity as c
    from contracts.kit import rpc

    request = c.CreateStaffRequest(
        email=email,
        name=name,
        role=role,
        school_id=None if role == "trust_admin" else school,
        trust_id=trust if role == "trust_admin" else None,
        password=password,
    )

    async def create(nc: NatsClient) -> CreateStaffReply | RpcError:
        try:
            return await rpc.call(nc, c.CREATE_STAFF, request, timeout=10)
        except rpc.RpcError as exc:
            return exc

    reply = _run_with_nats(url, create)
    if isinstance(reply, rpc.RpcError):
        # The command's input was refused (exit 2, a usage error); anything else is the system's (1).
        refused = ("validation_error", "weak_password", "password_too_long", "invalid_name", "conflict")
        code = 2 if reply.code in refused else 1
        fail(f"{reply.detail}", code)
    where = f"trust {trust}" if role == "trust_admin" else f"school {school}"
    verb = "created" if reply.created else "updated"
    how = "" if password else "; a set-password email is on its way"
    typer.echo(f"{verb} {role} {email} at {where} (account {reply.account_id}){how}")
    if reply.disabled:
        typer.echo(f"{email} stays disabled: `portal staff enable --email {email}` lets them sign in again")


# How long `portal staff disable` waits for identity's revocation event: the outbox relays it
# within a fraction of a second, so a longer wait means identity's relay is stuck.
REVOCATION_WAIT_SECONDS = 5.0


def _set_staff_access(email: str, disabled: bool) -> None:
    """Disable or enable one member of staff; disabling returns once every gateway replica was
    sent the event that ends their sessions."""
    url = _nats_url()
    from contracts import identity as c
    from contracts.kit import rpc

    async def change(nc: NatsClient) -> tuple[StaffMember, bool] | RpcError:
        revoked: set[str] = set()
        heard = asyncio.Event()

        async def on_revoked(msg: Any) -> None:
            try:
                event = c.SessionRevoked.model_validate_json(msg.data)
            except ValueError:
                return
            if event.all_sessions:
                revoked.add(event.account_id)
                heard.set()

        # Subscribed before asking, since the event may overtake the reply. Gateways hear it on
        # the same core subject at the same moment: once it is here, every replica was sent it.
        sub = await nc.subscribe(c.SESSION_REVOKED, cb=on_revoked)
        await nc.flush()
        try:
            try:
                member = await rpc.call(
                    nc, c.SET_STAFF_ACCESS, c.StaffAccessRequest(email=email, disabled=disabled), timeout=10
                )
            except rpc.RpcError as exc:
                return exc
            deadline = asyncio.get_running_loop().time() + REVOCATION_WAIT_SECONDS
            while disabled and member.account_id not in revoked:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return member, False
                heard.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(heard.wait(), left)
            return member, True
        finally:
            await sub.unsubscribe()

    reply = _run_with_nats(url, change)
    if isinstance(reply, rpc.RpcError):
        fail(reply.detail, 2 if reply.code in ("validation_error", "not_found", "invalid_request") else 1)
    member, heard = reply
    if not disabled:
        typer.echo(
            f"enabled {member.role} {member.email} (account {member.account_id}): their old password works again"
        )
        return
    if not heard:
        fail(
            f"disabled {member.email} (account {member.account_id}), but identity's event ending their sessions "
            f"did not come within {REVOCATION_WAIT_SECONDS:g} s: gateways may let their sessions work until "
            "PORTAL_SESSION_CACHE_SECONDS pass; check identity's outbox",
            1,
        )
    typer.echo(
        f"disabled {member.role} {member.email} (account {member.account_id}): their sessions have ended and "
        "they cannot sign in"
    )


@staff_app.command("disable")
def staff_disable(
    email: str = typer.Option(..., "--email", help="The member of staff's email address (their login)."),
) -> None:
    """Disable one member of staff: every session of theirs ends on every gateway, and signing in
    fails as with a wrong password. Their password is kept for `portal staff enable`."""
    _set_staff_access(email, True)


@staff_app.command("enable")
def staff_enable(
    email: str = typer.Option(..., "--email", help="The member of staff's email address (their login)."),
) -> None:
    """Enable a disabled member of staff again: they sign in with their old password."""
    _set_staff_access(email, False)


@app.command()
def alerts(hours: int = typer.Option(24, "--hours", min=1, max=24 * 90, help="How far back to look.")) -> None:
    """List recent guessing alerts: failed link codes per minute above the threshold."""
    url = _nats_url()
    from contracts import linking as c
    from contracts.kit import rpc

    async def ask(nc: NatsClient) -> AlertsReply | str:
        try:
            return await rpc.call(nc, c.ALERTS, c.AlertsRequest(hours=hours), timeout=10)
        except (rpc.RpcUnavailable, rpc.RpcTimeout):
            return "linking did not answer; is it running?"
        except rpc.RpcError as exc:
            return exc.detail

    reply = _run_with_nats(url, ask)
    if isinstance(reply, str):
        fail(reply, 1)
    if not reply.alerts:
        typer.echo("no alerts")
        return
    header = ("at", "scope", "trust", "failures/min", "threshold", "last seen")
    rows = [
        (
            a.at.isoformat(timespec="seconds"),
            a.scope,
            a.trust_id or "-",
            a.failures,
            a.threshold,
            a.last_at.isoformat(timespec="seconds"),
        )
        for a in reply.alerts
    ]
    widths = [max(len(_cell(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        typer.echo("  ".join(_cell(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
