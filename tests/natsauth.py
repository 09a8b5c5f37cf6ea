"""NATS servers for the tests, run as production runs them: the configuration `portal nats-config`
generates, one nkey user per part allowed only what that part needs, and every part connecting
with its own seed (`PORTAL_NATS_CREDS_DIR`, which conftest sets for the whole run).

The tests themselves act as whoever they need to be (the learning platform, an operator, a
process that should not be on the bus): they connect without credentials, and these servers
bind such connections to a `harness` user that may do anything. That user exists only here,
never in a generated configuration. A part that connected without its seed would run with the
harness's rights instead of its own and prove nothing about them, so each server, when it
stops, looks at who its parts were and records any that were the harness (`violations`); the
run fails on them.
"""

from __future__ import annotations

import json
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from portal.natsserver import NatsServer, free_port

if TYPE_CHECKING:
    from portal.natsconfig import ClusterOptions, Credentials

HARNESS = "harness"
CREDS_DIR = Path(tempfile.mkdtemp(prefix="portal-test-nats-creds-"))

# How parts name their connections: a service replica by its instance id, the gateway as itself.
PART_CONNECTION = re.compile(r"^(identity|linking|notify|overview)-[0-9a-f]+$|^gateway$")

violations: list[str] = []


@cache
def credentials() -> Credentials:
    from portal.natsconfig import load_or_create_seeds

    return load_or_create_seeds(CREDS_DIR)


@cache
def route_secret() -> str:
    """The password of the test clusters' routes, kept beside the seeds as `portal nats-config` does."""
    from portal.natsconfig import load_or_create_route_secret

    return load_or_create_route_secret(CREDS_DIR)


@cache
def _needs() -> dict:
    # Imports every service: once per run.
    from portal.natsconfig import all_needs

    return all_needs()


def config_text(*, port: int, store_dir: Path, monitor_port: int, cluster: ClusterOptions | None = None) -> str:
    """The generated configuration (with `cluster`, of one server of a cluster), plus the harness
    user that unauthenticated test clients get and a monitoring endpoint on loopback (to see who
    each connection was)."""
    from portal.natsconfig import render_config

    text = render_config(
        credentials(),
        _needs(),
        port=port,
        store_dir=store_dir,
        cluster=cluster,
        route_secret=route_secret() if cluster is not None else None,
    )
    users = "authorization {\n  users: [\n"
    assert users in text, "the generated configuration's users are no longer where the tests add theirs"
    harness = f"    {{ user: {HARNESS}, password: {json.dumps(CREDS_DIR.name)} }}\n"
    extra = f"no_auth_user: {HARNESS}\nhttp: {json.dumps(f'127.0.0.1:{monitor_port}')}\n"
    return extra + text.replace(users, users + harness, 1)


@dataclass
class AuthedNats(NatsServer):
    """A nats-server with the portal's users and permissions (see the module's docstring)."""

    monitor_port: int = 0
    # One server of a cluster (see `authed_cluster`).
    cluster: ClusterOptions | None = None

    def start(self, *, timeout: float = 10.0) -> AuthedNats:
        if not self.monitor_port:
            self.monitor_port = free_port(besides={self.port})
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Written at every start: a test may have wiped the store directory, this file with it.
        self.config = self.store_dir / "nats-server.conf"
        self.config.write_text(
            config_text(port=self.port, store_dir=self.store_dir, monitor_port=self.monitor_port, cluster=self.cluster)
        )
        super().start(timeout=timeout)
        return self

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.record_parts_without_their_user()
        super().stop(kill=kill, timeout=timeout)

    def monitor(self, path: str) -> dict:
        """A page of the server's monitoring endpoint (`/jsz`, `/connz?…`, `/routez`), as JSON."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=5) as response:
            return dict(json.load(response))

    def connections(self) -> list[dict]:
        """Every connection this server has had (open and recently closed), with its user."""
        return list(self.monitor("/connz?state=all&auth=true&limit=100000").get("connections") or [])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def record_parts_without_their_user(self) -> None:
        try:
            connections = self.connections()
        except OSError as exc:
            violations.append(f"nats-server on port {self.port}: could not list its connections ({exc})")
            return
        for c in connections:
            name = c.get("name") or ""
            if PART_CONNECTION.match(name) and c.get("authorized_user") == HARNESS:
                violations.append(f"{name} connected to the nats-server of {self.store_dir} without its seed")


def authed_nats(store_dir: Path, *, port: int | None = None, start: bool = True) -> AuthedNats:
    """A nats-server with the portal's permissions on a free (or the given) loopback port."""
    server = AuthedNats(port=port or free_port(), store_dir=store_dir)
    return server.start() if start else server


def authed_cluster(
    root: Path, *, size: int = 3, name: str = "portal-test", log_dir: Path | None = None
) -> list[AuthedNats]:
    """`size` nats-servers with the portal's permissions, clustered with JetStream (routes
    authenticated with the generated secret), each with a store of its own under `root`. Each
    can be stopped, killed and started again on its ports; `cluster_url` lists them as
    PORTAL_NATS_URL does."""
    from portal.natsconfig import ClusterOptions

    taken: set[int] = set()
    clients, routes_ports = [], []
    for _ in range(size):
        p = free_port(besides=taken)
        taken.add(p)
        clients.append(p)
        r = free_port(besides=taken)
        taken.add(r)
        routes_ports.append(r)
    routes = tuple(f"nats-route://127.0.0.1:{r}" for r in routes_ports)
    servers = []
    for i in range(size):
        monitor = free_port(besides=taken)
        taken.add(monitor)
        cluster = ClusterOptions(name=name, port=routes_ports[i], routes=routes, server_name=f"n{i + 1}")
        servers.append(AuthedNats(port=clients[i], store_dir=root / f"n{i + 1}", monitor_port=monitor, cluster=cluster))
    for server in servers:
        server.start()
    return servers


def cluster_url(servers: list[AuthedNats]) -> str:
    """PORTAL_NATS_URL for a cluster: every server, comma-separated."""
    return ",".join(s.url for s in servers)


def jetstream_ready(servers: list[AuthedNats]) -> bool:
    """Whether every running server sees the JetStream meta leader and all its peers."""
    for server in servers:
        if not server.running:
            continue
        try:
            meta = server.monitor("/jsz").get("meta_cluster") or {}
        except OSError:
            return False
        if not meta.get("leader") or len(meta.get("replicas") or []) < len(servers) - 1:
            return False
    return True
