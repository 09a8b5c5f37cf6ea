"""Traces: with OTEL_EXPORTER_OTLP_ENDPOINT set, every part exports its spans over OTLP/HTTP, and
one request to the gateway is one trace across the parts it reaches, through NATS requests, the
outbox, a consumer and the email that follows (docs/operations.md, "Tracing").

The parts run as a deployment runs them (`portal service NAME`, one process each, over a real
nats-server and SMTP server); a tiny OTLP receiver stands in for the collector.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import natsauth
import pytest
from helpers import eventually
from otlp_receiver import OtlpReceiver, Span

from portal.natsserver import NatsServer, free_port

PORTAL = str(Path(sys.executable).with_name("portal"))
PASSWORD = "correct horse battery staple"
PARTS = ("identity", "linking", "notify", "gateway")


@dataclass
class Deployment:
    http: httpx.AsyncClient
    otlp: OtlpReceiver
    smtp: object
    procs: dict[str, subprocess.Popen]
    logs: dict[str, Path]


def part_env(tmp: Path, nats_url: str, http_port: int, smtp_url: str, otlp: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_"))}
    env.update(
        PORTAL_NATS_URL=nats_url,
        PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR),
        PORTAL_DATA_DIR=str(tmp / "data"),
        PORTAL_HTTP_PORT=str(http_port),
        PORTAL_PUBLIC_URL="http://portal.test",
        PORTAL_SMTP_URL=smtp_url,
        PORTAL_LOG_LEVEL="INFO",
        PORTAL_IDENTITY_ARGON2_TIME_COST="2",
        PORTAL_IDENTITY_ARGON2_MEMORY_KIB="19456",
        PORTAL_IDENTITY_ARGON2_PARALLELISM="1",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp,
        # Spans leave each part within a fifth of a second rather than five.
        OTEL_BSP_SCHEDULE_DELAY="200",
        # Whatever the machine's environment says, a part is named by what it is.
        OTEL_SERVICE_NAME="not-a-part",
    )
    return env


@pytest.fixture(scope="module")
async def deployment(tmp_path_factory: pytest.TempPathFactory, smtp_module) -> AsyncIterator[Deployment]:
    tmp = tmp_path_factory.mktemp("tracing")
    server = NatsServer(port=free_port(), store_dir=tmp / "nats").start()
    otlp = OtlpReceiver().start()
    port = free_port()
    env = part_env(tmp, server.url, port, smtp_module.url, otlp.endpoint)
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}
    try:
        for name in PARTS:
            logs[name] = tmp / f"{name}.log"
            with logs[name].open("wb") as out:
                procs[name] = subprocess.Popen([PORTAL, "service", name], env=env, stdout=out, stderr=subprocess.STDOUT)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def ready() -> bool:
                for name, proc in procs.items():
                    assert proc.poll() is None, f"{name} exited:\n{logs[name].read_text()[-3000:]}"
                try:
                    response = await http.get("/ready")
                except httpx.TransportError:
                    return False
                services = response.json().get("services", {})
                return all(services.get(name) == "ok" for name in PARTS if name != "gateway")

            await eventually(ready, timeout=60, interval=0.2, message="identity, linking and notify ready")
            yield Deployment(http=http, otlp=otlp, smtp=smtp_module, procs=procs, logs=logs)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        otlp.stop()
        server.stop(kill=True)


@pytest.fixture(scope="module")
def smtp_module() -> Iterator[object]:
    from smtp_server import SmtpServer

    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


def by(spans: list[Span], service: str, name: str) -> Span:
    found = [s for s in spans if s.service == service and s.name == name]
    assert found, f"no {service} span {name!r} among {sorted({(s.service, s.name) for s in spans})}"
    return found[0]


async def test_a_registration_is_one_trace_from_the_gateway_to_the_email_sent(deployment: Deployment) -> None:
    email = f"parent-{uuid.uuid4().hex[:8]}@example.org"
    body = {"email": email, "password": PASSWORD, "name": "Mary Parent", "accept_aup": True}
    # A caller's traceparent is not taken up: the gateway faces the internet.
    foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = await deployment.http.post("/api/v1/auth/register", json=body, headers={"traceparent": foreign})
    assert response.status_code == 202, response.text

    root = await eventually(
        lambda: deployment.otlp.named("POST /api/v1/auth/register"), timeout=15, message="the gateway's span"
    )
    assert len(root) == 1
    gateway = root[0]
    assert gateway.service == "gateway" and gateway.kind == "SERVER" and gateway.parent_id == ""
    assert gateway.trace_id != foreign.split("-")[1]
    assert gateway.links == (foreign.split("-")[1],)
    assert gateway.attributes["http.route"] == "/api/v1/auth/register"
    assert gateway.attributes["http.response.status_code"] == 202
    trace_id = gateway.trace_id

    # The email reaches the SMTP server: by then every part has done its share of the trace.
    await eventually(lambda: any(email in m.envelope_to for m in deployment.smtp.messages), timeout=20)

    def complete() -> list[Span]:
        spans = deployment.otlp.trace(trace_id)
        names = {(s.service, s.name) for s in spans}
        wanted = {
            ("identity", "rpc.identity.register.v1"),
            ("linking", "rpc.linking.aup.v1"),
            ("identity", "send notify.request.verification.v1"),
            ("notify", "process notify.request.verification.v1"),
            ("notify", "send email"),
        }
        return spans if wanted <= names else []

    spans = await eventually(complete, timeout=15, message="every part's spans of the registration")
    ids = {s.span_id: s for s in spans}

    # Each hop is a child of the one before: gateway → identity over NATS → its outbox → notify.
    call = by(spans, "gateway", "rpc.identity.register.v1")
    assert call.kind == "CLIENT" and ids[call.parent_id] == gateway
    served = by(spans, "identity", "rpc.identity.register.v1")
    assert served.kind == "SERVER" and served.parent_id == call.span_id
    aup = by(spans, "linking", "rpc.linking.aup.v1")
    assert aup.kind == "SERVER" and ids[aup.parent_id].service == "gateway"
    published = by(spans, "identity", "send notify.request.verification.v1")
    assert published.kind == "PRODUCER" and published.parent_id == served.span_id
    consumed = by(spans, "notify", "process notify.request.verification.v1")
    assert consumed.kind == "CONSUMER" and consumed.parent_id == published.span_id
    assert consumed.attributes["messaging.consumer.group.name"] == "notify-requests"
    sent = by(spans, "notify", "send email")
    assert sent.parent_id == consumed.span_id

    # The probes (`/ready` was asked every 0.2 s until the parts were ready, each asking every
    # service's health) leave no span anywhere.
    assert not [s for s in deployment.otlp.spans if "health" in s.name or s.name == "GET /ready"]
    # Every part names itself, whatever OTEL_SERVICE_NAME says.
    assert {s.service for s in deployment.otlp.spans} <= set(PARTS)
    for s in spans:
        assert s.resource["service.name"] == s.service
    # What a span carries is ids, subjects and route templates: never the address or the password.
    everything = b"".join(deployment.otlp.raw)
    assert email.encode() not in everything
    assert PASSWORD.encode() not in everything


async def test_a_login_is_one_trace_across_gateway_and_identity(deployment: Deployment) -> None:
    response = await deployment.http.post(
        "/api/v1/auth/login", json={"email": f"nobody-{uuid.uuid4().hex[:6]}@example.org", "password": PASSWORD}
    )
    assert response.status_code == 401, response.text
    gateway = (
        await eventually(lambda: deployment.otlp.named("POST /api/v1/auth/login"), timeout=15, message="login span")
    )[0]
    served = await eventually(
        lambda: [s for s in deployment.otlp.trace(gateway.trace_id) if s.service == "identity"],
        timeout=15,
        message="identity's span of the login",
    )
    assert served[0].name == "rpc.identity.login.v1" and served[0].kind == "SERVER"
    # A refused password is the caller's mistake, not the system's: its code, no error status.
    assert served[0].attributes["portal.error"] == "invalid_credentials"
    assert served[0].status != 2


async def test_unknown_paths_are_named_by_their_method_only(deployment: Deployment) -> None:
    secret = uuid.uuid4().hex
    assert (await deployment.http.get(f"/no/such/{secret}?token={secret}")).status_code == 404
    await asyncio.sleep(0)
    spans = await eventually(
        lambda: [s for s in deployment.otlp.spans if s.service == "gateway" and s.name == "GET"],
        timeout=15,
        message="the 404's span",
    )
    assert any(s.attributes.get("http.response.status_code") == 404 for s in spans)
    assert secret.encode() not in b"".join(deployment.otlp.raw)
