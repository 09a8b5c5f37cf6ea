"""Attacks on sign-in and registration, through the real gateway over HTTP (identity, notify,
a real SMTP server), each client address simulated with X-Forwarded-For from a trusted proxy:
locking someone else out, racing the guessing limit, flooding argon2, pre-registering someone's
address, using registration as a spam relay, and names that are not names."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from helpers import eventually
from natsauth import authed_nats
from smtp_server import SmtpServer

from contracts import identity as contract
from contracts import names, notify
from contracts.kit import rpc
from contracts.kit.service import migrate
from gateway.settings import GatewaySettings
from identity import app as identity_app
from notify import app as notify_app
from portal.natsserver import free_port

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "violet umbrella marching slowly"
WRONG = "not the right password at all"
PORTAL = str(Path(sys.executable).with_name("portal"))

VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
EXISTS_SUBJECT = "You already have a Parent Portal account"
RESET_SUBJECT = "Reset your Parent Portal password"
REGISTRATION_KINDS = ("verification", "account_exists")

# Lower than the defaults where a test has to reach the limit, so the tests stay quick; the
# per-account-and-address limit is the default (10 in 15 minutes).
IP_FAILURE_LIMIT = 20
REGISTRATION_FAILURE_LIMIT = 5
ARGON2_CONCURRENCY = 2

_addresses = count(1)


def new_ip() -> str:
    """A client address no other test uses (TEST-NET-3 and beyond, as a proxy reports it)."""
    n = next(_addresses)
    return f"203.0.{n // 250}.{n % 250 + 1}"


def new_email() -> str:
    return f"parent-{uuid.uuid4().hex[:10]}@example.org"


def xff(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


@dataclass
class Stack:
    gw: Gateway
    smtp: SmtpServer
    identity: Any  # the identity runtime
    nc: nats.NATS
    nats_url: str
    requests: list[dict] = field(default_factory=list)  # email requests identity sent to notify

    def emails(self, to: str, subject: str) -> list[str]:
        return [m.part("plain") + m.part("html") for m in self.smtp.to(to) if m.subject == subject]

    async def email(self, to: str, subject: str, number: int = 1) -> str:
        """The `number`-th email with this subject to this address, once it arrived."""
        await eventually(lambda: len(self.emails(to, subject)) >= number, timeout=15, message=subject)
        return self.emails(to, subject)[number - 1]

    def requested(self, to: str, kinds: tuple[str, ...]) -> list[dict]:
        return [r for r in self.requests if r.get("to") == to and r.get("kind") in kinds]

    async def post(self, path: str, ip: str, body: dict, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.gw.http.post(f"/api/v1{path}", json=body, headers={**xff(ip), **(headers or {})})

    async def register(self, email: str, ip: str, *, password: str = PASSWORD, name: str = "Mary Smith"):
        body = {"email": email, "password": password, "name": name, "accept_aup": True}
        return await self.post("/auth/register", ip, body)

    async def login(self, email: str, password: str, ip: str) -> httpx.Response:
        return await self.post("/auth/login", ip, {"email": email, "password": password})

    async def verified_parent(self, name: str = "Mary Smith", password: str = PASSWORD) -> str:
        email = new_email()
        assert (await self.register(email, new_ip(), password=password, name=name)).status_code == 202
        token = link_token(await self.email(email, VERIFY_SUBJECT), "/verify")
        assert (await self.post("/auth/verify", new_ip(), {"token": token})).status_code == 200
        return email

    async def no_more_registration_emails(self, email: str) -> None:
        """Wait until identity has sent notify everything about `email` sent so far: a reset
        request (another budget) sent after them comes after them (identity's outbox keeps the
        order), and its email arrives."""
        seen = len(self.emails(email, RESET_SUBJECT))
        assert (await self.post("/auth/password-reset", new_ip(), {"email": email})).status_code == 202
        await eventually(lambda: self.requested(email, ("password_reset",)), timeout=15, message="reset request")
        await self.email(email, RESET_SUBJECT, seen + 1)


def link_token(text: str, path: str) -> str:
    match = re.search(re.escape(f"{PUBLIC_URL}{path}?token=") + r"([A-Za-z0-9_\-]+)", text)
    assert match, f"no {path} link in: {text}"
    return match[1]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"].strip()
    return body


def assert_too_many(response: httpx.Response, at_most: int) -> None:
    assert_error(response, 429, "too_many_attempts")
    assert 0 < int(response.headers["retry-after"]) <= at_most


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp(f"security-identity-{request.param}")
    nats_server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    database = {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("pg").create("identity")}
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
                identity_argon2_concurrency=ARGON2_CONCURRENCY,
                identity_ip_failure_limit=IP_FAILURE_LIMIT,
                identity_registration_failure_limit=REGISTRATION_FAILURE_LIMIT,
                identity_resend_interval_seconds=0,
                **database,
            )
            notify_settings = notify_app.Settings(
                nats_url=nats_server.url, data_dir=tmp / "notify", public_url=PUBLIC_URL, smtp_url=smtp.url
            )
            await asyncio.to_thread(migrate, identity_app, id_settings)
            await asyncio.to_thread(migrate, notify_app, notify_settings)
            runtime = identity_app.build(id_settings)
            await stack.enter_async_context(runtime.running())
            await stack.enter_async_context(notify_app.build(notify_settings).running())
            nc = await nats.connect(nats_server.url)
            stack.push_async_callback(nc.close)
            requests: list[dict] = []

            async def on_request(msg) -> None:
                requests.append(json.loads(msg.data))

            # A plain subscriber sees what the work-queue stream keeps for notify.
            await nc.subscribe(notify.REQUEST_ALL, cb=on_request)
            await nc.flush()
            gw_settings = GatewaySettings(
                nats_url=nats_server.url, data_dir=tmp / "gw", public_url=PUBLIC_URL, trusted_proxies="127.0.0.1/32"
            )
            gw = await stack.enter_async_context(running_gateway(gw_settings, timeout=20))
            yield Stack(gw, smtp, runtime, nc, nats_server.url, requests)
    finally:
        smtp.stop()
        nats_server.stop(kill=True)


@contextmanager
def counting_password_checks(stack: Stack) -> Iterator[Callable[[], int]]:
    """How many passwords identity checked (argon2 verifications) inside the block."""
    passwords = stack.identity.service.passwords
    original = passwords.verify
    checked = 0

    async def verify(stored: str | None, password: str) -> bool:
        nonlocal checked
        checked += 1
        return await original(stored, password)

    passwords.verify = verify
    try:
        yield lambda: checked
    finally:
        del passwords.verify  # the class's method again


# --- login: nobody locks anyone else out, and guessing stays bounded ------------------------


async def test_failures_from_one_address_never_lock_the_owner_out_from_another(stack: Stack) -> None:
    victim, neighbour = await stack.verified_parent(), await stack.verified_parent()
    attacker, owner = new_ip(), new_ip()
    for _ in range(10):
        assert_error(await stack.login(victim, WRONG, attacker), 401, "invalid_credentials")

    assert_too_many(await stack.login(victim, WRONG, attacker), 15 * 60)
    # The attacker's address waits even with the right password: guessing gains nothing...
    assert_too_many(await stack.login(victim, PASSWORD, attacker), 15 * 60)
    # ...while the owner, from their own address, signs in as ever.
    assert (await stack.login(victim, PASSWORD, owner)).status_code == 200
    # Other accounts from the attacker's address are not held up by this account's limit.
    assert (await stack.login(neighbour, PASSWORD, attacker)).status_code == 200


async def test_concurrent_wrong_logins_cannot_race_past_the_limit(stack: Stack) -> None:
    victim = await stack.verified_parent()
    attacker = new_ip()
    with counting_password_checks(stack) as checked:
        answers = await asyncio.gather(*(stack.login(victim, WRONG, attacker) for _ in range(30)))
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {401, 429}, [a.text for a in answers if a.status_code not in (401, 429)]
    assert 1 <= statuses.count(401) <= 10, statuses
    assert checked() <= 10, "no more passwords were checked than the limit allows"
    assert_too_many(await stack.login(victim, PASSWORD, attacker), 15 * 60)
    assert (await stack.login(victim, PASSWORD, new_ip())).status_code == 200


async def test_an_address_with_too_many_failures_is_refused_before_any_password_is_checked(stack: Stack) -> None:
    neighbour = await stack.verified_parent()
    sprayer = new_ip()
    # A password tried against many accounts: each account sees one failure only.
    for _ in range(IP_FAILURE_LIMIT):
        assert_error(await stack.login(new_email(), WRONG, sprayer), 401, "invalid_credentials")
    with counting_password_checks(stack) as checked:
        assert_too_many(await stack.login(new_email(), WRONG, sprayer), 3600)
        assert_too_many(await stack.login(neighbour, PASSWORD, sprayer), 3600)
        assert checked() == 0, "refused before argon2 ran"
    assert (await stack.login(neighbour, PASSWORD, new_ip())).status_code == 200


class _CountingHasher:
    """An argon2 hasher that records how many of its checks ever ran at once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def verify(self, stored: str, password: str) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.inner.verify(stored, password)
        finally:
            with self.lock:
                self.running -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_flood_of_logins_queues_for_argon2_instead_of_running_all_at_once(stack: Stack) -> None:
    passwords = stack.identity.service.passwords
    counting = _CountingHasher(passwords.hasher)
    passwords.hasher = counting
    try:
        # Each from an address and for an account of its own: no guessing limit applies.
        answers = await asyncio.gather(*(stack.login(new_email(), WRONG, new_ip()) for _ in range(24)))
    finally:
        passwords.hasher = counting.inner
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    for busy in (a for a in answers if a.status_code == 429):
        assert_too_many(busy, 60)
    assert 1 <= counting.most <= ARGON2_CONCURRENCY, counting.most


