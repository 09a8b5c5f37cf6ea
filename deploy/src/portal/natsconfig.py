"""`portal nats-config`: a nats-server configuration with one nkey user per part, each allowed
only what it needs (see `contracts.kit.permissions`), and that user's seed beside it.

The permissions of a service come from its wired runtime (what it serves, the streams it makes
sure of, the consumers it pulls from), so a request, stream or consumer added to a service
reaches its permissions without anyone writing them down.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import typer

if TYPE_CHECKING:
    from contracts.kit.permissions import Needs

CONFIG_NAME = "nats-server.conf"
# The password the servers of one cluster present to each other on their routes (mode 0600).
ROUTE_SECRET_NAME = "cluster-route.secret"
ROUTE_USER = "route"
AUTHORIZATION_NAME = "authorization.conf"
AUTHORIZATION_HEADER = (
    "# Written by `portal nats-config`: the users of nats-server.conf alone, to include in a NATS\n"
    "# configuration made elsewhere (deploy/nats/values.yaml). Regenerate rather than edit.\n"
)


def service_needs(name: str) -> Needs:
    """A service's needs, read off a replica wired (not started) from settings that touch nothing."""
    from contracts.kit.permissions import runtime_needs
    from contracts.kit.service import ServiceDefinition
    from portal.cli import service_module

    module: ServiceDefinition = service_module(name)
    settings = module.Settings(
        nats_url="nats://127.0.0.1:4222", database_url="sqlite+aiosqlite:///:memory:", nats_creds_dir=None
    )
    return runtime_needs(module.build(settings))


def all_needs() -> dict[str, Needs]:
    """Every part's needs: the services' from their runtimes, the others' from the table."""
    from contracts.kit.permissions import PARTS, common_needs
    from contracts.rpc import SERVICES

    return {part: service_needs(part) if part in SERVICES else common_needs(part) for part in PARTS}


@dataclass
class Credentials:
    """The seeds of every part (kept in `<dir>/<part>.nk`) and their public keys."""

    seeds: dict[str, str]

    def public_key(self, part: str) -> str:
        import nkeys  # type: ignore[import-untyped]

        return str(nkeys.from_seed(bytearray(self.seeds[part].encode())).public_key.decode())


def load_or_create_seeds(out: Path) -> Credentials:
    """Each part's seed from `out/<part>.nk`, making (mode 0600) the ones missing."""
    import nkeys

    from contracts.kit.permissions import PARTS

    out.mkdir(parents=True, exist_ok=True)
    seeds = {}
    for part in PARTS:
        path = out / f"{part}.nk"
        if path.exists():
            seeds[part] = path.read_text().strip()
            continue
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
        # Created 0600 from the start: never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(seed + "\n")
        seeds[part] = seed
    return Credentials(seeds)


class ClusterOptionInvalid(ValueError):
    """A `--routes` URL or another cluster option that nats-server could not use."""


@dataclass(frozen=True)
class ClusterOptions:
    """This server's place in a NATS cluster: the cluster's name, the port its routes listen on,
    and every server's route URL (this one's too: nats-server skips itself)."""

    name: str
    port: int
    routes: tuple[str, ...]
    host: str = "127.0.0.1"
    server_name: str = ""

    @classmethod
    def parse(
        cls, *, name: str, port: int, routes: str | Sequence[str], host: str, server_name: str = ""
    ) -> ClusterOptions:
        """From the command line's options; raises `ClusterOptionInvalid` naming what is wrong."""
        if not name or any(c.isspace() or c in "\"'{}" for c in name):
            raise ClusterOptionInvalid(f"--cluster-name {name!r}: a name without spaces or quotes")
        if not 1 <= port <= 65535:
            raise ClusterOptionInvalid(f"--cluster-port {port}: a port from 1 to 65535")
        listed = [r.strip() for r in routes.split(",")] if isinstance(routes, str) else [r.strip() for r in routes]
        if not listed or not all(listed):
            raise ClusterOptionInvalid("--routes: every server's route URL, comma-separated (nats-route://HOST:PORT)")
        for n, route in enumerate(listed, start=1):
            try:
                parts = urlsplit(route)
                route_port = parts.port
            except ValueError:
                route_port, parts = None, None
            if parts is None or parts.scheme not in ("nats-route", "nats") or not parts.hostname or not route_port:
                raise ClusterOptionInvalid(f"--routes: route {n} is not nats-route://HOST:PORT")
            if parts.username is not None or parts.password is not None:
                # The routes' password is generated and kept beside the seeds: never on a command line.
                raise ClusterOptionInvalid(f"--routes: route {n} carries credentials; give HOST:PORT only")
        return cls(name=name, port=port, routes=tuple(listed), host=host, server_name=server_name)


