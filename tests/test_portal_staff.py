"""`portal staff add` creates a member of staff who can then sign in with their role."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import nats
import pytest

from contracts import identity as c
from contracts.kit import rpc
from contracts.kit.service import migrate
from identity import app as identity_app

PORTAL = str(Path(sys.executable).with_name("portal"))
CHEAP = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}


def run_portal(args: list[str], nats_url: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTAL_NATS_URL": nats_url}
    return subprocess.run([PORTAL, *args], input=stdin, capture_output=True, text=True, env=env, timeout=60)


async def test_staff_add_then_login_with_role(nats_server, tmp_path: Path) -> None:
    settings = identity_app.Settings(nats_url=nats_server.url, data_dir=tmp_path, **CHEAP)
    await asyncio.to_thread(migrate, identity_app, settings)
    nc = await nats.connect(nats_server.url)
    async with identity_app.build(settings).running():
        done = await asyncio.to_thread(
            run_portal,
            [
                "staff",
                "add",
                "--email",
                "Head@Oak.example",
                "--name",
                "Hannah Head",
                "--school",
                "oak",
                "--role",
                "school_admin",
                "--password-stdin",
            ],
            nats_server.url,
            "a long staff passphrase\n",
        )
        assert done.returncode == 0, done.stderr
        assert "created school_admin Head@Oak.example at school oak" in done.stdout
        login = await rpc.call(
            nc, c.LOGIN, c.LoginRequest(email="head@oak.example", password="a long staff passphrase")
        )
        assert login.role == "school_admin"
        me = await rpc.call(nc, c.SESSION, c.SessionRequest(token=login.access_token))
        assert (me.school_id, me.trust_id, me.name) == ("oak", None, "Hannah Head")

        missing_school = await asyncio.to_thread(
            run_portal,
            ["staff", "add", "--email", "t@oak.example", "--name", "T", "--role", "teacher"],
            nats_server.url,
        )
        assert missing_school.returncode == 2 and "needs --school" in missing_school.stderr

        weak = await asyncio.to_thread(
            run_portal,
            [
                "staff",
                "add",
                "--email",
                "w@oak.example",
                "--name",
                "W",
                "--school",
                "oak",
                "--role",
                "teacher",
                "--password-stdin",
            ],
            nats_server.url,
            "password1234\n",
        )
        assert weak.returncode == 2 and "common password" in weak.stderr
    await nc.close()


@pytest.mark.parametrize("role", ["janitor"])
def test_staff_add_refuses_unknown_roles(role: str, nats_server) -> None:
    done = run_portal(
        ["staff", "add", "--email", "x@y.example", "--name", "X", "--school", "s", "--role", role], nats_server.url
    )
    assert done.returncode == 2 and "--role must be one of" in done.stderr
