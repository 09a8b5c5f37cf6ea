"""Every answer's safety headers, as a browser receives them, on fake services (no NATS):
a Content-Security-Policy that forbids plugins, base changes and framing on every kind of
answer (API, pages, errors, the QR sheet, a mail in the development viewer), and HSTS on every
answer when the portal is served over https (none over http, where it would be ignored)."""

from __future__ import annotations

import mailbox
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from gateway_fakes import qr, session, sheet

from contracts import identity, linking
from gateway.app import create_app
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings

ADMIN = {"Authorization": "Bearer tok-admin"}
PATHS = [
    ("/health", {}),
    ("/login", {}),
    ("/nowhere", {}),
    ("/api/v1/nowhere", {}),
    ("/api/v1/me", {}),
    ("/api/v1/classes/y3/qr-sheet", ADMIN),
    ("/api/v1/pupils/amy/qr.svg", ADMIN),
    ("/schema/openapi.json", {}),
    ("/dev/mail", {}),
]


def deliver(directory: Path) -> str:
    box = mailbox.Maildir(directory, create=True)
    msg = EmailMessage()
    msg["Subject"], msg["To"], msg["From"] = "Welcome", "mary@example.org", "no-reply@portal.test"
    msg.set_content("Hello")
    msg.add_alternative("<p>Hello</p>", subtype="html")
    return box.add(msg)


async def client(tmp_path: Path, public_url: str) -> AsyncIterator[httpx.AsyncClient]:
    fake = FakeTransport({identity.SESSION: session, linking.CLASS_SHEET: sheet, linking.PUPIL_QR: qr})
    settings = GatewaySettings(data_dir=tmp_path, dev_mail_dir=tmp_path / "mail", public_url=public_url)
    app = create_app(settings, clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=public_url) as http:
        yield http


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in client(tmp_path, "https://portal.example.org"):
        yield http


@pytest.fixture
async def plain(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in client(tmp_path, "http://127.0.0.1:8000"):
        yield http


def directives(policy: str) -> dict[str, str]:
    parts = (d.strip().split(None, 1) for d in policy.split(";") if d.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


async def test_every_answer_forbids_plugins_base_changes_and_framing(https: httpx.AsyncClient, tmp_path: Path) -> None:
    mail_id = deliver(tmp_path / "mail")
    for path, headers in [*PATHS, (f"/dev/mail/{mail_id}", {})]:
        response = await https.get(path, headers=headers)
        policy = directives(response.headers.get("content-security-policy", ""))
        assert policy.get("object-src") == "'none'", (path, response.status_code, policy)
        assert policy.get("base-uri") == "'none'", path
        assert policy.get("frame-ancestors") == "'none'", path
        assert response.headers.get("x-content-type-options") == "nosniff", path
        assert response.headers.get("referrer-policy"), path


async def test_hsts_on_every_answer_under_https_for_at_least_a_year(https: httpx.AsyncClient) -> None:
    for path, headers in PATHS:
        response = await https.get(path, headers=headers)
        hsts = response.headers.get("strict-transport-security", "")
        assert hsts.startswith("max-age="), (path, response.status_code)
        assert int(hsts.split(";")[0].removeprefix("max-age=")) >= 365 * 24 * 3600, path


async def test_no_hsts_over_plain_http(plain: httpx.AsyncClient) -> None:
    for path, headers in PATHS:
        response = await plain.get(path, headers=headers)
        assert "strict-transport-security" not in response.headers, path


async def test_head_answers_as_get_does_without_the_body(https: httpx.AsyncClient) -> None:
    # Link checkers and uptime monitors ask HEAD: the same status and headers as GET, no body.
    for path, headers in [*PATHS, ("/offline", {}), ("/manifest.webmanifest", {})]:
        got = await https.get(path, headers=headers)
        head = await https.head(path, headers=headers)
        assert head.status_code == got.status_code, path
        assert head.content == b"", path
        same = ("content-type", "content-length", "content-security-policy", "cache-control")
        assert {k: head.headers.get(k) for k in same} == {k: got.headers.get(k) for k in same}, path
    # Never a way round a route's method: HEAD of a form's target is refused as GET is.
    assert (await https.head("/logout")).status_code == (await https.get("/logout")).status_code


# -- the development mail viewer ------------------------------------------------------------------


async def viewer(tmp_path: Path, peer: str, **settings: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        GatewaySettings(data_dir=tmp_path, dev_mail_dir=tmp_path / "mail", **settings),
        clients=Clients.over(FakeTransport({identity.SESSION: session})),
    )
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as http:
        yield http


async def test_the_mail_viewer_answers_only_this_machine(tmp_path: Path) -> None:
    """It shows reset links and invitation codes: a caller from elsewhere sees nothing at all."""
    mail_id = deliver(tmp_path / "mail")
    paths = ["/dev/mail", "/dev/mail.json", f"/dev/mail/{mail_id}"]
    async for local in viewer(tmp_path, "127.0.0.1"):
        for path in paths:
            assert (await local.get(path)).status_code == 200, path
        assert "Welcome" in (await local.get("/dev/mail.json")).text
    async for remote in viewer(tmp_path, "192.0.2.7"):
        for path in paths:
            response = await remote.get(path)
            assert response.status_code == 404, path
            assert "Welcome" not in response.text and "mary@example.org" not in response.text, path
    # Behind a trusted proxy on this machine, the address that counts is the proxy's client.
    async for proxied in viewer(tmp_path, "127.0.0.1", trusted_proxies="127.0.0.1/32"):
        relayed = await proxied.get("/dev/mail.json", headers={"X-Forwarded-For": "198.51.100.4"})
        assert relayed.status_code == 404
        assert "Welcome" not in relayed.text
