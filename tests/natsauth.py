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
    from portal.natsconfig import Credentials

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
def _needs() -> dict:
    # Imports every service: once per run.
    from portal.natsconfig import all_needs

    return all_needs()


def config_text(*, port: int, store_dir: Path, monitor_port: int) -> str:
    """The generated configuration, plus the harness user that unauthenticated test clients get
    and a monitoring endpoint on loopback (to see who each connection was)."""
    from portal.natsconfig import render_config

    text = render_config(credentials(), _needs(), port=port, store_dir=store_dir)
    users = "authorization {\n  users: [\n"
    assert users in text, "the generated configuration's users are no longer where the tests add theirs"
    harness = f"    {{ user: {HARNESS}, password: {json.dumps(CREDS_DIR.name)} }}\n"
    extra = f"no_auth_user: {HARNESS}\nhttp: {json.dumps(f'127.0.0.1:{monitor_port}')}\n"
    return extra + text.replace(users, users + harness, 1)


@dataclass
class AuthedNats(NatsServer):
    """A nats-server with the portal's users and permissions (see the module's docstring)."""

    monitor_port: int = 0

    def start(self, *, timeout: float = 10.0) -> AuthedNats:
        if not self.monitor_port:
            self.monitor_port = free_port(besides={self.port})
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # Written at every start: a test may have wiped the store directory, this file with it.
        self.config = self.store_dir / "nats-server.conf"
        self.config.write_text(config_text(port=self.port, store_dir=self.store_dir, monitor_port=self.monitor_port))
        super().start(timeout=timeout)
        return self

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.record_parts_without_their_user()
        super().stop(kill=kill, timeout=timeout)

    def connections(self) -> list[dict]:
        """Every connection this server has had (open and recently closed), with its user."""
        url = f"http://127.0.0.1:{self.monitor_port}/connz?state=all&auth=true&limit=100000"
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response).get("connections") or [])

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
