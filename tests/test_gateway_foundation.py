"""The gateway's foundation, proven against a real uvicorn, a real NATS and real services:
health and readiness, the OpenAPI document, the error format of docs/http-api.md, security headers,
`/dev/mail`, and `python -m gateway serve` with its JSON logs."""

from __future__ import annotations

import asyncio
import json
import mailbox
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import httpx
import natsauth
import pytest
from gateway_harness import Gateway, running_gateway
from helpers import eventually
from litestar import get, post
from litestar.params import JSONBody
from pydantic import BaseModel, Field

from contracts.kit.logs import _Timestamps
from contracts.kit.service import migrate
from contracts.rpc import SERVICES
from gateway import __version__
from gateway.dev.mail import linkify
from gateway.edge import CONTENT_SECURITY_POLICY
from gateway.errors import ApiError
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from notify import app as notify_app
from overview import app as overview_app
from portal.natsserver import free_port, wait_for_port

MODULES = {"identity": identity_app, "linking": linking_app, "notify": notify_app, "overview": overview_app}

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
}


def gateway_settings(tmp_path: Path, nats_url: str, **overrides) -> GatewaySettings:
    return GatewaySettings(nats_url=nats_url, data_dir=tmp_path, **overrides)


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"].strip()
    return body


@asynccontextmanager
async def running_services(names: Sequence[str], nats_url: str, tmp_path: Path) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for name in names:
            module = MODULES[name]
            extra = {"smtp_url": "smtp://127.0.0.1:2525"} if name == "notify" else {}
            settings = module.Settings(nats_url=nats_url, data_dir=tmp_path / name, **extra)
            migrate(module, settings)
            await stack.enter_async_context(module.build(settings).running())
        yield


# --- settings ---------------------------------------------------------------------------


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("PORTAL_HTTP_PORT", "PORTAL_PUBLIC_URL", "PORTAL_PLATFORM_URL", "PORTAL_DEV_MAIL_DIR"):
        monkeypatch.delenv(var, raising=False)
    defaults = GatewaySettings()
    assert (defaults.http_host, defaults.http_port) == ("127.0.0.1", 8000)
    assert defaults.public_url == "http://127.0.0.1:8000"
    assert defaults.platform_url == "http://127.0.0.1:8000/platform"
    assert defaults.dev_mail_dir is None
    assert defaults.ready_timeout == 1.0

    monkeypatch.setenv("PORTAL_HTTP_PORT", "8123")
    monkeypatch.setenv("PORTAL_DEV_MAIL_DIR", str(tmp_path / "mail"))
    derived = GatewaySettings()
    assert derived.public_url == "http://127.0.0.1:8123"
    assert derived.platform_url == "http://127.0.0.1:8123/platform"
    assert derived.dev_mail_dir == tmp_path / "mail"

    monkeypatch.setenv("PORTAL_PUBLIC_URL", "https://portal.example.org/")
    monkeypatch.setenv("PORTAL_PLATFORM_URL", "https://platform.example.org")
    explicit = GatewaySettings()
    assert explicit.public_url == "https://portal.example.org"
    assert explicit.platform_url == "https://platform.example.org"


# --- health and readiness ---------------------------------------------------------------


async def test_health_answers_without_nats_and_ready_says_why(tmp_path: Path) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    async with running_gateway(gateway_settings(tmp_path, nowhere), wait_until_live=False) as gw:
        health = await gw.http.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}

        body = assert_error(await gw.http.get("/ready"), 503, "not_ready")
        assert "NATS" in body["detail"]
        assert body["missing"] == list(SERVICES)


async def test_ready_names_exactly_the_services_not_running(fresh_nats, tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, fresh_nats.url)
    three = [name for name in SERVICES if name != "overview"]
    async with (
        running_gateway(settings, wait_until_live=False) as gw,
        running_services(three, fresh_nats.url, tmp_path),
    ):
        await eventually(lambda: gw.nats_connected, message="gateway connected to NATS")

        body = assert_error(await gw.http.get("/ready"), 503, "not_ready")
        assert body["missing"] == ["overview"]
        assert body["detail"] == "not answering: overview"
        assert body["services"] == {**dict.fromkeys(three, "ok"), "overview": "missing"}

        async with running_services(["overview"], fresh_nats.url, tmp_path):
            ready = await gw.http.get("/ready")
            assert ready.status_code == 200, ready.text
            assert ready.json() == {"status": "ready", "services": dict.fromkeys(SERVICES, "ok")}

        # The fourth stopped again: readiness follows at once.
        body = assert_error(await gw.http.get("/ready"), 503, "not_ready")
        assert body["missing"] == ["overview"]


# --- OpenAPI, errors and headers --------------------------------------------------------


class Signup(BaseModel):
    email: str
    password: str = Field(min_length=8)
    accept_aup: bool


