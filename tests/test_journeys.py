"""Every journey of the help article, end to end through the gateway's HTTP API, over a real
NATS with the real identity, linking, notify and overview services and a real SMTP server:
the QR path, the email path, three children on one account, adding a child by typed code,
removing one sibling, removing a parent everywhere, re-inviting, two carers on one printed
code, a full code, cross-school 404s, and the overview (partial while overview is away)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from helpers import eventually
from natsauth import authed_nats
from smtp_server import SmtpServer

from contracts import identity, platform
from contracts import linking as lc
from contracts import overview as oc
from contracts.base import utcnow
from contracts.kit import rpc
from contracts.kit.service import migrate
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from linking.codes import new_key
from notify import app as notify_app
from overview import app as overview_app
from portal.natsserver import free_port

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
STAFF_PASSWORD = "a long staff passphrase"
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
EXISTS_SUBJECT = "You already have a Parent Portal account"
CHEAP_ARGON = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}


@dataclass
class School:
    school_id: str
    class_id: str
    pupils: list[str]
    names: dict[str, str]
    admin_token: str = ""
    teacher_token: str = ""


@dataclass
class World:
    a: Gateway
    b: Gateway
    smtp: SmtpServer
    nc: nats.NATS
    overview: object
    oak: School
    elm: School
    # What one test made and others may reuse (each test still runs alone: see `once`).
    made: dict[str, Any] = field(default_factory=dict)

    async def once(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """`make()`'s result, made the first time a test of this world asks for it."""
        if key not in self.made:
            self.made[key] = await make()
        return self.made[key]

    def emails(self, to: str, subject: str) -> list[str]:
        return [m.part("plain") for m in self.smtp.to(to) if m.subject == subject]

    async def email(self, to: str, subject: str) -> str:
        await eventually(lambda: self.emails(to, subject), timeout=15, message=f"email {subject!r} to {to}")
        return self.emails(to, subject)[-1]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def roster(nc: nats.NATS, trust_id: str, name: str, first_names: list[str]) -> School:
    school = School(uid("school"), uid("class"), [uid("pupil") for _ in first_names], {})
    events = [
        (
            platform.SCHOOL_UPSERTED,
            platform.SchoolUpserted(trust_id=trust_id, school_id=school.school_id, name=name, timezone="Europe/London"),
        ),
        (
            platform.CLASS_UPSERTED,
            platform.ClassUpserted(school_id=school.school_id, class_id=school.class_id, name="Year 3"),
        ),
    ]
    for pid, first in zip(school.pupils, first_names, strict=True):
        school.names[pid] = first
        events.append(
            (
                platform.PUPIL_UPSERTED,
                platform.PupilUpserted(
                    school_id=school.school_id,
                    pupil_id=pid,
                    first_name=first,
                    last_name="Smith",
                    class_ids=[school.class_id],
                ),
            )
        )
    js = nc.jetstream()
    for subject, ev in events:
        await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})

    async def applied() -> bool:
        status = await rpc.call(nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=[e.event_id for _, e in events]))
        return not status.missing

    await eventually(applied, timeout=15)
    return school


async def staff_token(world_a: Gateway, nc: nats.NATS, school_id: str, role: str) -> str:
    email = f"{uid(role)}@school.example"
    await rpc.call(
        nc,
        identity.CREATE_STAFF,
        identity.CreateStaffRequest(
            email=email, name=f"{role.title()} Person", role=role, school_id=school_id, password=STAFF_PASSWORD
        ),
        timeout=10,
    )
    login = await world_a.http.post("/api/v1/auth/login", json={"email": email, "password": STAFF_PASSWORD})
    assert login.status_code == 200, login.text
    return login.json()["access_token"]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("journeys")

    def db(name: str) -> dict:
        # SQLite files in the data dir by default; one PostgreSQL database per service otherwise.
        return {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("pg").create(name)}

    server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    common = {"nats_url": server.url, "public_url": PUBLIC_URL}
    try:
        async with AsyncExitStack() as stack:
            settings = {
                identity_app: identity_app.Settings(
                    data_dir=tmp / "identity", **common, **CHEAP_ARGON, **db("identity")
                ),
                linking_app: linking_app.Settings(
                    data_dir=tmp / "linking", linking_code_key=new_key(), **common, **db("linking")
                ),
                notify_app: notify_app.Settings(data_dir=tmp / "notify", smtp_url=smtp.url, **common, **db("notify")),
                overview_app: overview_app.Settings(data_dir=tmp / "overview", **common, **db("overview")),
            }
            runtimes = {}
            for module, s in settings.items():
                # One after the other: Alembic's environment is process-wide.
                await asyncio.to_thread(migrate, module, s)
                runtimes[module] = module.build(s)
                await stack.enter_async_context(runtimes[module].running())
            gw = {"nats_url": server.url, "data_dir": tmp / "gw", "public_url": PUBLIC_URL}
            a = await stack.enter_async_context(running_gateway(GatewaySettings(**gw)))
            b = await stack.enter_async_context(running_gateway(GatewaySettings(**gw)))
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)
            trust = uid("trust")
            oak = await roster(nc, trust, "Oak Primary", ["Amy", "Ben", "Cat", "Dan"])
            elm = await roster(nc, uid("trust"), "Elm Academy", ["Eve"])
            for school in (oak, elm):
                school.admin_token = await staff_token(a, nc, school.school_id, "school_admin")
                school.teacher_token = await staff_token(a, nc, school.school_id, "teacher")
            yield World(a, b, smtp, nc, runtimes[overview_app], oak, elm)
    finally:
        smtp.stop()
        server.stop(kill=True)