async def test_a_password_reset_ends_the_limit_its_failed_logins_set(stack: Stack) -> None:
    email = await stack.verified_parent()
    mistyped = new_ip()
    for _ in range(10):
        assert_error(await stack.login(email, WRONG, mistyped), 401, "invalid_credentials")
    assert_too_many(await stack.login(email, PASSWORD, mistyped), 15 * 60)

    assert (await stack.post("/auth/password-reset", mistyped, {"email": email})).status_code == 202
    token = link_token(await stack.email(email, RESET_SUBJECT), "/reset-password")
    body = {"token": token, "password": OTHER_PASSWORD}
    assert (await stack.post("/auth/password-reset/confirm", mistyped, body)).status_code == 200
    assert (await stack.login(email, OTHER_PASSWORD, mistyped)).status_code == 200


# --- registration: pre-hijacking, spam relay, refused registrations ----------------------------


async def test_registering_an_unverified_address_again_replaces_the_earlier_registration(stack: Stack) -> None:
    victim = new_email()
    attacker_ip, victim_ip = new_ip(), new_ip()
    attackers = await stack.register(victim, attacker_ip, password=OTHER_PASSWORD, name="Mallory Attacker")
    assert attackers.status_code == 202
    attackers_link = link_token(await stack.email(victim, VERIFY_SUBJECT), "/verify")

    owners = await stack.register(victim, victim_ip, password=PASSWORD, name="Victoria Owner")
    assert owners.status_code == 202 and owners.json() == attackers.json()
    latest = await stack.email(victim, VERIFY_SUBJECT, 2)
    assert "Mallory" not in latest

    # The earlier registration's link is dead: it would have verified the earlier password.
    assert_error(await stack.post("/auth/verify", attacker_ip, {"token": attackers_link}), 400, "invalid_token")
    verified = await stack.post("/auth/verify", victim_ip, {"token": link_token(latest, "/verify")})
    assert verified.status_code == 200, verified.text

    assert_error(await stack.login(victim, OTHER_PASSWORD, attacker_ip), 401, "invalid_credentials")
    session = await stack.login(victim, PASSWORD, victim_ip)
    assert session.status_code == 200, session.text
    me = await stack.gw.http.get("/api/v1/me", headers=bearer(session.json()["access_token"]))
    assert me.json()["name"] == "Victoria Owner"


