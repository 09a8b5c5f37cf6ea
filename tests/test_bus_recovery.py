"""A running portal (identity, linking, notify with a real SMTP server, overview, the gateway)
when NATS loses its state under it: NATS's store wiped and the server restarted, or NATS back
without JetStream for a while. Every part recreates its streams and consumers without anyone's
help, a registration's verification email arrives, and meanwhile health says what is wrong."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from gateway_harness import Gateway, running_gateway
from helpers import eventually
from natsauth import authed_nats
from smtp_server import SmtpServer

from contracts.kit.service import migrate
from contracts.rpc import HealthReply
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from notify import app as notify_app
from overview import app as overview_app
from portal.natsserver import NatsServer, free_port

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
CHEAP_ARGON = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}
# The contract: every part carries on within 30 seconds of NATS coming back.
RECOVERY_SECONDS = 30


class NatsWithoutJetStream(NatsServer):
    """The same server (port, store) started without JetStream: streams cannot be made."""

    def command(self) -> list[str]:
        args = super().command()
        i = args.index("-sd")
        return [a for a in args[:i] + args[i + 2 :] if a != "-js"]


@dataclass
class Running:
    server: NatsServer
    gw: Gateway
    smtp: SmtpServer
    tmp: Path

    async def register(self) -> str:
        email = f"recover-{uuid.uuid4().hex[:8]}@example.org"
        reply = await self.gw.http.post(
            "/api/v1/auth/register",
            json={"email": email, "password": PASSWORD, "name": "Mary Smith", "accept_aup": True},
        )
        assert reply.status_code == 202, reply.text
        return email

    def verification_email(self, email: str) -> bool:
        return any(m.subject == VERIFY_SUBJECT for m in self.smtp.to(email))

    async def ready(self) -> dict:
        r = await self.gw.http.get("/ready")
        return {**r.json(), "http": r.status_code}

    async def health(self, service: str) -> HealthReply | None:
        nc = await nats.connect(self.server.url, allow_reconnect=False)
        try:
            msg = await nc.request(f"rpc.{service}.health.v1", b"{}", timeout=2)
        except Exception:  # noqa: BLE001 - not answering is an answer here
            return None
        finally:
            await nc.close()
        return HealthReply.model_validate(json.loads(msg.data))

    def restart(self, server: NatsServer, *, wipe: bool) -> NatsServer:
        """Stop NATS, wipe its store if asked, and start `server` on the same port and store."""
        self.server.stop()
        if wipe:
            shutil.rmtree(self.server.store_dir)
        self.server = server.start()
        return self.server


@pytest.fixture(scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    tmp = tmp_path_factory.mktemp("recovery")
    server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    common = {"nats_url": server.url, "public_url": PUBLIC_URL}
    state: Running | None = None
    try:
        async with AsyncExitStack() as stack:
            settings = {
                identity_app: identity_app.Settings(data_dir=tmp / "identity", **common, **CHEAP_ARGON),
                linking_app: linking_app.Settings(data_dir=tmp / "linking", **common),
                notify_app: notify_app.Settings(data_dir=tmp / "notify", smtp_url=smtp.url, **common),
                overview_app: overview_app.Settings(data_dir=tmp / "overview", **common),
            }
            for module, s in settings.items():
                # One after the other: Alembic's environment is process-wide.
                await asyncio.to_thread(migrate, module, s)
                await stack.enter_async_context(module.build(s).running())
            gw = await stack.enter_async_context(
                running_gateway(GatewaySettings(nats_url=server.url, data_dir=tmp / "gw", public_url=PUBLIC_URL))
            )
            state = Running(server, gw, smtp, tmp)
            # Working before anything happens to NATS.
            email = await state.register()
            await eventually(lambda: state.verification_email(email), timeout=15, message="first email")
            yield state
    finally:
        smtp.stop()
        (state.server if state else server).stop(kill=True)


async def test_a_wiped_nats_store_under_a_running_portal_is_recovered_and_a_registration_email_arrives(
    running: Running,
) -> None:
    running.restart(authed_nats(running.server.store_dir, port=running.server.port, start=False), wipe=True)

    email = await eventually(running.register, timeout=RECOVERY_SECONDS, message="registration accepted")
    await eventually(
        lambda: running.verification_email(email), timeout=RECOVERY_SECONDS, message="verification email after the wipe"
    )
    ready = await eventually(_ready_ok(running), timeout=RECOVERY_SECONDS, message="/ready after the wipe")
    assert ready["services"] == dict.fromkeys(["identity", "linking", "notify", "overview"], "ok")


async def test_health_is_degraded_naming_why_while_streams_cannot_be_made_and_ok_once_they_can(
    running: Running,
) -> None:
    running.restart(NatsWithoutJetStream(port=running.server.port, store_dir=running.server.store_dir), wipe=False)
    # A registration during the outage: identity takes it, its email request waits in the outbox.
    email = await eventually(running.register, timeout=RECOVERY_SECONDS, message="registration accepted")

    reply = await eventually(
        _degraded(running, "identity", "outbox"), timeout=RECOVERY_SECONDS, message="identity's outbox degraded"
    )
    assert reply.checks["database"] == "ok"
    # The first event of the registration waits, and everything behind it.
    assert re.fullmatch(r"failing for \d+ s: no stream for identity\.parent\.registered\.v1 .*", reply.checks["outbox"])
    notify = await eventually(
        _degraded(running, "notify", "consumer notify-requests"), timeout=RECOVERY_SECONDS, message="notify degraded"
    )
    assert "consumer notify-requests of NOTIFY_REQUESTS not found" in notify.checks["consumer notify-requests"]

    ready = await running.ready()
    assert ready["http"] == 503 and ready["error"] == "not_ready"
    assert ready["services"]["identity"] == "degraded" and ready["services"]["notify"] == "degraded"
    assert "degraded:" in ready["detail"] and "identity" in ready["detail"]
    assert not running.verification_email(email)

    # JetStream back (with an empty store): everything is made again, the email goes out.
    running.restart(authed_nats(running.server.store_dir, port=running.server.port, start=False), wipe=True)
    await eventually(
        lambda: running.verification_email(email), timeout=RECOVERY_SECONDS, message="the waiting email sent"
    )
    await eventually(_ready_ok(running), timeout=RECOVERY_SECONDS, message="/ready after JetStream came back")
    for service in ("identity", "linking", "notify", "overview"):
        reply = await running.health(service)
        assert reply is not None and reply.status == "ok", (service, reply)
        assert all(v == "ok" for v in reply.checks.values())


def _ready_ok(running: Running):
    async def check() -> dict | None:
        ready = await running.ready()
        return ready if ready["http"] == 200 else None

    return check


def _degraded(running: Running, service: str, check_name: str | None = None):
    async def check() -> HealthReply | None:
        reply = await running.health(service)
        if reply is None or reply.status != "degraded":
            return None
        return reply if check_name is None or reply.checks.get(check_name, "ok") != "ok" else None

    return check
