"""The web pages' safety without a browser: headers, form tokens before and after signing in,
redirects to sign in, and where a sign-in may send the browser next. (The journeys themselves
run in a real browser in test_web_pages.py.)"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from gateway.app import create_app
from gateway.pages.common import safe_next
from gateway.settings import GatewaySettings


def _app(nats_url: str, tmp_path: Path, public_url: str):
    return create_app(GatewaySettings(nats_url=nats_url, data_dir=tmp_path, public_url=public_url))


async def test_pages_over_https_send_hsts_no_store_and_a_secure_form_cookie(nats_server, tmp_path: Path) -> None:
    async with AsyncTestClient(
        _app(nats_server.url, tmp_path, "https://portal.example"), base_url="https://portal.example"
    ) as client:
        page = await client.get("/login")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["strict-transport-security"].startswith("max-age=")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"
        csp = page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["referrer-policy"]
        cookie = page.headers["set-cookie"]
        assert cookie.startswith("__Host-portal_form=") and "Secure" in cookie and "HttpOnly" in cookie
        secret = cookie.split("=", 1)[1].split(";", 1)[0]
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)[1]
        assert token == hashlib.sha256(b"form:" + secret.encode()).hexdigest(), "the page carries a hash of the cookie"
        assert secret not in page.text
        # Nothing inline for the CSP to refuse: the one script is the service worker's installer, from a file.
        scripts = re.findall(r"<script[^>]*>", page.text)
        assert scripts == ['<script src="/static/register-sw.js" defer>'], scripts
        assert "style=" not in page.text


async def test_pages_over_http_have_no_hsts(nats_server, tmp_path: Path) -> None:
    async with AsyncTestClient(_app(nats_server.url, tmp_path, "http://127.0.0.1:8000")) as client:
        page = await client.get("/forgot-password")
        assert page.status_code == 200 and "strict-transport-security" not in page.headers
        assert page.headers["set-cookie"].startswith("portal_form=")


async def test_forms_before_sign_in_need_their_cookie_and_token(nats_server, tmp_path: Path) -> None:
    async with AsyncTestClient(_app(nats_server.url, tmp_path, "http://127.0.0.1:8000")) as client:
        # Another site can post the form but cannot read the cookie, so it cannot send the token.
        forged = await client.post("/login", data={"email": "a@example.org", "password": "x", "csrf_token": "0" * 64})
        assert forged.status_code == 403 and "expired" in forged.text
        assert "portal_session" not in forged.headers.get("set-cookie", "")
        reset = await client.post("/reset-password", data={"token": "t", "password": "p"})
        assert reset.status_code == 403


async def test_signed_in_forms_need_the_session_token(nats_server, tmp_path: Path) -> None:
    async with AsyncTestClient(_app(nats_server.url, tmp_path, "http://127.0.0.1:8000")) as client:
        client.cookies.set("portal_session", "some-session-token")
        for path in ("/children/add", "/classes/c1/codes", "/logout", "/schools/s1/settings"):
            refused = await client.post(path, data={"code": "ABCD-EFGH-JKLM"})
            assert refused.status_code == 403, (path, refused.status_code)
            assert refused.headers["content-type"].startswith("text/html") and "reload the page" in refused.text


async def test_signed_out_pages_send_to_sign_in_and_back(nats_server, tmp_path: Path) -> None:
    async with AsyncTestClient(_app(nats_server.url, tmp_path, "http://127.0.0.1:8000")) as client:
        home = await client.get("/", follow_redirects=False)
        assert home.status_code == 303 and home.headers["location"] == "/login"
        staff = await client.get("/classes/c1", follow_redirects=False)
        assert staff.status_code == 303 and staff.headers["location"] == "/login?next=%2Fclasses%2Fc1"
        page = await client.get("/login?next=/classes/c1")
        assert 'name="next" value="/classes/c1"' in page.text


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/classes/c1", "/classes/c1"),
        ("/link/ABCD-EFGH-JKLM", "/link/ABCD-EFGH-JKLM"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_a_sign_in_only_goes_on_to_our_own_pages(given: str | None, expected: str) -> None:
    assert safe_next(given) == expected