async def test_an_address_gets_at_most_three_registration_emails_an_hour(stack: Stack) -> None:
    unverified, unknown = new_email(), new_email()
    answers = [await stack.register(unverified, new_ip(), name=f"Sender {n}") for n in range(6)]
    answers.append(await stack.register(unknown, new_ip()))
    assert {a.status_code for a in answers} == {202}
    assert all(a.json() == answers[-1].json() for a in answers), "the same answer whatever the address"
    # "Send it again" draws on the same budget.
    assert (await stack.post("/auth/resend-verification", new_ip(), {"email": unverified})).status_code == 202

    await stack.no_more_registration_emails(unverified)
    assert len(stack.requested(unverified, REGISTRATION_KINDS)) == 3
    assert len(stack.emails(unverified, VERIFY_SUBJECT)) == 3

    # A verified address: the registration that verified it, then "you already have an account".
    verified = await stack.verified_parent()
    for n in range(5):
        assert (await stack.register(verified, new_ip(), name=f"Sender {n}")).status_code == 202
    await stack.no_more_registration_emails(verified)
    assert len(stack.requested(verified, REGISTRATION_KINDS)) == 3
    assert len(stack.emails(verified, VERIFY_SUBJECT)) == 1
    assert len(stack.emails(verified, EXISTS_SUBJECT)) == 2


