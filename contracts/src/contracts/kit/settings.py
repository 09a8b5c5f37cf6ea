"""Settings common to every part, read from `PORTAL_*` environment variables."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsNotFound(RuntimeError):
    """No NATS URL is configured and no `portal up` has written one."""


class NatsUrlInvalid(NatsNotFound):
    """PORTAL_NATS_URL is not one NATS URL or a comma-separated list of them."""


# What nats-py connects with; it refuses to mix the websocket schemes with the others.
_NATS_SCHEMES = {"nats": "tcp", "tls": "tcp", "ws": "ws", "wss": "ws"}


def nats_servers(url: str) -> list[str]:
    """The servers `url` names: one NATS URL, or several servers of one cluster separated by
    commas (`nats://a:4222,nats://b:4222,nats://c:4222`), as nats-py takes them (a list).

    nats-py connects to whichever of them answers and moves to another when it goes; given the
    comma-separated text as one URL it fails ("invalid connect url option"). A bad server is
    named by its position, never quoted: a URL may hold a password.
    """
    servers = [part.strip() for part in url.split(",")]
    kinds = set()
    for n, server in enumerate(servers, start=1):
        where = f"PORTAL_NATS_URL: server {n} of {len(servers)}"
        if not server:
            raise NatsUrlInvalid(f"{where} is empty (servers are separated by single commas)")
        try:
            parts = urlsplit(server if "://" in server else f"nats://{server}")
            port = parts.port
        except ValueError as exc:
            raise NatsUrlInvalid(f"{where} is not a URL (nats://host:port): {type(exc).__name__}") from None
        if parts.scheme not in _NATS_SCHEMES:
            raise NatsUrlInvalid(f"{where} has the scheme {parts.scheme!r}: nats://, tls://, ws:// or wss:// only")
        if not parts.hostname:
            raise NatsUrlInvalid(f"{where} names no host (nats://host:port)")
        if parts.path not in ("", "/") or parts.query or parts.fragment or port == 0:
            raise NatsUrlInvalid(f"{where} is not a server address (nats://host:port, nothing after the port)")
        kinds.add(_NATS_SCHEMES[parts.scheme])
    if len(kinds) > 1:
        raise NatsUrlInvalid(
            "PORTAL_NATS_URL mixes websocket (ws://, wss://) and other servers: nats-py takes one kind"
        )
    return servers


class NatsCredentialsMissing(RuntimeError):
    """PORTAL_NATS_CREDS_DIR is set but holds no seed for this part, or a TLS file is missing."""


class CommonSettings(BaseSettings):
    """What every service and the gateway need to find each other."""

    model_config = SettingsConfigDict(env_prefix="PORTAL_", extra="ignore")

    nats_url: str | None = Field(
        default=None,
        description="An external NATS with JetStream: one URL, or the servers of one NATS cluster separated by "
        "commas (`nats://a:4222,nats://b:4222,nats://c:4222`; a part connects to whichever answers and moves to "
        "another when it goes). Unset: the URL `portal up` wrote to DATA_DIR/nats.url.",
    )
    data_dir: Path = Field(
        default=Path("./var"), description="Where SQLite files, the embedded NATS and the mail sink keep data."
    )
    nats_creds_dir: Path | None = Field(
        default=None,
        description="A directory as `portal nats-config` writes it: each part connects to NATS as its own user "
        "with `<part>.nk` (the `portal` command as `operator`). Unset: DATA_DIR/nats when `portal up` wrote seeds "
        "there and PORTAL_NATS_URL is unset, else no credentials (a NATS that needs none).",
    )
    nats_ca: Path | None = Field(
        default=None, description="A PEM file of the CA certificates to check NATS's against (TLS to NATS)."
    )
    nats_cert: Path | None = Field(
        default=None, description="A PEM client certificate to present to NATS (with PORTAL_NATS_KEY)."
    )
    nats_key: Path | None = Field(default=None, description="The PEM private key of PORTAL_NATS_CERT.")
    log_level: str = Field(default="INFO", description="Python log level name.")
    log_format: str = Field(default="json", description="`json` (one object a line) or `console`.")
    stream_replicas: int = Field(
        default=1, ge=1, le=5, description="JetStream replicas per stream (3 on a NATS cluster)."
    )
    stream_max_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Bytes each JetStream stream keeps at most (its oldest messages go first beyond that, as "
        "beyond its age); unset: each stream's own limit (the events reference lists them). Applied to existing "
        "streams at start-up.",
    )
    http_port: int = Field(default=8000, ge=1, le=65535, description="The gateway's HTTP port (PORTAL_HTTP_PORT).")
    public_url: str = Field(
        default="",
        description="The base of links in emails and QR codes (PORTAL_PUBLIC_URL); "
        "`http://127.0.0.1:<http_port>` when unset.",
    )
    platform_url: str = Field(
        default="",
        description="The learning platform overview links point into (PORTAL_PLATFORM_URL); "
        "the demo stand-in at `<public_url>/platform` when unset.",
    )

    @model_validator(mode="after")
    def _derive_urls(self) -> CommonSettings:
        # Links are joined as f"{public_url}/verify?…": a trailing slash would double it.
        self.public_url = (self.public_url or f"http://127.0.0.1:{self.http_port}").rstrip("/")
        self.platform_url = (self.platform_url or f"{self.public_url}/platform").rstrip("/")
        return self

    def resolve_nats_url(self) -> str:
        """The NATS URL to use (one server, or several comma-separated): the setting, else the one
        `portal up` wrote. Raises `NatsUrlInvalid` (a `NatsNotFound`) when it is malformed."""
        if self.nats_url:
            url = self.nats_url
        else:
            path = self.data_dir / "nats.url"
            try:
                url = path.read_text().strip()
            except FileNotFoundError:
                url = ""
            if not url:
                raise NatsNotFound(
                    f"No NATS to connect to: set PORTAL_NATS_URL, or start `portal up` (it writes {path})."
                )
        nats_servers(url)
        return url

    def resolve_nats_servers(self) -> list[str]:
        """The NATS servers to connect to, as nats-py and FastStream take them (see `nats_servers`)."""
        return nats_servers(self.resolve_nats_url())

    def nats_tls(self) -> ssl.SSLContext | None:
        """TLS to NATS when a CA or a client certificate is set (else the URL decides: tls:// uses the system's CAs)."""
        if self.nats_ca is None and self.nats_cert is None:
            return None
        for name, path in (
            ("PORTAL_NATS_CA", self.nats_ca),
            ("PORTAL_NATS_CERT", self.nats_cert),
            ("PORTAL_NATS_KEY", self.nats_key),
        ):
            if path is not None and not path.is_file():
                raise NatsCredentialsMissing(f"{name}: no file at {path}")
        if (self.nats_cert is None) != (self.nats_key is None):
            raise NatsCredentialsMissing("PORTAL_NATS_CERT and PORTAL_NATS_KEY go together: set both or neither")
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.nats_ca) if self.nats_ca else None)
        if self.nats_cert is not None and self.nats_key is not None:
            ctx.load_cert_chain(str(self.nats_cert), str(self.nats_key))
        return ctx

    def nats_seed(self, part: str) -> str | None:
        """`part`'s nkey seed from PORTAL_NATS_CREDS_DIR, read once (None without the setting)."""
        creds_dir = self.nats_creds_dir
        if creds_dir is None and self.nats_url is None:
            # Like the URL: what `portal up` wrote for its embedded NATS, when it did.
            embedded = self.data_dir / "nats"
            creds_dir = embedded if (embedded / f"{part}.nk").is_file() else None
        if creds_dir is None:
            return None
        path = creds_dir / f"{part}.nk"
        try:
            seed = path.read_text().strip()
        except OSError as exc:
            raise NatsCredentialsMissing(
                f"PORTAL_NATS_CREDS_DIR: cannot read {part}'s seed {path} ({type(exc).__name__}); "
                "`portal nats-config --out DIR` writes one per part"
            ) from exc
        if not seed.startswith("SU"):
            raise NatsCredentialsMissing(f"PORTAL_NATS_CREDS_DIR: {path} is not a user nkey seed")
        return seed

    def nats_connect_options(self, part: str) -> dict[str, Any]:
        """nats-py `connect` options for `part`: its user and inbox, and TLS (nothing without the settings).

        The seed is read here, once: a replica keeps reconnecting with it even if the file goes away.
        """
        options: dict[str, Any] = {}
        seed = self.nats_seed(part)
        if seed is not None:
            from contracts.kit.permissions import inbox_prefix

            options["nkeys_seed_str"] = seed
            options["inbox_prefix"] = inbox_prefix(part)
        tls = self.nats_tls()
        if tls is not None:
            options["tls"] = tls
        return options