async def printed_codes(world: World, school: School) -> dict[str, str]:
    """'Create QR codes' for the class; pupil id -> typed code, read off the printable sheet."""
    created = await world.a.http.post(f"/api/v1/classes/{school.class_id}/codes", headers=bearer(school.teacher_token))
    assert created.status_code == 201, created.text
    sheet = await world.a.http.get(f"/api/v1/classes/{school.class_id}/qr-sheet", headers=bearer(school.teacher_token))
    assert sheet.status_code == 200
    found = {}
    for pid, first in school.names.items():
        card = re.search(re.escape(first) + r".*?class=\"code\">([0-9A-Z-]{14})<", sheet.text, re.S)
        assert card, f"no card for {first}"
        found[pid] = card[1]
    return found


async def register_and_verify(world: World, email: str, **extra) -> str:
    """Register (optionally with a code), verify from the email, sign in; returns the token."""
    reg = await world.a.http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "Mary Smith", "accept_aup": True, **extra},
    )
    assert reg.status_code == 202, reg.text
    text = await world.email(email, VERIFY_SUBJECT)
    token = re.search(re.escape(PUBLIC_URL) + r"/verify\?token=([\w-]+)", text)[1]
    assert (await world.a.http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    login = await world.a.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return login.json()["access_token"]


async def children(gw: Gateway, token: str) -> dict[str, dict]:
    r = await gw.http.get("/api/v1/me/children", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {c["pupil_id"]: c for c in r.json()}


async def add_child(world: World, token: str, code: str, relationship: str = "mother", **extra):
    return await world.a.http.post(
        "/api/v1/me/children", headers=bearer(token), json={"code": code, "relationship": relationship, **extra}
    )


async def test_qr_path_register_with_code_verify_then_linked(world: World) -> None:
    codes = await printed_codes(world, world.oak)
    amy = world.oak.pupils[0]
    preview = await world.a.http.get(f"/api/v1/link-codes/{codes[amy].lower().replace('-', ' ')}")
    assert preview.status_code == 200 and preview.json()["first_name"] == "Amy"
    assert preview.json()["school_name"] == "Oak Primary" and preview.json()["aup"]["version"]
    email = f"{uid('qr')}@example.org"
    token = await register_and_verify(world, email, code=codes[amy], relationship="mother")
    mine = await eventually(
        lambda: _children_if(world, token, lambda c: c.get(amy, {}).get("status") == "linked"), timeout=10
    )
    assert mine[amy]["first_name"] == "Amy" and mine[amy]["relationship"] == "mother"
    # Staff see the parent, named from identity.
    pupils = (
        await world.a.http.get(f"/api/v1/classes/{world.oak.class_id}/pupils", headers=bearer(world.oak.teacher_token))
    ).json()
    row = next(p for p in pupils if p["pupil_id"] == amy)
    assert [(p["email"], p["name"], p["status"]) for p in row["parents"]] == [(email, "Mary Smith", "linked")]


async def _children_if(world: World, token: str, predicate):
    got = await children(world.a, token)
    return got if predicate(got) else None


async def test_a_bad_code_creates_nothing_and_a_known_address_is_not_linked(world: World) -> None:
    email = f"{uid('bad')}@example.org"
    r = await world.a.http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "X", "accept_aup": True, "code": "AAAA-BBBB-CCCC"},
    )
    assert r.status_code == 404 and r.json()["error"] == "invalid_code"
    # Nothing was created: registering again (no code) gets a verification email, not "already registered".
    await register_and_verify(world, email)
    assert world.emails(email, EXISTS_SUBJECT) == []

    codes = await printed_codes(world, world.elm)
    eve = world.elm.pupils[0]
    again = await world.a.http.post(
        "/api/v1/auth/register",
        json={
            "email": email,
            "password": PASSWORD,
            "name": "X",
            "accept_aup": True,
            "code": codes[eve],
            "relationship": "other",
        },
    )
    assert again.status_code == 202
    await world.email(email, EXISTS_SUBJECT)
    login = await world.a.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert await children(world.a, login.json()["access_token"]) == {}, "a known address is told by email, never linked"


