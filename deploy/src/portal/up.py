"""`portal up`: the whole system on one machine, each part a supervised process of its own."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from portal.console import Console, log_path, start_afresh, tail
from portal.natsconfig import CONFIG_NAME
from portal.natsserver import NatsServer, free_port
from portal.supervisor import Child, ChildSpec, Supervisor

if TYPE_CHECKING:
    from portal.settings import PortalSettings

SERVICES = ("identity", "linking", "notify", "overview")
# Each runs as `portal service NAME` with an ops port of its own.
PARTS = (*SERVICES, "gateway")
# The ops ports of `portal up` are this machine's only.
OPS_HOST = "127.0.0.1"

# Stop order: the gateway first (no new requests), then the services, then what they use.
_STOP_GATEWAY, _STOP_SERVICE, _STOP_INFRA = 2, 1, 0


def portal_command() -> list[str]:
    """How to run this same `portal` command in a child, so `ps` shows `portal service <name>`."""
    script = Path(sys.executable).parent / "portal"
    if script.exists():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "portal"]


def process_age() -> float:
    """Seconds since this process started (the kernel's clock, so interpreter start-up counts)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - started)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return time.monotonic() - _IMPORTED_AT


_IMPORTED_AT = time.monotonic()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:  # noqa: S310 - our own loopback URL
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# The exit status of `portal service` when a part refuses its settings.
REFUSED = 2


class _Signals:
    """Counts SIGINT/SIGTERM/SIGHUP: the first asks for a clean stop, a second to hurry."""

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.count += 1

    @property
    def stop(self) -> bool:
        return self.count > 0

    @property
    def hurry(self) -> bool:
        return self.count > 1


class _StartupFailed(Exception):
    pass


def _wait_for_port(sup: Supervisor, child: Child, port: int, signals: _Signals, *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not signals.stop:
        if _listening(port):
            return
        sup.poll()
        if time.monotonic() > deadline:
            raise _StartupFailed(f"{child.name} did not listen on 127.0.0.1:{port} within {timeout:g}s")
        time.sleep(0.05)


def run_up(*, demo: bool = False, seed_demo: Callable[[PortalSettings], list[str]] | None = None) -> int:  # noqa: C901 - the start-up reads best in order
    """Run everything until Ctrl-C or SIGTERM; the exit code."""
    signals = _Signals()
    signals.install()
    from pydantic import ValidationError

    from portal.settings import PortalSettings

    try:
        settings = PortalSettings()
    except ValidationError as exc:
        problems = "; ".join(f"PORTAL_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        print(f"portal: invalid setting: {problems}", file=sys.stderr, flush=True)
        return 2
    if settings.nats_url:
        from contracts.kit.settings import NatsUrlInvalid, nats_servers

        try:
            nats_servers(settings.nats_url)
        except NatsUrlInvalid as exc:
            print(f"portal: invalid setting: {exc}", file=sys.stderr, flush=True)
            return 2
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"data_dir": data_dir})

    def out(line: str = "") -> None:
        print(line, flush=True)

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if _listening(settings.http_port):
        err(f"portal: port {settings.http_port} is already in use; set PORTAL_HTTP_PORT to a free port")
        return 1

    sup = Supervisor(say=err)
    portal = portal_command()
    env = dict(os.environ)
    env["PORTAL_DATA_DIR"] = str(data_dir)
    # The files under DATA_DIR/logs hold what a deployment's collector gets: JSON lines.
    env["PORTAL_LOG_FORMAT"] = "json"
    # In a terminal a person reads the console: warnings and errors only (portal.console).
    console = Console(calm=sys.stdout.isatty(), write=err)

    def logged(name: str, *, plain: bool = True) -> Path:
        path = log_path(data_dir, name)
        start_afresh(path)
        console.follow(name, path, plain=plain)
        return path

    console.start()

    try:
        # Migrations, NATS and the mail sink start together; each is independent of the others.
        migrate: Child | None = None
        # Its plain lines are progress: shown only if it fails.
        migrate_log = logged("migrate", plain=False)
        if settings.nats_url:
            migrate = sup.spawn(ChildSpec("migrate", [*portal, "migrate"], env, restart=False, log_file=migrate_log))

        # The gateway binds its port only once it starts: the ports picked here must not be it.
        taken = {settings.http_port}
        nats: NatsServer | None = None
        nats_child: Child | None = None
        nats_config: Child | None = None
        if settings.nats_url:
            nats_url = settings.nats_url
        else:
            nats_dir = data_dir / "nats"
            nats = NatsServer(
                port=free_port(besides=taken),
                store_dir=nats_dir,
                log_file=data_dir / "nats.log",
                config=nats_dir / CONFIG_NAME,
            )
            taken.add(nats.port)
            nats.store_dir.mkdir(parents=True, exist_ok=True)
            # Written again at every start (the permissions follow the code); the seeds are kept.
            # In the migrations' process: most of either is importing every service.
            nats_config = migrate = sup.spawn(
                ChildSpec(
                    "migrate",
                    [*portal, "prepare", "--nats-out", str(nats_dir), "--port", str(nats.port)],
                    env,
                    restart=False,
                    log_file=migrate_log,
                )
            )
            env["PORTAL_NATS_CREDS_DIR"] = str(nats_dir)
            nats_url = nats.url

        smtp_url = settings.smtp_url
        maildir = data_dir / "mail"
        sink_port: int | None = None
        sink_child: Child | None = None
        if not smtp_url:
            sink_port = free_port(besides=taken)
            sink_child = sup.spawn(
                ChildSpec(
                    "mail-sink",
                    [*portal, "mail-sink", "--port", str(sink_port), "--maildir", str(maildir)],
                    env,
                    stop_order=_STOP_INFRA,
                    log_file=logged("mail-sink"),
                )
            )
            smtp_url = f"smtp://127.0.0.1:{sink_port}"

        if nats is not None and nats_config is not None:
            code = sup.wait(nats_config, interrupted=lambda: signals.stop)
            if signals.stop:
                raise _StartupFailed("")
            if code != 0:
                raise _StartupFailed(
                    _failed("writing the NATS configuration or the database migrations", migrate_log, console.calm)
                )
            nats_child = sup.spawn(
                ChildSpec("nats-server", nats.command(), env, stop_order=_STOP_INFRA, log_file=logged("nats-server"))
            )
            _wait_for_port(sup, nats_child, nats.port, signals)
        (data_dir / "nats.url").write_text(nats_url + "\n")
        env["PORTAL_NATS_URL"] = nats_url
        if sink_child is not None and sink_port is not None:
            _wait_for_port(sup, sink_child, sink_port, signals)

        assert migrate is not None
        code = sup.wait(migrate, interrupted=lambda: signals.stop)
        if signals.stop:
            raise _StartupFailed("")
        if code != 0:
            raise _StartupFailed(_failed("the database migrations", migrate_log, console.calm))

        ops_ports: dict[str, int] = {}
        for name in PARTS:
            ops_ports[name] = free_port(besides=taken)
            taken.add(ops_ports[name])
        for name in SERVICES:
            child_env = _ops_env(env, ops_ports[name])
            if name == "notify":
                child_env["PORTAL_SMTP_URL"] = smtp_url
            # Migrated once above: each service need not check its schema again while starting.
            sup.spawn(
                ChildSpec(
                    name,
                    [*portal, "service", name, "--no-migrate"],
                    child_env,
                    stop_order=_STOP_SERVICE,
                    log_file=logged(name),
                )
            )
        gateway_env = _ops_env(env, ops_ports["gateway"])
        if sink_child is not None:
            gateway_env["PORTAL_DEV_MAIL_DIR"] = str(maildir)
        sup.spawn(
            ChildSpec(
                "gateway",
                [*portal, "service", "gateway"],
                gateway_env,
                stop_order=_STOP_GATEWAY,
                log_file=logged("gateway"),
            )
        )
    except _StartupFailed as exc:
        if str(exc):
            err(f"portal: {exc}")
        sup.stop_all(hurry=lambda: signals.hurry)
        console.stop()
        return 0 if signals.stop else 1

    gateway = settings.gateway_url
    out("Parent Portal is starting:")
    out(f"  gateway    {gateway}  (health {gateway}/health, readiness {gateway}/ready)")
    if settings.public_url != gateway:
        # Browsers must use the public address: a change sent from any other origin is refused.
        out(f"  open       {settings.public_url}  (PORTAL_PUBLIC_URL: sign in there, not at {gateway})")
    if nats is not None:
        out(f"  NATS       {nats_url}  (embedded, JetStream store {nats.store_dir}, log {data_dir / 'nats.log'})")
        out(f"             users and seeds in {nats.store_dir} (PORTAL_NATS_CREDS_DIR for `portal` commands)")
    else:
        out(f"  NATS       {redact_url(nats_url)}  (PORTAL_NATS_URL)")
    if sink_child is not None:
        out(f"  mail       local sink {smtp_url}, Maildir {maildir}; read it at {gateway}/dev/mail")
    else:
        out(f"  mail       sent to {redact_url(smtp_url)}  (PORTAL_SMTP_URL)")
    out(f"  data       {data_dir}  (NATS URL in {data_dir / 'nats.url'})")
    shown = "warnings and errors here" if console.calm else "and every line here"
    out(f"  logs       {data_dir / 'logs'}/<part>.log  (JSON; {shown})")
    parts = ", ".join(f"{c.name} {c.pid}" for c in sup.children if c.proc is not None)
    out(f"  processes  {parts}")
    # One line per part, as tools read them: /livez, /readyz and /metrics of each.
    for name in PARTS:
        out(f"{name} ops http://{OPS_HOST}:{ops_ports[name]}")
    out("Ctrl-C stops everything.")

    ready = False
    next_check = 0.0
    while not signals.stop:
        sup.poll()
        refused = [c for c in sup.children if c.returncode == REFUSED and c.restart_at is not None]
        if refused:
            # Exit 2 is a part refusing its settings (its message is above): starting it again
            # would only print the same refusal for ever.
            names = ", ".join(c.name for c in refused)
            err(f"portal: {names} refused to start with these settings (see above); stopping")
            sup.stop_all(hurry=lambda: signals.hurry)
            return REFUSED
        now = time.monotonic()
        if not ready and now >= next_check:
            next_check = now + 0.25
            if _http_ok(f"{gateway}/ready"):
                ready = True
                out(f"portal: ready after {process_age():.1f}s at {gateway}")
                if demo:
                    update: dict[str, object] = {"nats_url": nats_url}
                    if nats is not None:
                        update["nats_creds_dir"] = nats.store_dir
                    _seed(settings.model_copy(update=update), seed_demo, out, err)
        time.sleep(0.1)

    err("portal: stopping")
    sup.stop_all(hurry=lambda: signals.hurry)
    console.stop()
    err("portal: stopped")
    return 0


def _ops_env(env: dict[str, str], port: int) -> dict[str, str]:
    """A part's environment: `env` with its own ops port, on this machine only."""
    return {**env, "PORTAL_OPS_PORT": str(port), "PORTAL_OPS_HOST": OPS_HOST}


def _failed(what: str, log: Path, show: bool) -> str:
    """Why `portal up` stops: `what` failed, with the end of its log unless the console showed it."""
    lines = "\n".join(f"  {line}" for line in tail(log)) if show else ""
    return f"{what} failed (the end of {log}):\n{lines}" if lines else f"{what} failed (see {log})"


def _seed(
    settings: PortalSettings,
    seed_demo: Callable[[PortalSettings], list[str]] | None,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> None:
    if seed_demo is None:
        from portal.demo import seed_demo as demo_seed

        seed_demo = demo_seed
    try:
        lines = seed_demo(settings)
    except Exception as exc:  # noqa: BLE001 - the portal keeps running without demo data
        err(f"portal: seeding the demo data failed: {type(exc).__name__}: {exc}")
        return
    if not lines:
        out("portal: demo data is not available yet (it comes with the demo publisher); the portal runs empty")
        return
    for line in lines:
        out(line)


def redact_url(url: str) -> str:
    """A URL without its secret, fit for the terminal: the password (`user:***@host`), or a token
    alone before the `@` (`***@host`, as NATS takes one); each of a comma-separated list of
    them (PORTAL_NATS_URL naming the servers of a cluster). Read by hand rather than parsed, so
    that a URL a parser refuses is redacted as well."""
    if "," in url:
        return ",".join(redact_url(part.strip()) for part in url.split(","))
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" not in authority:
        return url
    userinfo, _, host = authority.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    secretless = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{secretless}@{host}{tail}"
