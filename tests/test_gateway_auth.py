"""Sign-in through the gateway, as docs/http-api.md describes it, over a real NATS with the real
identity and notify services, a real SMTP server and two gateway replicas served by uvicorn."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import httpx
import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from helpers import eventually
from litestar import get, post
from litestar.datastructures import Headers
from litestar.di import NamedDependency
from natsauth import authed_nats
from smtp_server import SmtpServer
from sqlalchemy import update

from contracts import identity as contract
from contracts.base import utcnow
from contracts.kit import rpc
from contracts.kit.service import migrate
from gateway.auth import client_ip, cookie_name, csrf_token_for, require_role, session_cookie
from gateway.caches.sessions import SessionAuth, SessionCache, token_key
from gateway.settings import GatewaySettings
from identity import app as identity_app
from identity.service import digest
from identity.tables import Token
from notify import app as notify_app
from portal.natsserver import free_port

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "violet umbrella marching slowly"
COOKIE = "portal_session"


@post("/api/v1/test/staff-only", guards=[require_role("teacher", "school_admin")])
async def _staff_only() -> dict[str, str]:
    return {"ok": "yes"}


@get("/api/v1/test/whoami")
async def _whoami(maybe_principal: NamedDependency[contract.Principal | None]) -> dict[str, str | None]:
    return {"id": maybe_principal.account_id if maybe_principal else None}


TEST_ROUTES = [_staff_only, _whoami]


@dataclass
class Stack:
    a: Gateway
    b: Gateway
    smtp: SmtpServer
    identity: object  # the identity ServiceRuntime

    def emails(self, to: str, subject: str) -> list[str]:
        return [m.part("plain") for m in self.smtp.to(to) if m.subject == subject]

    async def email(self, to: str, subject: str, count: int = 1) -> str:
        """The text of the `count`-th email with this subject to this address, once it arrived."""
        found = await eventually(
            lambda: len(self.emails(to, subject)) >= count, timeout=15, message=f"email {subject!r}"
        )
        assert found
        return self.emails(to, subject)[count - 1]


VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
EXISTS_SUBJECT = "You already have a Parent Portal account"
RESET_SUBJECT = "Reset your Parent Portal password"
CHANGED_SUBJECT = "Your Parent Portal password was changed"


def link_token(text: str, path: str) -> str:
    match = re.search(re.escape(f"{PUBLIC_URL}{path}?token=") + r"([A-Za-z0-9_\-]+)", text)
    assert match, f"no {path} link in: {text}"
    return match[1]


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("auth")
    nats_server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    try:
        async with AsyncExitStack() as stack:
            id_settings = identity_app.Settings(
                nats_url=nats_server.url,
                data_dir=tmp / "identity",
                public_url=PUBLIC_URL,
                # OWASP's minimum: the cheapest the service allows, for speed.
                identity_argon2_time_cost=2,
                identity_argon2_memory_kib=19456,
                identity_argon2_parallelism=1,
                identity_resend_interval_seconds=0,
            )
            notify_settings = notify_app.Settings(
                nats_url=nats_server.url, data_dir=tmp / "notify", public_url=PUBLIC_URL, smtp_url=smtp.url
            )
            await asyncio.to_thread(migrate, identity_app, id_settings)
            await asyncio.to_thread(migrate, notify_app, notify_settings)
            runtime = identity_app.build(id_settings)
            await stack.enter_async_context(runtime.running())
            await stack.enter_async_context(notify_app.build(notify_settings).running())
            gw_settings = {"nats_url": nats_server.url, "data_dir": tmp / "gw", "public_url": PUBLIC_URL}
            a = await stack.enter_async_context(
                running_gateway(GatewaySettings(**gw_settings), extra_route_handlers=TEST_ROUTES)
            )
            b = await stack.enter_async_context(
                running_gateway(GatewaySettings(**gw_settings), extra_route_handlers=TEST_ROUTES)
            )
            yield Stack(a, b, smtp, runtime)
    finally:
        smtp.stop()
        nats_server.stop(kill=True)


def new_email() -> str:
    return f"parent-{uuid.uuid4().hex[:10]}@example.org"


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"].strip()
    assert response.headers["cache-control"] == "no-store"
    return body


async def register(stack: Stack, email: str, name: str = "Mary Smith", **extra) -> httpx.Response:
    body = {"email": email, "password": PASSWORD, "name": name, "accept_aup": True, **extra}
    return await stack.a.http.post("/api/v1/auth/register", json=body)


async def verified_parent(stack: Stack, email: str | None = None, name: str = "Mary Smith") -> str:
    email = email or new_email()
    assert (await register(stack, email, name)).status_code == 202
    token = link_token(await stack.email(email, VERIFY_SUBJECT), "/verify")
    assert (await stack.a.http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    return email


async def login(gw: Gateway, email: str, password: str = PASSWORD) -> dict:
    response = await gw.http.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return response.json()


# --- register, verify, login, /me, logout ------------------------------------------------


async def test_register_verify_login_and_me(stack: Stack) -> None:
    email = new_email()
    registered = await register(stack, email)
    assert registered.status_code == 202, registered.text
    assert registered.json()["status"] == "accepted"
    assert registered.headers["cache-control"] == "no-store"

    # Not verified yet: no session at all.
    assert_error(
        await stack.a.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}),
        403,
        "email_not_verified",
    )

    text = await stack.email(email, VERIFY_SUBJECT)
    token = link_token(text, "/verify")
    verified = await stack.a.http.post("/api/v1/auth/verify", json={"token": token})
    assert verified.status_code == 200 and verified.json()["status"] == "verified"

    response = await stack.a.http.post("/api/v1/auth/login", json={"email": email.upper(), "password": PASSWORD})
    assert response.status_code == 200, response.text
    session = response.json()
    assert session["token_type"] == "bearer" and session["role"] == "parent"
    assert 0 < session["expires_in"] <= 7 * 24 * 3600
    assert session["csrf_token"] == csrf_token_for(session["access_token"])
    set_cookie = response.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}={session['access_token']};")
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes and "secure" not in attributes
    assert "Path=/" in set_cookie and "SameSite=lax" in set_cookie.replace("Lax", "lax")
    assert response.headers["cache-control"] == "no-store"

    for headers in (bearer(session["access_token"]), cookie(session["access_token"])):
        me = await stack.a.http.get("/api/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        body = me.json()
        assert body["email"] == email and body["name"] == "Mary Smith" and body["role"] == "parent"
        assert body["id"] and body["csrf_token"] == session["csrf_token"]
        assert body["school_id"] is None and body["trust_id"] is None
        assert me.headers["cache-control"] == "no-store"

    # Identity extends a used session: the cookie is renewed with it, once per cache lifetime.
    renewed = await stack.b.http.get("/api/v1/me", headers=cookie(session["access_token"]))
    [set_again] = renewed.headers.get_list("set-cookie")
    assert (
        set_again.startswith(f"{COOKIE}={session['access_token']};")
        and "HttpOnly" in set_again
        and "Max-Age=" in set_again
    )
    assert "set-cookie" not in (await stack.b.http.get("/api/v1/me", headers=cookie(session["access_token"]))).headers

    assert_error(await stack.a.http.get("/api/v1/me"), 401, "unauthorized")
    assert_error(await stack.a.http.get("/api/v1/me", headers=bearer("not-a-token")), 401, "unauthorized")
    assert_error(await stack.a.http.get("/api/v1/me", headers={"Authorization": "Basic eDp5"}), 401, "unauthorized")
    assert_error(await stack.a.http.get("/api/v1/me", headers=bearer("x" * 300)), 401, "unauthorized")


async def test_another_accounts_token_sees_only_its_own_account(stack: Stack) -> None:
    first, second = await verified_parent(stack, name="Ann First"), await verified_parent(stack, name="Bob Second")
    t1, t2 = (await login(stack.a, first))["access_token"], (await login(stack.a, second))["access_token"]
    me1 = (await stack.a.http.get("/api/v1/me", headers=bearer(t1))).json()
    me2 = (await stack.b.http.get("/api/v1/me", headers=bearer(t2))).json()
    assert (me1["email"], me1["name"]) == (first, "Ann First")
    assert (me2["email"], me2["name"]) == (second, "Bob Second")
    assert me1["id"] != me2["id"]
    assert first not in str(me2) and "Ann First" not in str(me2)
    # Bearer wins over a cookie of someone else.
    mixed = await stack.a.http.get("/api/v1/me", headers={**bearer(t2), **cookie(t1)})
    assert mixed.json()["id"] == me2["id"]
    # Roles: a parent is not staff, and an anonymous caller is nobody.
    assert_error(await stack.a.http.post("/api/v1/test/staff-only", headers=bearer(t1)), 404, "not_found")
    assert_error(await stack.a.http.post("/api/v1/test/staff-only"), 401, "unauthorized")
    assert (await stack.a.http.get("/api/v1/test/whoami")).json() == {"id": None}
    assert (await stack.a.http.get("/api/v1/test/whoami", headers=bearer(t1))).json() == {"id": me1["id"]}


async def test_register_known_address_same_answer_different_email(stack: Stack) -> None:
    email = await verified_parent(stack)
    fresh = await register(stack, new_email())
    again = await register(stack, email.upper(), name="Someone Else")
    assert again.status_code == fresh.status_code == 202
    assert again.json() == fresh.json()
    text = await stack.email(email, EXISTS_SUBJECT)
    assert f"{PUBLIC_URL}/login" in text and f"{PUBLIC_URL}/reset-password" in text
    assert len(stack.emails(email, VERIFY_SUBJECT)) == 1
    # The stored password stays as it was.
    await login(stack.a, email)


async def test_register_refuses_bad_input_with_nothing_created(stack: Stack) -> None:
    email = new_email()
    base = {"email": email, "password": PASSWORD, "name": "Mary Smith", "accept_aup": True}
    post_ = stack.a.http.post

    aup = assert_error(await post_("/api/v1/auth/register", json={**base, "accept_aup": False}), 422, "aup_required")
    assert aup["errors"][0]["field"] == "accept_aup"

    weak = assert_error(
        await post_("/api/v1/auth/register", json={**base, "password": "password1234"}), 422, "weak_password"
    )
    assert "common" in weak["detail"].lower() or "guess" in weak["detail"].lower(), weak["detail"]
    assert weak["errors"][0]["field"] == "password"
    short = assert_error(await post_("/api/v1/auth/register", json={**base, "password": "Xy7!q"}), 422, "weak_password")
    assert "12 characters" in short["detail"]

    missing = assert_error(await post_("/api/v1/auth/register", json={"email": email}), 422, "validation_error")
    assert {e["field"] for e in missing["errors"]} == {"password", "name", "accept_aup"}
    wrong_types = assert_error(
        await post_("/api/v1/auth/register", json={**base, "accept_aup": "perhaps", "name": ["x"]}),
        422,
        "validation_error",
    )
    assert {e["field"] for e in wrong_types["errors"]} == {"accept_aup", "name"}
    relation = assert_error(
        await post_("/api/v1/auth/register", json={**base, "relationship": "uncle"}), 422, "validation_error"
    )
    assert [e["field"] for e in relation["errors"]] == ["relationship"]
    bad_email = assert_error(
        await post_("/api/v1/auth/register", json={**base, "email": "not-an-address"}), 422, "validation_error"
    )
    assert bad_email["errors"] == [{"field": "email", "message": "Enter an email address like name@example.org"}]
    blank = assert_error(await post_("/api/v1/auth/register", json={**base, "name": "   "}), 422, "validation_error")
    assert blank["errors"][0]["field"] == "name"
    assert_error(await post_("/api/v1/auth/register", json=[1, 2]), 422, "validation_error")
    not_json = await post_("/api/v1/auth/register", content=b"{email", headers={"content-type": "application/json"})
    assert_error(not_json, 400, "bad_request")

    await asyncio.sleep(0.5)
    assert stack.smtp.to(email) == []
    assert_error(
        await post_("/api/v1/auth/login", json={"email": email, "password": PASSWORD}), 401, "invalid_credentials"
    )

    for path in (
        "/api/v1/auth/login",
        "/api/v1/auth/verify",
        "/api/v1/auth/password-reset/confirm",
        "/api/v1/auth/password-reset",
    ):
        body = assert_error(await post_(path, json={}), 422, "validation_error")
        assert body["errors"], path


async def test_verify_unknown_reused_and_expired_tokens(stack: Stack) -> None:
    assert_error(await stack.a.http.post("/api/v1/auth/verify", json={"token": "no-such-token"}), 400, "invalid_token")

    email = new_email()
    await register(stack, email)
    token = link_token(await stack.email(email, VERIFY_SUBJECT), "/verify")
    assert (await stack.a.http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    reused = assert_error(await stack.b.http.post("/api/v1/auth/verify", json={"token": token}), 400, "invalid_token")
    assert "already used" in reused["detail"]

    late = new_email()
    await register(stack, late)
    expired = link_token(await stack.email(late, VERIFY_SUBJECT), "/verify")
    # Age the token rather than wait 48 hours.
    async with stack.identity.db.session() as s:
        await s.execute(
            update(Token).where(Token.token_hash == digest(expired)).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert_error(await stack.a.http.post("/api/v1/auth/verify", json={"token": expired}), 400, "invalid_token")
    assert_error(
        await stack.a.http.post("/api/v1/auth/login", json={"email": late, "password": PASSWORD}),
        403,
        "email_not_verified",
    )


async def test_resend_verification(stack: Stack) -> None:
    unknown = await stack.a.http.post("/api/v1/auth/resend-verification", json={"email": new_email()})
    email = new_email()
    await register(stack, email)
    first = link_token(await stack.email(email, VERIFY_SUBJECT), "/verify")
    known = await stack.a.http.post("/api/v1/auth/resend-verification", json={"email": email})
    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    second = link_token(await stack.email(email, VERIFY_SUBJECT, count=2), "/verify")
    assert second != first
    assert (await stack.a.http.post("/api/v1/auth/verify", json={"token": second})).status_code == 200
    await login(stack.a, email)


async def test_wrong_password_and_the_eleventh_failure(stack: Stack) -> None:
    victim, neighbour = await verified_parent(stack), await verified_parent(stack)
    wrong = {"email": victim, "password": "not the right password"}
    body = assert_error(await stack.a.http.post("/api/v1/auth/login", json=wrong), 401, "invalid_credentials")
    unknown = await stack.a.http.post("/api/v1/auth/login", json={"email": new_email(), "password": "whatever it is"})
    assert unknown.json() == body  # who is registered does not show
    for _ in range(9):
        assert_error(await stack.b.http.post("/api/v1/auth/login", json=wrong), 401, "invalid_credentials")

    limited = await stack.a.http.post("/api/v1/auth/login", json=wrong)
    assert_error(limited, 429, "too_many_attempts")
    assert 0 < int(limited.headers["retry-after"]) <= 15 * 60
    # Even the right password waits: guessing gains nothing; other accounts on the same network go on.
    assert_error(
        await stack.a.http.post("/api/v1/auth/login", json={"email": victim, "password": PASSWORD}),
        429,
        "too_many_attempts",
    )
    await login(stack.a, neighbour)


# --- logout, CSRF, password reset ----------------------------------------------------------


async def test_logout_is_seen_by_the_other_replica_at_once(stack: Stack) -> None:
    email = await verified_parent(stack)
    token = (await login(stack.a, email))["access_token"]
    other = (await login(stack.a, email))["access_token"]
    for gw in (stack.b, stack.a):
        assert (await gw.http.get("/api/v1/me", headers=bearer(token))).status_code == 200
        assert (await gw.http.get("/api/v1/me", headers=bearer(other))).status_code == 200
    cached_before = len(stack.b.cache)
    assert stack.b.cache.get(token_key(token)) is not None, "B answers from its cache"

    started = time.perf_counter()
    out = await stack.a.http.post("/api/v1/auth/logout", headers=bearer(token))
    logout_ms = (time.perf_counter() - started) * 1000
    assert out.status_code == 204, out.text
    assert_error(await stack.b.http.get("/api/v1/me", headers=bearer(token)), 401, "unauthorized")
    assert_error(await stack.a.http.get("/api/v1/me", headers=bearer(token)), 401, "unauthorized")
    assert len(stack.b.cache) == cached_before - 1
    # Only that session ended.
    assert (await stack.b.http.get("/api/v1/me", headers=bearer(other))).status_code == 200
    assert logout_ms < 900, f"logout took {logout_ms:.0f} ms: its revocation event was not seen"
    # Logging out again is harmless.
    assert (await stack.b.http.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    assert_error(await stack.b.http.post("/api/v1/auth/logout"), 401, "unauthorized")


async def test_a_staff_members_new_school_is_seen_by_every_replica_at_once(stack: Stack) -> None:
    # As the operator's command would: identity's own user may not ask itself.
    nc = await nats.connect(stack.identity.settings.nats_url)
    email = f"teacher-{uuid.uuid4().hex[:8]}@school.example"

    async def staff(school_id: str) -> None:
        request = contract.CreateStaffRequest(
            email=email, name="Tess Teacher", role="teacher", school_id=school_id, password=NEW_PASSWORD
        )
        await rpc.call(nc, contract.CREATE_STAFF, request, timeout=10)

    await staff("oak")
    token = (await login(stack.a, email, NEW_PASSWORD))["access_token"]
    for gw in (stack.a, stack.b):
        assert (await gw.http.get("/api/v1/me", headers=bearer(token))).json()["school_id"] == "oak"
    assert stack.b.cache.get(token_key(token)) is not None, "B answers from its cache"

    await staff("elm")  # the roster moves them to another school

    async def moved() -> bool:
        return all(
            [
                (await gw.http.get("/api/v1/me", headers=bearer(token))).json()["school_id"] == "elm"
                for gw in (stack.a, stack.b)
            ]
        )

    started = time.perf_counter()
    assert await eventually(moved, timeout=5)
    assert time.perf_counter() - started < 1.0, "every replica dropped the cached session within a second"
    await nc.close()


async def test_cookie_requests_need_the_csrf_token(stack: Stack) -> None:
    email = await verified_parent(stack)
    session = await login(stack.a, email)
    token, csrf = session["access_token"], session["csrf_token"]

    assert_error(await stack.a.http.post("/api/v1/auth/logout", headers=cookie(token)), 403, "csrf_failed")
    assert_error(
        await stack.b.http.post(
            "/api/v1/auth/logout", headers={**cookie(token), "X-CSRF-Token": csrf_token_for("other")}
        ),
        403,
        "csrf_failed",
    )
    assert_error(await stack.a.http.post("/api/v1/test/staff-only", headers=cookie(token)), 403, "csrf_failed")
    # The API takes JSON only: a form, token field and all, changes nothing (the web pages' forms
    # carry the token as a field, and are refused without it: test_web_safety.py).
    form = await stack.a.http.post("/api/v1/test/staff-only", headers=cookie(token), data={"csrf_token": csrf})
    assert_error(form, 415, "unsupported_media_type")
    past = await stack.a.http.post("/api/v1/test/staff-only", headers={**cookie(token), "X-CSRF-Token": csrf})
    assert_error(past, 404, "not_found")  # past CSRF: a parent is not staff
    # Still signed in after the refused attempts; GET needs no CSRF token and hands it out.
    me = await stack.a.http.get("/api/v1/me", headers=cookie(token))
    assert me.status_code == 200 and me.json()["csrf_token"] == csrf

    out = await stack.a.http.post("/api/v1/auth/logout", headers={**cookie(token), "X-CSRF-Token": csrf})
    assert out.status_code == 204
    [cleared] = out.headers.get_list("set-cookie")
    assert cleared.startswith(f"{COOKIE}=") and "Max-Age=0" in cleared and "HttpOnly" in cleared
    assert_error(await stack.b.http.get("/api/v1/me", headers=cookie(token)), 401, "unauthorized")

    # A bearer token needs no CSRF token.
    bearer_token = (await login(stack.b, email))["access_token"]
    assert (await stack.b.http.post("/api/v1/auth/logout", headers=bearer(bearer_token))).status_code == 204
    assert_error(await stack.a.http.get("/api/v1/me", headers=bearer(bearer_token)), 401, "unauthorized")


async def test_password_reset(stack: Stack) -> None:
    email = await verified_parent(stack)
    sessions = [(await login(stack.a, email))["access_token"] for _ in range(2)]
    for gw, token in zip((stack.a, stack.b), sessions, strict=True):
        assert (await gw.http.get("/api/v1/me", headers=bearer(token))).status_code == 200
    bystander = (await login(stack.a, await verified_parent(stack)))["access_token"]

    nobody = new_email()
    unknown = await stack.a.http.post("/api/v1/auth/password-reset", json={"email": nobody})
    known = await stack.b.http.post("/api/v1/auth/password-reset", json={"email": email})
    assert unknown.status_code == known.status_code == 202
    assert unknown.json() == known.json()
    token = link_token(await stack.email(email, RESET_SUBJECT), "/reset-password")

    weak = assert_error(
        await stack.a.http.post(
            "/api/v1/auth/password-reset/confirm", json={"token": token, "password": "qwertyuiop123"}
        ),
        422,
        "weak_password",
    )
    assert "password" in weak["detail"].lower() and len(weak["detail"]) > 20, weak["detail"]

    done = await stack.a.http.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert done.status_code == 200, done.text
    # Every session of the account ended, on both replicas, by the time of the answer.
    for gw in (stack.a, stack.b):
        for old in sessions:
            assert_error(await gw.http.get("/api/v1/me", headers=bearer(old)), 401, "unauthorized")
    assert (await stack.b.http.get("/api/v1/me", headers=bearer(bystander))).status_code == 200

    assert_error(
        await stack.a.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}),
        401,
        "invalid_credentials",
    )
    await login(stack.b, email, NEW_PASSWORD)
    reused = await stack.a.http.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": "another fine long passphrase"}
    )
    assert_error(reused, 400, "invalid_token")
    assert_error(
        await stack.a.http.post(
            "/api/v1/auth/password-reset/confirm", json={"token": "unknown", "password": NEW_PASSWORD}
        ),
        400,
        "invalid_token",
    )
    assert "signed out everywhere" in await stack.email(email, CHANGED_SUBJECT)
    await asyncio.sleep(0.3)
    assert stack.smtp.to(nobody) == []


async def test_openapi_documents_the_auth_routes(stack: Stack) -> None:
    doc = (await stack.a.http.get("/schema/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "register",
        "verify",
        "resend-verification",
        "login",
        "logout",
        "password-reset",
        "password-reset/confirm",
    ):
        assert f"/api/v1/auth/{path}" in paths, path
    assert paths["/api/v1/me"]["get"]["security"] == [{"bearer": []}, {"session_cookie": []}]
    assert "401" in paths["/api/v1/me"]["get"]["responses"]
    login_doc = paths["/api/v1/auth/login"]["post"]
    assert {"401", "403", "422", "429"} <= set(login_doc["responses"])
    assert doc["components"]["securitySchemes"]["session_cookie"]["name"] == COOKIE
    assert not any(p.get("name") == "principal" for p in paths["/api/v1/me"]["get"].get("parameters", []))


# --- without services -------------------------------------------------------------------


async def test_identity_away_answers_503(fresh_nats, tmp_path: Path) -> None:
    async with running_gateway(
        GatewaySettings(nats_url=fresh_nats.url, data_dir=tmp_path, rpc_timeout=0.5), extra_route_handlers=TEST_ROUTES
    ) as gw:
        login_ = await gw.http.post("/api/v1/auth/login", json={"email": "a@example.org", "password": "x" * 12})
        assert_error(login_, 503, "service_unavailable")
        assert_error(await gw.http.get("/api/v1/me", headers=bearer("some-token")), 503, "service_unavailable")
        assert_error(
            await gw.http.post(
                "/api/v1/auth/register",
                json={"email": "a@example.org", "password": PASSWORD, "name": "A", "accept_aup": True},
            ),
            503,
            "service_unavailable",
        )


async def test_a_reconnect_empties_the_session_cache(fresh_nats, tmp_path: Path) -> None:
    async with running_gateway(
        GatewaySettings(nats_url=fresh_nats.url, data_dir=tmp_path), extra_route_handlers=TEST_ROUTES
    ) as gw:
        # Revocations sent while the connection was down are lost: nothing cached may survive it.
        gw.cache.put("k", principal(), gw.cache.generation)
        assert len(gw.cache) == 1
        fresh_nats.stop()
        fresh_nats.start()
        await eventually(lambda: len(gw.cache) == 0, timeout=15, message="cache cleared after the reconnect")
        await eventually(lambda: gw.app.state["nats"].is_connected, timeout=5)
        assert gw.cache.live


# --- pieces -----------------------------------------------------------------------------


def principal(session_id: str = "s1", account_id: str = "a1", expires_in: int = 3600) -> contract.Principal:
    return contract.Principal(
        account_id=account_id,
        session_id=session_id,
        role="parent",
        email="p@example.org",
        name="P",
        expires_in=expires_in,
    )


def test_session_cache_bounds_and_revocations() -> None:
    cache = SessionCache(ttl=5, max_entries=3)
    assert not cache.put("k0", principal(), cache.generation), "nothing is cached before the subscription"
    cache.live = True
    gen = cache.generation
    assert cache.put("k1", principal("s1"), gen) and cache.get("k1").session_id == "s1"
    assert not cache.put("k0", principal("s0", expires_in=0), gen), "an ending session is not cached"

    stale_gen = cache.generation
    cache.drop_sessions(["nothing"])
    assert not cache.put("k2", principal("s2"), stale_gen), "asked before a revocation: may be stale"

    gen = cache.generation
    for i in range(2, 6):
        cache.put(f"k{i}", principal(f"s{i}", account_id="a2"), gen)
    assert len(cache) == 3 and cache.get("k1") is None and cache.get("k2") is None  # the oldest went

    cache.drop_account("a2")
    assert len(cache) == 0

    short = SessionCache(ttl=5, max_entries=10)
    short.live = True
    short.put("k", principal(expires_in=1), short.generation)
    assert short._entries["k"][0] - time.monotonic() <= 1.0


async def test_a_reused_principal_is_refused_at_once_when_revoked_or_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    class Identity:
        asked = 0

        async def session(self, token: str) -> contract.Principal:
            Identity.asked += 1
            return principal("s1", account_id="a1")

    auth = SessionAuth(GatewaySettings(session_cache_seconds=60), Identity())  # type: ignore[arg-type]
    auth.cache.live = True
    _, fresh = await auth.resolve("tok-1")
    first, cached = await auth.resolve("tok-1")
    again, _ = await auth.resolve("tok-1")
    assert fresh and not cached and again is first and Identity.asked == 1, "a repeated session reuses its principal"

    # Each way a session ends is seen on the very next request, reused principal or not.
    async def revoked(**fields: object) -> None:
        event = contract.SessionRevoked(event_id=str(uuid.uuid4()), account_id="a1", **fields)  # type: ignore[arg-type]
        await auth._on_revoked(SimpleNamespace(data=event.model_dump_json().encode()))  # type: ignore[arg-type]

    for end in (
        lambda: revoked(session_ids=["s1"]),
        lambda: revoked(all_sessions=True),
        lambda: auth._on_account_changed(
            SimpleNamespace(
                data=contract.AccountChanged(event_id=str(uuid.uuid4()), account_id="a1").model_dump_json().encode()
            )  # type: ignore[arg-type]
        ),
    ):
        assert (await auth.resolve("tok-1"))[0] is not None
        assert auth.cache.get(token_key("tok-1")) is not None
        await end()
        assert auth.cache.get(token_key("tok-1")) is None, "revoked: refused at once"
    auth.cache.drop_token(token_key("tok-1"))
    assert auth.cache.get(token_key("tok-1")) is None

    # Expired: refused at once too, though the principal was reused a moment before.
    await auth.resolve("tok-2")
    key = token_key("tok-2")
    assert auth.cache.get(key) is auth.cache.get(key)
    expires = auth.cache._entries[key][0]
    monkeypatch.setattr(time, "monotonic", lambda: expires)
    assert auth.cache.get(key) is None

    # A new answer for a token is built again, not the one before it.
    cache = SessionCache(ttl=60, max_entries=10)
    cache.live = True
    cache.put("k", principal("s1"), cache.generation)
    old = cache.get("k")
    cache.put("k", principal("s1", expires_in=30), cache.generation)
    assert cache.get("k") is not old and cache.get("k").expires_in == 30


def test_cookie_names_and_attributes() -> None:
    http = GatewaySettings(public_url="http://127.0.0.1:8000")
    https = GatewaySettings(public_url="https://portal.example.org")
    assert cookie_name(http) == "portal_session" and cookie_name(https) == "__Host-portal_session"
    header = session_cookie(https, "tok", 60).to_header(header="")
    assert header.startswith("__Host-portal_session=tok;")
    for attribute in ("HttpOnly", "Max-Age=60", "Path=/", "Secure"):
        assert attribute in header
    assert "Domain" not in header and "samesite=lax" in header.lower()
    assert "Secure" not in session_cookie(http, "tok", 60).to_header(header="")


def _connection(peer: str, forwarded: list[str], trusted: str) -> SimpleNamespace:
    settings = GatewaySettings(trusted_proxies=trusted)
    return SimpleNamespace(
        app=SimpleNamespace(state=SimpleNamespace(settings=settings)),
        client=SimpleNamespace(host=peer),
        headers=Headers([(b"x-forwarded-for", value.encode()) for value in forwarded]),
    )


def test_client_ip_believes_only_trusted_proxies() -> None:
    assert client_ip(_connection("203.0.113.9", ["198.51.100.1"], "")) == "203.0.113.9"
    assert client_ip(_connection("203.0.113.9", ["198.51.100.1"], "10.0.0.0/8")) == "203.0.113.9"
    assert client_ip(_connection("10.0.0.2", ["198.51.100.1"], "10.0.0.0/8")) == "198.51.100.1"
    # A client's own forged entries sit left of what the proxies appended.
    assert client_ip(_connection("10.0.0.2", ["1.2.3.4, 198.51.100.1, 10.0.0.7"], "10.0.0.0/8")) == "198.51.100.1"
    assert client_ip(_connection("10.0.0.2", ["1.2.3.4", "198.51.100.7"], "10.0.0.0/8")) == "198.51.100.7"
    assert client_ip(_connection("10.0.0.2", ["garbage"], "10.0.0.0/8")) == "10.0.0.2"
    assert client_ip(_connection("10.0.0.2", [], "10.0.0.0/8")) == "10.0.0.2"
    with pytest.raises(ValueError):
        GatewaySettings(trusted_proxies="not-a-network")


# --- long passwords (a passphrase is welcome; past 256 characters a clear 422, never a 500) -----

PASSPHRASE_100 = ("maple tram ochre violin kettle " * 4)[:100]


async def test_long_passphrases_are_accepted_and_longer_ones_refused_clearly(stack: Stack) -> None:
    email = new_email()
    base = {"email": email, "name": "Mary Smith", "accept_aup": True}
    for length in (257, 1025, 5000):
        too_long = assert_error(
            await stack.a.http.post("/api/v1/auth/register", json={**base, "password": "x" * length}),
            422,
            "password_too_long",
        )
        assert too_long["errors"][0]["field"] == "password" and "256" in too_long["detail"]
    # 73 to 256 characters: a strong passphrase registers, verifies and signs in.
    registered = await stack.a.http.post("/api/v1/auth/register", json={**base, "password": PASSPHRASE_100})
    assert registered.status_code == 202, registered.text
    token = link_token(await stack.email(email, VERIFY_SUBJECT), "/verify")
    assert (await stack.a.http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    await login(stack.b, email, PASSPHRASE_100)
    # A long but weak one is refused as weak, not with a 500.
    weak = assert_error(
        await stack.a.http.post("/api/v1/auth/register", json={**base, "email": new_email(), "password": "a" * 200}),
        422,
        "weak_password",
    )
    assert weak["errors"][0]["field"] == "password"

    # The same limits when choosing a new password.
    await stack.a.http.post("/api/v1/auth/password-reset", json={"email": email})
    reset = link_token(await stack.email(email, RESET_SUBJECT), "/reset-password")
    assert_error(
        await stack.a.http.post("/api/v1/auth/password-reset/confirm", json={"token": reset, "password": "y" * 300}),
        422,
        "password_too_long",
    )
    longer = PASSPHRASE_100 + " and then some more words"
    changed = await stack.a.http.post("/api/v1/auth/password-reset/confirm", json={"token": reset, "password": longer})
    assert changed.status_code == 200, changed.text
    await login(stack.a, email, longer)