async def test_email_path_three_children_switching_and_removing_one(world: World) -> None:
    oak = world.oak
    ben, cat, dan = oak.pupils[1], oak.pupils[2], oak.pupils[3]
    school_address = f"{uid('dad')}@example.org"
    invited = await world.a.http.post(
        f"/api/v1/pupils/{ben}/invitations", headers=bearer(oak.teacher_token), json={"email": school_address}
    )
    assert invited.status_code == 201, invited.text
    text = await world.email(school_address, "Oak Primary invites you to see Ben's schoolwork")
    link = re.search(re.escape(PUBLIC_URL) + r"/link/([0-9A-Z-]{14})", text)
    assert link and link[1] in text.split(link[0], 1)[1], "the typed code is in the text too"
    # Parents often register with another address than the one the school has.
    token = await register_and_verify(world, f"{uid('dad-home')}@example.org", code=link[1], relationship="father")
    await eventually(lambda: _children_if(world, token, lambda c: c.get(ben, {}).get("status") == "linked"), timeout=10)

    codes = await printed_codes(world, oak)
    for pupil in (cat, dan):
        added = await add_child(world, token, codes[pupil].lower(), "father")
        assert added.status_code == 201, added.text
    assert (await add_child(world, token, codes[cat], "father")).status_code == 200, "already linked: the existing link"
    mine = await children(world.a, token)
    assert set(mine) == {ben, cat, dan} and {c["status"] for c in mine.values()} == {"linked"}

    # Switching between children: each child's own overview.
    for pupil in (ben, cat, dan):
        r = await world.b.http.get(f"/api/v1/me/children/{pupil}/overview", headers=bearer(token))
        assert r.status_code == 200 and r.json()["pupil_id"] == pupil and r.json()["partial"] is False

    pupils = (
        await world.a.http.get(f"/api/v1/classes/{oak.class_id}/pupils", headers=bearer(oak.teacher_token))
    ).json()
    parent_id = next(p for p in pupils if p["pupil_id"] == ben)["parents"][0]["parent_id"]
    invitation = next(p for p in pupils if p["pupil_id"] == ben)["invitations"][0]
    assert invitation["status"] == "accepted" and invitation["email"] == school_address

    # Both gateways have the children in their caches before the removal.
    for gw in (world.a, world.b):
        assert (await gw.http.get(f"/api/v1/me/children/{cat}/overview", headers=bearer(token))).status_code == 200
    removed = await world.a.http.delete(f"/api/v1/pupils/{cat}/parents/{parent_id}", headers=bearer(oak.teacher_token))
    assert removed.status_code == 204
    assert (await world.a.http.get(f"/api/v1/me/children/{cat}/overview", headers=bearer(token))).status_code == 404
    started = asyncio.get_running_loop().time()
    await eventually(
        lambda: _status_is(world.b, token, cat, 404),
        timeout=1.0,
        interval=0.02,
        message="removal seen by the other replica",
    )
    assert asyncio.get_running_loop().time() - started < 1.0
    assert set(await children(world.a, token)) == {ben, dan}, "removing one sibling leaves two"


async def _status_is(gw: Gateway, token: str, pupil: str, status: int) -> bool:
    return (await gw.http.get(f"/api/v1/me/children/{pupil}/overview", headers=bearer(token))).status_code == status


async def parent_of_amy(world: World) -> str:
    """A parent linked to Amy with her printed code; their session token."""
    amy = world.oak.pupils[0]
    codes = await printed_codes(world, world.oak)
    token = await register_and_verify(world, f"{uid('amy-parent')}@example.org", code=codes[amy], relationship="mother")
    await eventually(lambda: _children_if(world, token, lambda c: c.get(amy, {}).get("status") == "linked"), timeout=10)
    return token


