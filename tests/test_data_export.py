"""A person's own data (`GET /api/v1/me/export`, the `/account` page): everything identity,
linking and notify hold about the caller, and nothing that works as a secret or belongs to
someone else.

A real NATS, the real identity, linking and notify services (notify sending to a real SMTP
server on loopback) and a gateway under uvicorn, spoken to over HTTP: a parent registers with a
printed code, verifies from the email, adds and unlinks a second child, is invited by email to a
third; another parent and a teacher use the same school.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx
import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from gateway_portal import cards
from helpers import eventually
from natsauth import authed_nats
from smtp_server import SmtpServer

from contracts import identity, platform
from contracts import linking as lc
from contracts.base import Event
from contracts.kit import rpc
from contracts.kit.service import migrate
from gateway.auth import csrf_token_for
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from linking.codes import new_key
from notify import app as notify_app
from portal.natsserver import free_port

pytestmark = pytest.mark.asyncio

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
STAFF_PASSWORD = "a long staff passphrase"
CHEAP_ARGON = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
CODE = re.compile(r"\b[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}\b")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Person:
    """A parent of the world: who they are, and every secret they were given."""

    email: str
    name: str
    token: str = ""
    account_id: str = ""
    secrets: list[str] = field(default_factory=list)


@dataclass
class World:
    gw: Gateway
    smtp: SmtpServer
    nc: nats.NATS
    school_id: str
    class_id: str
    pupils: dict[str, str]  # first name -> pupil id
    teacher_email: str
    teacher_token: str
    made: dict[str, Person] = field(default_factory=dict)

    @property
    def http(self) -> httpx.AsyncClient:
        return self.gw.http

    def mails(self, to: str) -> list[str]:
        return [m.part("plain") for m in self.smtp.to(to)]

    async def mail(self, to: str, subject: str) -> str:
        def found() -> list[str]:
            return [m.part("plain") for m in self.smtp.to(to) if m.subject == subject]

        await eventually(found, timeout=15, message=f"email {subject!r} to {to}")
        return found()[-1]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("export")

    def db(name: str) -> dict:
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
            }
            for module, s in settings.items():
                # One after the other: Alembic's environment is process-wide.
                await asyncio.to_thread(migrate, module, s)
                await stack.enter_async_context(module.build(s).running())
            gw = await stack.enter_async_context(
                running_gateway(GatewaySettings(nats_url=server.url, data_dir=tmp / "gw", public_url=PUBLIC_URL))
            )
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)

            school_id, class_id = uid("school"), uid("class")
            pupils = {first: uid("pupil") for first in ("Amy", "Ben", "Cat", "Dan")}
            events: list[tuple[str, Event]] = [
                (
                    platform.SCHOOL_UPSERTED,
                    platform.SchoolUpserted(
                        trust_id=uid("trust"), school_id=school_id, name="Oak Primary", timezone="Europe/London"
                    ),
                ),
                (
                    platform.CLASS_UPSERTED,
                    platform.ClassUpserted(school_id=school_id, class_id=class_id, name="Year 3"),
                ),
            ]
            for first, pupil_id in pupils.items():
                events.append(
                    (
                        platform.PUPIL_UPSERTED,
                        platform.PupilUpserted(
                            school_id=school_id,
                            pupil_id=pupil_id,
                            first_name=first,
                            last_name="Smith",
                            class_ids=[class_id],
                        ),
                    )
                )
            js = nc.jetstream()
            for subject, ev in events:
                await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})

            async def applied() -> bool:
                ids = [e.event_id for _, e in events]
                return not (await rpc.call(nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=ids))).missing

            await eventually(applied, timeout=15, message="roster applied")

            teacher = f"{uid('teacher')}@school.example"
            await rpc.call(
                nc,
                identity.CREATE_STAFF,
                identity.CreateStaffRequest(
                    email=teacher, name="Tess Teacher", role="teacher", school_id=school_id, password=STAFF_PASSWORD
                ),
                timeout=10,
            )
            login = await gw.http.post("/api/v1/auth/login", json={"email": teacher, "password": STAFF_PASSWORD})
            assert login.status_code == 200, login.text
            yield World(gw, smtp, nc, school_id, class_id, pupils, teacher, login.json()["access_token"])
    finally:
        smtp.stop()
        server.stop(kill=True)


async def printed_codes(world: World) -> dict[str, str]:
    """'Create QR codes' for the class; first name -> the typed code on the card."""
    created = await world.http.post(f"/api/v1/classes/{world.class_id}/codes", headers=bearer(world.teacher_token))
    assert created.status_code == 201, created.text
    sheet = await world.http.get(f"/api/v1/classes/{world.class_id}/qr-sheet", headers=bearer(world.teacher_token))
    assert sheet.status_code == 200, sheet.text
    return {name.split()[0]: code for name, code in cards(sheet.text).items()}


async def register_with_code(world: World, person: Person, code: str, relationship: str) -> None:
    """Register with a child's code, verify from the email, sign in."""
    body = {
        "email": person.email,
        "password": PASSWORD,
        "name": person.name,
        "accept_aup": True,
        "code": code,
        "relationship": relationship,
    }
    assert (await world.http.post("/api/v1/auth/register", json=body)).status_code == 202
    text = await world.mail(person.email, VERIFY_SUBJECT)
    found = re.search(re.escape(PUBLIC_URL) + r"/verify\?token=([\w-]+)", text)
    assert found, text
    person.secrets += [code, found[1]]
    assert (await world.http.post("/api/v1/auth/verify", json={"token": found[1]})).status_code == 200
    login = await world.http.post("/api/v1/auth/login", json={"email": person.email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    person.token = login.json()["access_token"]
    person.secrets.append(person.token)
    me = await world.http.get("/api/v1/me", headers=bearer(person.token))
    person.account_id = me.json()["id"]


async def mary(world: World) -> Person:
    """A parent with history: registered with Amy's code, added Ben by typed code and unlinked
    him, invited by email for Dan (not taken up), every email delivered."""
    if "mary" in world.made:
        return world.made["mary"]
    codes = await printed_codes(world)
    person = Person(f"{uid('mary')}@home.example", "Mary Exportwell")
    await register_with_code(world, person, codes["Amy"], "mother")
    ben = await world.http.post(
        "/api/v1/me/children", headers=bearer(person.token), json={"code": codes["Ben"], "relationship": "carer"}
    )
    assert ben.status_code == 201, ben.text
    person.secrets.append(codes["Ben"])
    unlinked = await world.http.delete(f"/api/v1/me/children/{world.pupils['Ben']}", headers=bearer(person.token))
    assert unlinked.status_code == 204, unlinked.text
    invited = await world.http.post(
        f"/api/v1/pupils/{world.pupils['Dan']}/invitations",
        headers=bearer(world.teacher_token),
        json={"email": person.email},
    )
    assert invited.status_code == 201, invited.text
    invitation = await eventually(
        lambda: [t for t in world.mails(person.email) if world.pupils["Dan"] in t or "Dan" in t],
        timeout=15,
        message="the invitation email",
    )
    invitation_code = CODE.search(invitation[-1])
    assert invitation_code, invitation[-1]
    person.secrets.append(invitation_code[0])
    world.made["mary"] = person
    return person


async def other_parent(world: World) -> Person:
    """Another parent of the same school: Cat's."""
    if "other" in world.made:
        return world.made["other"]
    codes = await printed_codes(world)
    person = Person(f"{uid('olga')}@elsewhere.example", "Olga Otherparent")
    await register_with_code(world, person, codes["Cat"], "father")
    world.made["other"] = person
    return person


async def export(world: World, token: str) -> httpx.Response:
    return await world.http.get("/api/v1/me/export", headers=bearer(token))


def assert_no_secret(text: str, secrets: list[str]) -> None:
    """None of `secrets` (nor their hashes, nor any password hash) appears in `text`."""
    lowered = text.lower()
    for secret in secrets:
        for form in {secret, secret.replace("-", ""), hashlib.sha256(secret.encode()).hexdigest()}:
            assert form.lower() not in lowered, f"{secret!r} is in the export"
    assert "argon2" not in lowered and "$argon" not in lowered, "a password hash is in the export"
    assert PASSWORD not in text
    assert not CODE.search(text), "something shaped like a link code is in the export"


# -- the API ------------------------------------------------------------------------------------


async def test_a_parents_export_holds_their_account_children_audit_emails_and_sessions(world: World) -> None:
    person = await mary(world)
    amy, ben, dan = world.pupils["Amy"], world.pupils["Ben"], world.pupils["Dan"]

    # Every email to Mary has been handed to the SMTP server: each shows as sent.
    async def all_sent() -> dict:
        answer = await export(world, person.token)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert len(body["emails"]) >= 3 and {e["status"] for e in body["emails"]} == {"sent"}, body["emails"]
        return body

    body = await eventually(all_sent, timeout=20, message="Mary's emails sent")

    account = body["account"]
    assert account["id"] == person.account_id
    assert account["email"] == person.email and account["name"] == person.name and account["role"] == "parent"
    assert account["created_at"] and account["verified_at"] and account["verified_at"] >= account["created_at"]
    assert (account["digest"], account["language"]) == ("weekly", "en"), "her preferences, as she left them"

    children = {c["pupil_id"]: c for c in body["children"]}
    assert set(children) == {amy, ben}, "the invitation for Dan was never taken up"
    assert children[amy] | {"since": None} == {
        "pupil_id": amy,
        "first_name": "Amy",
        "last_name": "Smith",
        "school_name": "Oak Primary",
        "relationship": "mother",
        "status": "linked",
        "since": None,
        "ended_at": None,
    }
    assert children[ben]["relationship"] == "carer" and children[ben]["status"] == "removed"
    assert children[ben]["ended_at"] and children[ben]["ended_at"] >= children[ben]["since"]

    actions = [(a["action"], a["pupil_id"]) for a in body["audit"]]
    assert actions == [
        ("link_created", amy),
        ("link_activated", amy),
        ("link_created", ben),
        ("link_removed", ben),
    ], actions
    assert [a["at"] for a in body["audit"]] == sorted(a["at"] for a in body["audit"])
    assert all(set(a) == {"at", "action", "pupil_id"} for a in body["audit"]), "no staff id, no reason"
    assert dan not in json.dumps(body["audit"])

    kinds = [e["kind"] for e in body["emails"]]
    assert {"verification", "link_activated", "invitation"} <= set(kinds), kinds
    assert all(set(e) == {"at", "kind", "status"} for e in body["emails"])

    assert len(body["sessions"]) >= 1
    assert all(s["created_at"] and s["last_seen_at"] >= s["created_at"] for s in body["sessions"])
    assert set(body) == {"account", "children", "audit", "emails", "sessions"}


async def test_the_export_holds_no_code_token_or_password_hash(world: World) -> None:
    person = await mary(world)
    answer = await export(world, person.token)
    assert answer.status_code == 200, answer.text
    # The session token, the verification token, both printed codes and the invitation's code.
    assert len(person.secrets) == 5
    assert_no_secret(answer.text, person.secrets)


async def test_the_export_is_a_file_no_one_keeps_a_copy_of(world: World) -> None:
    person = await mary(world)
    answer = await export(world, person.token)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    assert re.fullmatch(
        r'attachment; filename="parent-portal-data-\d{4}-\d{2}-\d{2}\.json"', answer.headers["content-disposition"]
    ), answer.headers["content-disposition"]
    assert answer.headers["cache-control"] == "no-store"


async def test_another_parents_data_never_appears(world: World) -> None:
    mine, theirs = await mary(world), await other_parent(world)
    cat = world.pupils["Cat"]
    mine_text = (await export(world, mine.token)).text
    for word in (theirs.email, theirs.name, theirs.account_id, cat, "Cat", "father"):
        assert word not in mine_text, f"{word!r} of the other parent is in Mary's export"
    theirs_answer = await export(world, theirs.token)
    assert theirs_answer.status_code == 200
    body = theirs_answer.json()
    assert body["account"]["email"] == theirs.email
    assert [c["pupil_id"] for c in body["children"]] == [cat]
    assert {a["pupil_id"] for a in body["audit"]} == {cat}
    for word in (mine.email, mine.name, mine.account_id, world.pupils["Amy"], world.pupils["Ben"]):
        assert word not in theirs_answer.text, f"{word!r} of Mary is in the other parent's export"
    assert_no_secret(theirs_answer.text, theirs.secrets + mine.secrets)


async def test_a_staff_export_holds_their_account_and_sessions_only(world: World) -> None:
    await mary(world)  # the teacher invited Mary and printed codes: none of that is theirs
    answer = await export(world, world.teacher_token)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["account"]["email"] == world.teacher_email and body["account"]["role"] == "teacher"
    assert body["account"]["verified_at"]
    assert body["children"] == [] and body["audit"] == [] and body["emails"] == []
    assert len(body["sessions"]) >= 1
    for word in (world.made["mary"].email, world.pupils["Dan"], world.pupils["Amy"], "Oak Primary"):
        assert word not in answer.text
    assert_no_secret(answer.text, [world.teacher_token, STAFF_PASSWORD])


async def test_an_export_needs_a_live_session(world: World) -> None:
    anonymous = await world.http.get("/api/v1/me/export")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    forged = await export(world, "not-a-session-token")
    assert forged.status_code == 401 and forged.json()["error"] == "unauthorized"

    person = await other_parent(world)
    login = await world.http.post("/api/v1/auth/login", json={"email": person.email, "password": PASSWORD})
    token = login.json()["access_token"]
    assert (await export(world, token)).status_code == 200
    assert (await world.http.post("/api/v1/auth/logout", headers=bearer(token))).status_code in (200, 204)
    ended = await export(world, token)
    assert ended.status_code == 401 and ended.json()["error"] == "unauthorized"
    assert "email" not in ended.text


# -- the /account page --------------------------------------------------------------------------


def cookie(token: str) -> dict[str, str]:
    return {"cookie": f"portal_session={token}"}


async def test_the_account_page_shows_the_details_and_downloads_the_same_file(world: World) -> None:
    person = await mary(world)
    home = await world.http.get("/", headers=cookie(person.token))
    assert home.status_code == 200 and 'href="/account"' in home.text, "the account page is one tap from home"

    page = await world.http.get("/account", headers=cookie(person.token))
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert person.name in page.text and person.email in page.text
    assert 'href="/account/export"' in page.text
    assert 'action="/account/delete"' in page.text and 'type="password"' in page.text
    assert f'name="csrf_token" value="{csrf_token_for(person.token)}"' in page.text
    assert page.headers["cache-control"] == "no-store"

    download = await world.http.get("/account/export", headers=cookie(person.token))
    api = await export(world, person.token)
    assert download.status_code == 200, download.text
    assert download.json() == api.json()
    assert download.headers["content-disposition"] == api.headers["content-disposition"]
    assert download.headers["cache-control"] == "no-store"
    assert_no_secret(download.text, person.secrets)


async def test_the_account_page_is_a_parents_and_needs_a_session(world: World) -> None:
    for path in ("/account", "/account/export"):
        signed_out = await world.http.get(path)
        assert signed_out.status_code == 303 and signed_out.headers["location"].startswith("/login"), path
        staff = await world.http.get(path, headers=cookie(world.teacher_token))
        assert staff.status_code == 404, (path, staff.status_code)
        assert world.teacher_email not in staff.text
    teacher_home = await world.http.get("/", headers=cookie(world.teacher_token))
    assert teacher_home.status_code == 200 and 'href="/account"' not in teacher_home.text


async def test_the_delete_form_needs_its_token_and_a_password(world: World) -> None:
    person = await other_parent(world)
    no_token = await world.http.post("/account/delete", data={"password": PASSWORD}, headers=cookie(person.token))
    assert no_token.status_code == 403 and "expired" in no_token.text
    empty = await world.http.post(
        "/account/delete",
        data={"password": "", "csrf_token": csrf_token_for(person.token)},
        headers=cookie(person.token),
    )
    assert empty.status_code == 400 and "Enter your password" in empty.text
    assert (await export(world, person.token)).status_code == 200, "nothing was deleted"


async def test_deleting_from_the_account_page_asks_for_the_right_password(world: World) -> None:
    person = Person(f"{uid('gone')}@home.example", "Gina Goner")
    codes = await printed_codes(world)
    await register_with_code(world, person, codes["Dan"], "grandparent")
    form = {"csrf_token": csrf_token_for(person.token)}

    wrong = await world.http.post(
        "/account/delete", data={**form, "password": "not the password at all"}, headers=cookie(person.token)
    )
    assert wrong.status_code == 403 and "not right" in wrong.text, wrong.text
    assert (await export(world, person.token)).status_code == 200, "a wrong password deletes nothing"

    done = await world.http.post("/account/delete", data={**form, "password": PASSWORD}, headers=cookie(person.token))
    assert done.status_code == 303 and done.headers["location"] == "/login", done.text
    assert any(
        h.startswith("portal_session=;") or 'portal_session=""' in h for h in done.headers.get_list("set-cookie")
    )
    assert (await export(world, person.token)).status_code == 401
    login = await world.http.post("/api/v1/auth/login", json={"email": person.email, "password": PASSWORD})
    assert login.status_code == 401