def load_or_create_route_secret(out: Path) -> str:
    """The password of the cluster's routes from `out/cluster-route.secret`, made (0600) if missing.

    Every server of the cluster needs the same one: write the configuration of each from the
    same directory (or copy the file), as for the seeds.
    """
    path = out / ROUTE_SECRET_NAME
    if path.exists():
        return path.read_text().strip()
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


def render_cluster(cluster: ClusterOptions, route_secret: str) -> list[str]:
    """The `cluster` block: routes to every server, each side proving it knows the cluster's secret,
    so that nothing else that reaches the route port can join and read the bus."""
    routes = []
    for route in cluster.routes:
        parts = urlsplit(route)
        routes.append(f"nats-route://{ROUTE_USER}:{route_secret}@{parts.hostname}:{parts.port}")
    return [
        # JetStream in a cluster needs a name per server; the command line's --server_name wins.
        f"server_name: {json.dumps(cluster.server_name or f'{socket.gethostname()}-{cluster.port}')}",
        "cluster {",
        f"  name: {json.dumps(cluster.name)}",
        f"  host: {json.dumps(cluster.host)}",
        f"  port: {cluster.port}",
        "  authorization {",
        f"    user: {ROUTE_USER}",
        f"    password: {json.dumps(route_secret)}",
        "  }",
        f"  routes: {_list(routes)}",
        "}",
    ]


def _list(subjects: list[str]) -> str:
    return "[" + ", ".join(json.dumps(s) for s in subjects) + "]"


def render_config(
    creds: Credentials,
    needs: dict[str, Needs],
    *,
    port: int,
    store_dir: Path,
    host: str = "127.0.0.1",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
    cluster: ClusterOptions | None = None,
    route_secret: str | None = None,
) -> str:
    """The nats-server configuration text; with `cluster` (and the routes' `route_secret`), the
    configuration of one server of a NATS cluster."""
    lines = [
        "# Written by `portal nats-config`: one nkey user per part of the Parent Portal, each allowed",
        "# only what it needs. Regenerate rather than edit: the permissions follow the code.",
        f"host: {json.dumps(host)}",
        f"port: {port}",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store_dir))}",
        "  # Every write reaches the disk before it is acknowledged: an acknowledged event survives a crash.",
        "  sync_interval: always",
        "}",
    ]
    if tls_cert is not None and tls_key is not None:
        lines += ["tls {", f"  cert_file: {json.dumps(str(tls_cert))}", f"  key_file: {json.dumps(str(tls_key))}"]
        if tls_ca is not None:
            # Clients present a certificate signed by this CA, besides their nkey.
            lines += [f"  ca_file: {json.dumps(str(tls_ca))}", "  verify: true"]
        lines += ["}"]
    if cluster is not None:
        if not route_secret:
            raise ClusterOptionInvalid("a cluster's routes need their secret (load_or_create_route_secret)")
        lines += render_cluster(cluster, route_secret)
    lines += [render_authorization(creds, needs)]
    return "\n".join(lines)