async def parent_of_ben_and_dan(world: World) -> tuple[str, str]:
    """A parent linked to Ben and Dan at Oak; their session token and parent id."""
    oak = world.oak
    ben, dan = oak.pupils[1], oak.pupils[3]
    token = await register_and_verify(world, f"{uid('dad')}@example.org")
    codes = await printed_codes(world, oak)
    for pupil in (ben, dan):
        added = await add_child(world, token, codes[pupil], "father", accept_aup=True)
        assert added.status_code == 201, added.text
    me = await world.a.http.get("/api/v1/me", headers=bearer(token))
    return token, me.json()["id"]


async def test_remove_a_parent_everywhere_then_reinvite(world: World) -> None:
    token, parent_id = await parent_of_ben_and_dan(world)
    oak = world.oak
    listed = await world.a.http.get(f"/api/v1/parents/{parent_id}/pupils", headers=bearer(oak.admin_token))
    assert listed.status_code == 200 and len(listed.json()) == 2
    assert (
        await world.a.http.get(f"/api/v1/parents/{parent_id}/pupils", headers=bearer(world.elm.admin_token))
    ).status_code == 404
    gone = await world.a.http.delete(f"/api/v1/parents/{parent_id}/pupils", headers=bearer(oak.admin_token))
    assert gone.status_code == 204
    assert await children(world.a, token) == {}
    audit = (await world.a.http.get(f"/api/v1/pupils/{oak.pupils[1]}/audit", headers=bearer(oak.admin_token))).json()
    assert [e["action"] for e in audit][-1] == "link_removed" and audit[-1]["parent_id"] == parent_id

    # Re-invite the same address: the new invitation links again.
    address = f"{uid('again')}@example.org"
    await world.a.http.post(
        f"/api/v1/pupils/{oak.pupils[1]}/invitations", headers=bearer(oak.teacher_token), json={"email": address}
    )
    text = await world.email(address, "Oak Primary invites you to see Ben's schoolwork")
    code = re.search(r"/link/([0-9A-Z-]{14})", text)[1]
    assert (await add_child(world, token, code, "father")).status_code == 201
    assert set(await children(world.a, token)) == {oak.pupils[1]}


async def test_two_carers_on_one_printed_code_then_full(world: World) -> None:
    oak = world.oak
    put = await world.a.http.put(
        f"/api/v1/schools/{oak.school_id}/settings", headers=bearer(oak.admin_token), json={"max_carers_per_code": 2}
    )
    assert put.status_code == 200, put.text
    codes = await printed_codes(world, oak)
    dan = oak.pupils[3]
    mum = await register_and_verify(world, f"{uid('mum')}@example.org")
    gran = await register_and_verify(world, f"{uid('gran')}@example.org")
    third = await register_and_verify(world, f"{uid('third')}@example.org")
    assert (await add_child(world, mum, codes[dan], "mother", accept_aup=True)).status_code == 201
    assert (await add_child(world, gran, codes[dan], "grandparent", accept_aup=True)).status_code == 201
    full = await add_child(world, third, codes[dan], "carer", accept_aup=True)
    assert full.status_code == 409 and full.json()["error"] == "code_full"
    needs_policy = await add_child(world, third, codes[oak.pupils[0]], "carer")
    assert needs_policy.status_code == 422 and needs_policy.json()["error"] == "aup_required"


async def test_cross_school_ids_answer_404(world: World) -> None:
    oak, elm = world.oak, world.elm
    eve = elm.pupils[0]
    for method, path, body in [
        ("POST", f"/api/v1/pupils/{eve}/invitations", {"email": "x@example.org"}),
        ("DELETE", f"/api/v1/pupils/{eve}/parents/someone", None),
        ("GET", f"/api/v1/pupils/{eve}/audit", None),
        ("GET", f"/api/v1/classes/{elm.class_id}/pupils", None),
    ]:
        r = await world.a.http.request(method, path, headers=bearer(oak.admin_token), json=body)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path, r.text)
    parent = await world.once("amy_parent", lambda: parent_of_amy(world))
    assert (await world.a.http.get(f"/api/v1/me/children/{eve}/overview", headers=bearer(parent))).status_code == 404
    for path in ("homework", "messages", "stars", "stars?week=2026-12-01"):
        r = await world.a.http.get(f"/api/v1/me/children/{eve}/{path}", headers=bearer(parent))
        assert r.status_code == 404 and r.json()["error"] == "not_found", (path, r.text)
    went = await world.a.http.get(f"/go/{eve}/homework", headers=bearer(parent))
    assert went.status_code == 404 and "location" not in went.headers
    assert (await world.a.http.get("/api/v1/classes", headers=bearer(parent))).status_code == 404