@post("/api/v1/test/signup", status_code=202)
async def _signup(data: JSONBody[Signup]) -> dict[str, str]:
    return {"email": data.email}


@get("/api/v1/test/conflict")
async def _conflict() -> None:
    raise ApiError(409, "code_full", "This code has no room left.", headers={"X-Why": "full"}, extra={"max": 2})


@get("/api/v1/test/boom")
async def _boom() -> None:
    raise RuntimeError("a secret that must not leak")


TEST_ROUTES = [_signup, _conflict, _boom]


@pytest.fixture
async def gateway(nats_server, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with running_gateway(
        gateway_settings(tmp_path, nats_server.url), extra_route_handlers=TEST_ROUTES, wait_until_live=False
    ) as gw:
        yield gw


async def test_openapi_document(gateway: Gateway) -> None:
    response = await gateway.http.get("/schema/openapi.json")
    assert response.status_code == 200
    doc = json.loads(response.text)
    assert doc["openapi"].startswith("3.")
    assert doc["info"] == {**doc["info"], "title": "Parent Portal API", "version": __version__}
    assert {"/health", "/ready"} <= set(doc["paths"])
    # Errors are documented in the shape they are answered in, a bad field as a 422.
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert doc["paths"]["/ready"]["get"]["responses"]["503"]["content"]["application/json"]["schema"] == error_ref
    signup = doc["paths"]["/api/v1/test/signup"]["post"]["responses"]
    assert signup["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ValidationErrorBody"
    }
    assert signup["400"]["content"]["application/json"]["schema"] == error_ref
    assert set(doc["components"]["schemas"]["ErrorBody"]["required"]) == {"error", "detail"}


async def test_malformed_body_is_422_in_the_error_format(gateway: Gateway) -> None:
    ok = await gateway.http.post(
        "/api/v1/test/signup", json={"email": "a@example.org", "password": "long enough", "accept_aup": True}
    )
    assert ok.status_code == 202, ok.text

    missing = assert_error(
        await gateway.http.post("/api/v1/test/signup", json={"email": "a@example.org"}), 422, "validation_error"
    )
    assert {e["field"] for e in missing["errors"]} == {"password", "accept_aup"}
    assert "password" in missing["detail"] and "accept_aup" in missing["detail"]

    weak = assert_error(
        await gateway.http.post(
            "/api/v1/test/signup", json={"email": "a@example.org", "password": "short", "accept_aup": True}
        ),
        422,
        "validation_error",
    )
    assert [e["field"] for e in weak["errors"]] == ["password"]

    no_body = assert_error(await gateway.http.post("/api/v1/test/signup"), 422, "validation_error")
    assert no_body["errors"][0]["field"] == "body"

    not_json = await gateway.http.post(
        "/api/v1/test/signup", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert assert_error(not_json, 400, "bad_request")["detail"] == "The request body is not valid JSON."


async def test_unknown_path_and_wrong_method_use_the_error_format(gateway: Gateway) -> None:
    assert_error(await gateway.http.get("/no/such/page"), 404, "not_found")
    assert_error(await gateway.http.get("/api/v1/no-such-route"), 404, "not_found")
    wrong = assert_error(await gateway.http.delete("/health"), 405, "method_not_allowed")
    assert wrong  # and the client learns what is allowed:
    assert "GET" in (await gateway.http.delete("/health")).headers["allow"]


async def test_api_error_and_unexpected_failure(gateway: Gateway) -> None:
    conflict = await gateway.http.get("/api/v1/test/conflict")
    body = assert_error(conflict, 409, "code_full")
    assert body == {"error": "code_full", "detail": "This code has no room left.", "max": 2}
    assert conflict.headers["x-why"] == "full"

    boom = await gateway.http.get("/api/v1/test/boom")
    body = assert_error(boom, 500, "internal_error")
    assert "secret" not in boom.text and "Traceback" not in boom.text and "RuntimeError" not in boom.text


async def test_security_headers_on_every_response(gateway: Gateway) -> None:
    responses = {
        "health": await gateway.http.get("/health"),
        "not found": await gateway.http.get("/nowhere"),
        "api error": await gateway.http.get("/api/v1/test/conflict"),
        "failure": await gateway.http.get("/api/v1/test/boom"),
        "api not found": await gateway.http.get("/api/v1/nowhere"),
        "schema": await gateway.http.get("/schema/openapi.json"),
    }
    for name, response in responses.items():
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, f"{name}: {header}"
        assert response.headers.get("x-request-id"), name
    for name in ("api error", "failure", "api not found"):
        assert responses[name].headers["cache-control"] == "no-store", name
    assert "no-store" not in responses["health"].headers.get("cache-control", "")


# --- /dev/mail --------------------------------------------------------------------------


def _deliver(box: mailbox.Maildir, *, subject: str, to: str, text: str, html: str | None, sent: datetime) -> str:
    msg = EmailMessage()
    msg["From"] = "Parent Portal <no-reply@portal.test>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(sent)
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return box.add(msg)


async def test_dev_mail_lists_the_sink(nats_server, tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    box = mailbox.Maildir(maildir, create=True)
    now = datetime.now(UTC).replace(microsecond=0)
    link = "http://127.0.0.1:8000/verify?token=abc123"
    first = _deliver(
        box,
        subject="Verify your email",
        to="parent@example.org",
        text=f"Hello,\n\nPlease confirm: {link}.\n<b>not bold</b>",
        html=f'<p>Please <a href="{link}">confirm</a>.</p>',
        sent=now - timedelta(minutes=1),
    )
    second = _deliver(box, subject="Plain only", to="other@example.org", text="No links here.", html=None, sent=now)

    settings = gateway_settings(tmp_path, nats_server.url, dev_mail_dir=maildir)
    async with running_gateway(settings, wait_until_live=False) as gw:
        listed = await gw.http.get("/dev/mail.json")
        assert listed.status_code == 200
        assert listed.headers["cache-control"] == "no-store"
        mails = listed.json()
        assert [m["id"] for m in mails] == [second, first]  # newest first
        assert set(mails[1]) == {"id", "date", "from", "to", "subject", "text", "html"}
        assert mails[1]["to"] == "parent@example.org"
        assert mails[1]["subject"] == "Verify your email"
        assert link in mails[1]["text"]
        assert 'href="http://127.0.0.1:8000/verify?token=abc123"' in mails[1]["html"]
        assert mails[0]["html"] is None
        assert datetime.fromisoformat(mails[1]["date"]) == now - timedelta(minutes=1)
        assert (await gw.http.get("/dev/mail", params={"format": "json"})).json() == mails

        page = await gw.http.get("/dev/mail")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        html = page.text
        assert '<html lang="en">' in html
        assert html.index("Plain only") < html.index("Verify your email")
        assert f'<a href="{link.replace("&", "&amp;")}">' in html  # the link in the text is clickable
        assert "&lt;b&gt;not bold&lt;/b&gt;" in html  # and the rest of the text is escaped
        assert "parent@example.org" in html
        assert f'href="/dev/mail/{first}"' in html

        one = await gw.http.get(f"/dev/mail/{first}")
        assert one.status_code == 200
        assert one.text == f'<p>Please <a href="{link}">confirm</a>.</p>\n'
        assert "sandbox" in one.headers["content-security-policy"]  # the mail's HTML is not ours

        plain = await gw.http.get(f"/dev/mail/{second}")
        assert plain.status_code == 200 and "No links here." in plain.text
        assert_error(await gw.http.get("/dev/mail/no-such-message"), 404, "not_found")


async def test_dev_mail_with_an_empty_sink(nats_server, tmp_path: Path) -> None:
    settings = gateway_settings(tmp_path, nats_server.url, dev_mail_dir=tmp_path / "not-yet-created")
    async with running_gateway(settings, wait_until_live=False) as gw:
        assert (await gw.http.get("/dev/mail.json")).json() == []
        page = await gw.http.get("/dev/mail")
        assert page.status_code == 200 and "No messages yet." in page.text


async def test_dev_mail_reads_what_the_sink_stores(nats_server, tmp_path: Path) -> None:
    # As an SMTP sink stores it: trace lines first, LF line ends, the recipient only in Delivered-To.
    raw = (
        b"Return-Path: <no-reply@portal.test>\n"
        b"Delivered-To: bcc@example.org\n"
        b"From: no-reply@portal.test\n"
        b"Subject: =?utf-8?q?R=C3=A9initialiser?=\n"
        b"Date: Mon, 30 Nov 2026 09:00:00 +0000\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b"Caf\xc3\xa9: https://portal.test/reset-password?token=t0k\n"
    )
    maildir = tmp_path / "mail"
    key = mailbox.Maildir(maildir, create=True).add(raw)
    async with running_gateway(
        gateway_settings(tmp_path, nats_server.url, dev_mail_dir=maildir), wait_until_live=False
    ) as gw:
        [mail] = (await gw.http.get("/dev/mail.json")).json()
    assert mail["id"] == key
    assert (mail["to"], mail["subject"], mail["html"]) == ("bcc@example.org", "Réinitialiser", None)
    assert mail["text"] == "Café: https://portal.test/reset-password?token=t0k\n"
    assert mail["date"] == "2026-11-30T09:00:00+00:00"


async def test_dev_mail_does_not_exist_without_a_sink(gateway: Gateway) -> None:
    for path in ("/dev/mail", "/dev/mail.json", "/dev/mail/anything"):
        response = await gateway.http.get(path)
        assert_error(response, 404, "not_found")
        assert response.headers["x-frame-options"] == "DENY"


def test_linkify_escapes_and_links() -> None:
    out = str(linkify('See https://a.test/x?y=1&z=2. <script>alert("x")</script> javascript:alert(1)'))
    assert '<a href="https://a.test/x?y=1&amp;z=2">https://a.test/x?y=1&amp;z=2</a>.' in out
    assert "<script>" not in out and "&lt;script&gt;" in out
    assert out.count("<a ") == 1


# --- the real command -------------------------------------------------------------------


def _gateway_process(env_overrides: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        {"PORTAL_DATA_DIR": str(tmp_path / "data"), "PORTAL_NATS_CREDS_DIR": str(natsauth.CREDS_DIR), **env_overrides}
    )
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_serve_runs_uvicorn_with_json_access_logs(nats_server, tmp_path: Path) -> None:
    port = free_port()
    proc = _gateway_process({"PORTAL_NATS_URL": nats_server.url, "PORTAL_HTTP_PORT": str(port)}, tmp_path)
    try:
        await asyncio.to_thread(wait_for_port, port, timeout=15, proc=proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.get("/health", params={"token": "SECRET-TOKEN"})
            assert response.status_code == 200
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "server" not in response.headers
            assert (await http.get("/missing")).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=15)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    assert all(line["service"] == "gateway" for line in lines)
    access = [line for line in lines if line["event"] == "request"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("GET", "/health", 200),
        ("GET", "/missing", 404),
    ]
    assert all(isinstance(a["duration_ms"], float | int) and a["request_id"] for a in access)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", line["timestamp"]) for line in lines)
    assert "SECRET-TOKEN" not in stderr
    assert any(line["event"] == "nats_connected" for line in lines)


def test_log_timestamps_are_utc_to_the_microsecond_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    stamp = _Timestamps()
    clock = iter(
        [1_796_387_415_999_999_400, 1_796_387_415_999_999_600, 1_796_387_416_000_000_000, 1_796_387_416_123_456_000]
    )
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    assert [stamp(None, "info", {})["timestamp"] for _ in range(4)] == [
        "2026-12-04T12:30:15.999999Z",
        "2026-12-04T12:30:16Z",  # rounded up into the next second; no fraction, as isoformat writes it
        "2026-12-04T12:30:16Z",
        "2026-12-04T12:30:16.123456Z",
    ]


async def test_access_logs_never_hold_up_a_request_when_nobody_reads_them(nats_server, tmp_path: Path) -> None:
    """stderr is a pipe nobody reads (a stuck log shipper): once its buffer is full, writing a
    line would block. Requests are still answered, and the lines that could not wait are
    counted, not silently lost."""
    port = free_port()
    proc = _gateway_process({"PORTAL_NATS_URL": nats_server.url, "PORTAL_HTTP_PORT": str(port)}, tmp_path)
    requests = 3_000  # ~200 bytes of access log each: ten times a pipe's 64 KiB
    try:
        await asyncio.to_thread(wait_for_port, port, timeout=15, proc=proc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for i in range(requests):
                response = await http.get("/health")
                assert response.status_code == 200, f"request {i}: {response.status_code}"
    finally:
        proc.send_signal(signal.SIGTERM)
        # Only now is the pipe read: the queued lines go out, and the count of the dropped ones.
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    written = sum(1 for line in lines if line["event"] == "request")
    dropped = sum(line["count"] for line in lines if line["event"] == "log_lines_dropped")
    print(f"{requests} requests: {written} access lines written, {dropped} dropped")
    assert written + dropped == requests


async def test_serve_exits_when_no_nats_is_configured(tmp_path: Path) -> None:
    proc = _gateway_process({"PORTAL_HTTP_PORT": str(free_port())}, tmp_path)
    _, stderr = await asyncio.to_thread(proc.communicate, timeout=15)
    assert proc.returncode == 2
    assert "nats_not_found" in stderr


async def test_platform_stand_in_serves_the_demo_links_unless_a_platform_is_named(nats_server, tmp_path: Path) -> None:
    from litestar.testing import AsyncTestClient

    from gateway.app import create_app

    app = create_app(GatewaySettings(nats_url=nats_server.url, data_dir=tmp_path))
    async with AsyncTestClient(app) as client:
        page = await client.get("/platform/homework", params={"pupil": "amy"})
        assert page.status_code == 200 and "Homework" in page.text and "amy" in page.text
        assert (await client.get("/platform/nonsense")).status_code == 404
    named = create_app(
        GatewaySettings(nats_url=nats_server.url, data_dir=tmp_path, platform_url="https://platform.example")
    )
    async with AsyncTestClient(named) as client:
        assert (await client.get("/platform/homework")).status_code == 404