def sqlite_url(data_dir: Path, name: str) -> str:
    """The default database of a service: a SQLite file in the data directory."""
    return f"sqlite+aiosqlite:///{(data_dir / f'{name}.db').resolve()}"


def normalise_database_url(url: str) -> str:
    """Accept the URLs operators commonly write and pick the async driver for them."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite:///"):
        url = "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def database_url_field(service: str) -> Any:
    """The `database_url` field of a service, read from `PORTAL_<SERVICE>_DATABASE_URL`."""
    return Field(
        default=None,
        validation_alias=f"PORTAL_{service.upper()}_DATABASE_URL",
        description=f"The {service} database; a SQLite file in the data directory when unset.",
    )


def ops_port_field() -> Any:
    """`PORTAL_OPS_PORT`: where a part serves /livez, /readyz and /metrics (see `contracts.kit.ops`)."""
    return Field(
        default=None,
        ge=1,
        le=65535,
        description="The port of /livez, /readyz and /metrics (Prometheus); unset: none of them is served. The "
        "gateway's is apart from its public PORTAL_HTTP_PORT. `portal up` gives each part a free one.",
    )


def ops_host_field() -> Any:
    """`PORTAL_OPS_HOST`: the address the ops port listens on."""
    return Field(
        default="127.0.0.1",
        description="The address the ops port listens on: this machine only by default, as the metrics say how "
        "the portal is used; `0.0.0.0` in a container, for the probes and Prometheus of its cluster.",
    )


class ServiceSettings(CommonSettings):
    """Settings of one service; subclasses set `service_name` and declare `database_url`
    with `database_url_field(name)`, then add their own fields."""

    model_config = SettingsConfigDict(env_prefix="PORTAL_", extra="ignore", populate_by_name=True)

    service_name: ClassVar[str] = "service"
    database_url: str | None = None
    instance_id: str | None = Field(
        default=None, description="A name for this replica in logs; a random one by default."
    )
    ops_port: int | None = ops_port_field()
    ops_host: str = ops_host_field()
    db_pool_size: int = Field(
        default=10,
        ge=1,
        le=200,
        description="PostgreSQL connections one process of this part holds at most (PORTAL_DB_POOL_SIZE); work "
        "beyond that waits its turn. Every part's replicas together hold up to parts × replicas × this, which must "
        "stay under PostgreSQL's max_connections (100 unless configured). Ignored for SQLite.",
    )
    retention_email_days: float = Field(
        default=30,
        ge=0,
        description="notify keeps the record of an email (kind, status, times, recipient; never its content) "
        "this many days after it was delivered or given up.",
    )
    retention_session_days: float = Field(
        default=30,
        ge=0,
        description="identity keeps a session this many days after it ended (expired, logged out), and a used "
        "or expired verification or reset token as long.",
    )
    retention_event_days: float = Field(
        default=100,
        ge=0,
        description="Every service keeps the record that it applied an event this many days: longer than any "
        "stream keeps an event (90 days), so a replayed event is still recognised.",
    )
    retention_leaver_days: float = Field(
        default=30,
        ge=0,
        description="A pupil who left loses every link at once; this many days later linking erases their roster "
        "copy (name, classes, codes, invitations) and overview their homework, messages and stars.",
    )

    def resolved_database_url(self) -> str:
        """This service's database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return sqlite_url(self.data_dir, self.service_name)