async def test_overview_numbers_and_partial_while_overview_is_away(world: World) -> None:
    token = await world.once("amy_parent", lambda: parent_of_amy(world))
    amy = world.oak.pupils[0]
    js = world.nc.jetstream()
    now = utcnow()
    for subject, ev in [
        (
            platform.HOMEWORK_ASSIGNED,
            platform.HomeworkAssigned(
                homework_id=uid("hw"),
                school_id=world.oak.school_id,
                pupil_ids=[amy],
                title="Fractions",
                due_at=now + timedelta(days=2),
            ),
        ),
        (platform.MESSAGE_DELIVERED, platform.MessageDelivered(message_id=uid("m"), pupil_id=amy)),
        (platform.STARS_AWARDED, platform.StarsAwarded(award_id=uid("s"), pupil_id=amy, stars=3)),
    ]:
        await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})

    async def numbers() -> dict | None:
        r = await world.a.http.get("/api/v1/me/overview", headers=bearer(token))
        child = r.json()["children"][0]
        return (
            child
            if (child["outstanding_homework"], child["unread_messages"], child["stars_this_week"]) == (1, 1, 3)
            else None
        )

    notices: list[float] = []
    loop = asyncio.get_running_loop()

    async def heard(_msg) -> None:
        notices.append(loop.time())

    sub = await world.nc.subscribe(oc.CHANGED_NOTICE, cb=heard)
    child = await eventually(numbers, timeout=10)
    assert child["next_due"][0]["title"] == "Fractions" and child["links"]["homework"].endswith(f"/go/{amy}/homework")

    # Overview may apply the three events in more than one batch, and announce the last batch
    # just after the gateway read its numbers: wait until it has said everything, then read
    # once more, so the gateway holds numbers no later notice will mark stale.
    async def quiet() -> bool:
        return not notices or loop.time() - notices[-1] > 0.5

    await eventually(quiet, timeout=10)
    await sub.unsubscribe()
    assert await numbers() is not None
    await world.overview.app.stop()
    try:
        r = await world.a.http.get("/api/v1/me/overview", headers=bearer(token))
        assert r.status_code == 200, r.text
        assert "partial" not in r.json() and r.json()["children"][0]["stars_this_week"] == 3, (
            "fresh in the gateway's memory"
        )
        # Overview says Amy's numbers changed (as a replica does after applying her events),
        # but no replica is there to answer: the last numbers seen, marked partial.
        await world.nc.publish(oc.CHANGED_NOTICE, oc.ChangedNotice(pupil_ids=[amy]).model_dump_json().encode())
        await world.nc.flush()

        async def partial() -> dict | None:
            body = (await world.a.http.get("/api/v1/me/overview", headers=bearer(token))).json()
            return body if body.get("partial") else None

        body = await eventually(partial, timeout=5)
        assert body["children"][0]["partial"] is True and body["children"][0]["stars_this_week"] == 3
        fresh = await world.b.http.get(f"/api/v1/me/children/{amy}/overview", headers=bearer(token))
        assert fresh.status_code == 200 and fresh.json()["partial"] is True
    finally:
        await world.overview.app.start()


async def test_a_childs_stars_reach_every_gateway_and_the_handoff_names_the_parent(world: World) -> None:
    token = await world.once("amy_parent", lambda: parent_of_amy(world))
    amy = world.oak.pupils[0]
    js = world.nc.jetstream()
    path = f"/api/v1/me/children/{amy}/stars"
    # Each gateway has read (and keeps) Amy's stars before the award.
    before = {g: (await g.http.get(path, headers=bearer(token))).json() for g in (world.a, world.b)}
    award = platform.StarsAwarded(award_id=uid("s"), pupil_id=amy, stars=2, reason="Helping a friend")
    await js.publish(platform.STARS_AWARDED, award.model_dump_json().encode(), headers={"Nats-Msg-Id": award.event_id})
    for gateway in (world.a, world.b):

        async def awarded(gateway=gateway) -> dict | None:
            body = (await gateway.http.get(path, headers=bearer(token))).json()
            return body if any(a["award_id"] == award.award_id for a in body["awards"]) else None

        body = await eventually(awarded, timeout=10)
        assert body["total"] == before[gateway]["total"] + 2
        assert [a["reason"] for a in body["awards"] if a["award_id"] == award.award_id] == ["Helping a friend"]
    went = await world.a.http.get(f"/go/{amy}/messages", headers=bearer(token))
    assert went.status_code == 303 and f"pupil={amy}&token=" in went.headers["location"]