async def test_emails_to_an_unverified_address_carry_nothing_the_registrant_typed(stack: Stack) -> None:
    email = new_email()
    typed = "Click http://evil.example now"
    assert (await stack.register(email, new_ip(), name=typed)).status_code == 202
    assert (await stack.post("/auth/password-reset", new_ip(), {"email": email})).status_code == 202
    texts = [await stack.email(email, VERIFY_SUBJECT), await stack.email(email, RESET_SUBJECT)]
    for text in texts:
        assert "evil.example" not in text and "Click" not in text, text
    assert all(r.get("to_name") is None for r in stack.requests if r.get("to") == email)


async def test_refused_registrations_are_limited_per_client_address(stack: Stack) -> None:
    prober = new_ip()
    for _ in range(REGISTRATION_FAILURE_LIMIT):
        assert_error(await stack.register(new_email(), prober, password="password1234"), 422, "weak_password")
    assert_too_many(await stack.register(new_email(), prober, password="password1234"), 3600)
    assert_too_many(await stack.register(new_email(), prober), 3600)
    # Another address is not held up by it...
    assert (await stack.register(new_email(), new_ip())).status_code == 202
    # ...and successful registrations are never counted: a school hall shares one address.
    hall = new_ip()
    for _ in range(REGISTRATION_FAILURE_LIMIT + 3):
        assert (await stack.register(new_email(), hall)).status_code == 202


# --- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Ann\u202eevil", "Ann\u200bLee", "Mary\nBcc: x@example.org", "Tab\tName", "x" * 101],
    ids=["bidi-override", "zero-width", "line-break", "tab", "too-long"],
)
async def test_a_registration_with_a_name_that_is_not_a_name_is_refused(stack: Stack, name: str) -> None:
    email = new_email()
    body = assert_error(await stack.register(email, new_ip(), name=name), 422, names.E_INVALID_NAME)
    assert [e["field"] for e in body["errors"]] == ["name"]
    # Nothing was created: the address has no account, not even an unverified one.
    assert_error(await stack.login(email, PASSWORD, new_ip()), 401, "invalid_credentials")
    assert stack.requested(email, REGISTRATION_KINDS) == []


async def test_names_in_any_script_are_names(stack: Stack) -> None:
    email = new_email()
    assert (await stack.register(email, new_ip(), name="  Zoë Ørsted-李  ")).status_code == 202
    token = link_token(await stack.email(email, VERIFY_SUBJECT), "/verify")
    assert (await stack.post("/auth/verify", new_ip(), {"token": token})).status_code == 200
    session = (await stack.login(email, PASSWORD, new_ip())).json()
    me = await stack.gw.http.get("/api/v1/me", headers=bearer(session["access_token"]))
    assert me.json()["name"] == "Zoë Ørsted-李"


async def test_staff_names_follow_the_same_rule(stack: Stack) -> None:
    with pytest.raises(rpc.RpcError) as refused:
        await rpc.call(
            stack.nc,
            contract.CREATE_STAFF,
            contract.CreateStaffRequest(
                email="sam@oak.example", name="Sam\u202eX", role="teacher", school_id="oak", password=PASSWORD
            ),
            timeout=10,
        )
    assert refused.value.code == names.E_INVALID_NAME
    assert [f.field for f in refused.value.fields] == ["name"]

    env = {**os.environ, "PORTAL_NATS_URL": stack.nats_url}
    args = ["staff", "add", "--email", "sam@oak.example", "--name", "Sam\nX", "--school", "oak", "--role", "teacher"]
    done = await asyncio.to_thread(subprocess.run, [PORTAL, *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, "a usage error: the input was refused"
    assert "line breaks" in done.stderr, done.stderr
    # Nothing was created: no account to sign in to, no set-password email.
    assert_error(await stack.login("sam@oak.example", PASSWORD, new_ip()), 401, "invalid_credentials")
    assert [r for r in stack.requests if r.get("to") == "sam@oak.example"] == []


async def test_a_password_check_before_registering_counts_as_a_refused_registration(stack: Stack) -> None:
    """The check a registration with a child's code makes first, with the caller's address."""
    prober = new_ip()

    async def check(password: str) -> None:
        request = contract.CheckPasswordRequest(password=password, email=new_email(), client_ip=prober)
        await rpc.call(stack.nc, contract.CHECK_PASSWORD, request, timeout=10)

    for _ in range(REGISTRATION_FAILURE_LIMIT):
        with pytest.raises(rpc.RpcError) as weak:
            await check("password1234")
        assert weak.value.code == contract.E_WEAK_PASSWORD
    with pytest.raises(rpc.RpcError) as limited:
        await check(PASSWORD)
    assert limited.value.code == contract.E_TOO_MANY and limited.value.retry_after
    assert_too_many(await stack.register(new_email(), prober), 3600)