def render_authorization(creds: Credentials, needs: dict[str, Needs]) -> str:
    """The `authorization` block alone: every part's user and permissions (public keys only)."""
    lines = ["authorization {", "  users: ["]
    for part in needs:
        n = needs[part]
        lines += [
            f"    # {part}",
            "    {",
            f"      nkey: {creds.public_key(part)}",
            "      permissions: {",
            f"        publish: {{ allow: {_list(n.publish)} }}" if n.publish else '        publish: { deny: [">"] }',
            f"        subscribe: {{ allow: {_list(n.subscribe)}, deny: {_list(n.subscribe_deny)} }}"
            if n.subscribe_deny
            else f"        subscribe: {{ allow: {_list(n.subscribe)} }}",
        ]
        if n.responds:
            # Answers go only to the reply subject of a request this user received.
            lines += ["        allow_responses: true"]
        lines += ["      }", "    }"]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def write_config(
    out: Path,
    *,
    port: int = 4222,
    store_dir: Path | None = None,
    host: str = "127.0.0.1",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    tls_ca: Path | None = None,
    cluster: ClusterOptions | None = None,
) -> Path:
    """Write `out/nats-server.conf` and `out/authorization.conf` (again) and the seeds not there yet
    (with `cluster`, the routes' secret too); the configuration's path."""
    creds = load_or_create_seeds(out)
    route_secret = load_or_create_route_secret(out) if cluster is not None else None
    needs = all_needs()
    text = render_config(
        creds,
        needs,
        port=port,
        store_dir=(store_dir or out / "jetstream").resolve(),
        host=host,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        cluster=cluster,
        route_secret=route_secret,
    )
    # The users alone, for a NATS whose configuration is made elsewhere (the Helm chart includes it).
    _replace(out / AUTHORIZATION_NAME, AUTHORIZATION_HEADER + render_authorization(creds, needs))
    path = out / CONFIG_NAME
    _replace(path, text)
    return path


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def nats_config(
    out: Path = typer.Option(..., "--out", help="Directory for nats-server.conf and one <part>.nk seed per part."),
    port: int = typer.Option(4222, "--port", min=1, max=65535, help="The client port."),
    host: str = typer.Option("127.0.0.1", "--host", help="The address to listen on."),
    store_dir: Path | None = typer.Option(None, "--store-dir", help="JetStream's store (default: OUT/jetstream)."),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="The server's PEM certificate (TLS)."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="Its PEM private key."),
    tls_ca: Path | None = typer.Option(
        None, "--tls-ca", help="Require client certificates signed by this PEM CA (with --tls-cert)."
    ),
    cluster_name: str | None = typer.Option(
        None, "--cluster-name", help="Make this server one of a NATS cluster of this name (with --routes)."
    ),
    cluster_port: int = typer.Option(6222, "--cluster-port", min=1, max=65535, help="The port of its routes."),
    routes: str | None = typer.Option(
        None,
        "--routes",
        help="Every server's route URL, comma-separated (nats-route://HOST:PORT, this one's too).",
    ),
    server_name: str | None = typer.Option(
        None, "--server-name", help="This server's name in the cluster (default: this machine's name and the port)."
    ),
) -> None:
    """Write a NATS server configuration with one user per part, each allowed only what it needs.

    Seeds already in OUT are kept (the parts keep connecting); the configuration is written
    again, so run it after an upgrade and reload nats-server. OUT/authorization.conf holds the
    users alone, for a NATS configured otherwise (the Helm chart: deploy/nats/values.yaml).
    Give each part its own seed only (PORTAL_NATS_CREDS_DIR), and the learning platform's
    publisher `platform.nk`. With --cluster-name and --routes, the server is one of a NATS
    cluster whose routes authenticate with OUT/cluster-route.secret: write every server's
    configuration from the same OUT (or copy the seeds and that file).
    """
    if (tls_cert is None) != (tls_key is None):
        typer.echo("portal: --tls-cert and --tls-key go together", err=True)
        raise typer.Exit(2)
    if tls_ca is not None and tls_cert is None:
        typer.echo("portal: --tls-ca needs --tls-cert and --tls-key", err=True)
        raise typer.Exit(2)
    cluster = None
    if cluster_name is not None or routes is not None or server_name is not None:
        if cluster_name is None or routes is None:
            typer.echo(
                "portal: --cluster-name and --routes go together (--cluster-port, --server-name with them)", err=True
            )
            raise typer.Exit(2)
        try:
            cluster = ClusterOptions.parse(
                name=cluster_name, port=cluster_port, routes=routes, host=host, server_name=server_name or ""
            )
        except ClusterOptionInvalid as exc:
            typer.echo(f"portal: {exc}", err=True)
            raise typer.Exit(2) from None
    from contracts.kit.permissions import PARTS

    path = write_config(
        out,
        port=port,
        store_dir=store_dir,
        host=host,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_ca=tls_ca,
        cluster=cluster,
    )
    also = f" and {ROUTE_SECRET_NAME} (the routes' password: the same on every server)" if cluster else ""
    typer.echo(
        f"wrote {path}, {AUTHORIZATION_NAME} (the users alone) and the seeds "
        f"{', '.join(f'{p}.nk' for p in PARTS)}{also} in {out}"
    )


def prepare(
    nats_out: Path = typer.Option(..., "--nats-out", help="Where to write the NATS configuration and seeds."),
    port: int = typer.Option(..., "--port", min=1, max=65535, help="The embedded NATS's client port."),
) -> None:
    """`portal up`'s first step: the embedded NATS's configuration, then every migration.

    One process for both, since most of either is importing every service.
    """
    from portal.cli import migrate

    write_config(nats_out, port=port, store_dir=nats_out)
    typer.echo(f"wrote the NATS configuration and seeds in {nats_out}")
    migrate()
