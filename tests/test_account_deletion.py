"""A parent deletes their account (`DELETE /api/v1/me`, `portal parent delete`), over a real NATS
with the real identity, linking and notify services, two gateway replicas and a real SMTP
server: sessions end at once everywhere, every link ends with an audit row holding the parent's
id only, notify forgets their emails, a service that was down when it happened applies it when it
comes back, and the address is gone from every service's database file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from helpers import eventually
from natsauth import authed_nats
from smtp_server import SmtpServer
from sqlalchemy import text

from contracts import identity, notify, platform
from contracts import linking as lc
from contracts.kit import rpc
from contracts.kit.db import Database
from contracts.kit.service import migrate
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from linking.codes import new_key
from notify import app as notify_app
from portal.natsserver import free_port

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
STAFF_PASSWORD = "a long staff passphrase"
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
CHEAP_ARGON = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}
PORTAL = str(Path(sys.executable).with_name("portal"))
IN_A_DAY = datetime.now(UTC) + timedelta(days=1)
ERASURE_SECONDS = 30  # "Erasure is erasure": gone from every database file within 30 s


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Notify:
    """Notify, which a test may stop and start again."""

    settings: notify_app.Settings
    stack: AsyncExitStack | None = None

    async def start(self) -> None:
        self.stack = AsyncExitStack()
        await self.stack.enter_async_context(notify_app.build(self.settings).running())

    async def stop(self) -> None:
        assert self.stack is not None
        await self.stack.aclose()
        self.stack = None


@dataclass
class World:
    a: Gateway
    b: Gateway
    smtp: SmtpServer
    nc: nats.NATS
    nats_url: str
    notify: Notify
    school_id: str
    class_id: str
    pupils: dict[str, str]  # first name -> pupil id
    admin_token: str
    teacher_token: str
    data_dirs: list[Path]
    db_urls: dict[str, str]
    sqlite: bool
    codes: dict[str, str] = field(default_factory=dict)

    def emails(self, to: str, subject: str) -> list[str]:
        return [m.part("plain") for m in self.smtp.to(to) if m.subject == subject]

    async def email(self, to: str, subject: str) -> str:
        await eventually(lambda: self.emails(to, subject), timeout=15, message=f"email {subject!r} to {to}")
        return self.emails(to, subject)[-1]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("erasure")
    sqlite = request.param == "sqlite"

    def db(name: str) -> dict:
        return {} if sqlite else {"database_url": request.getfixturevalue("pg").create(name)}

    server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    common = {"nats_url": server.url, "public_url": PUBLIC_URL}
    try:
        async with AsyncExitStack() as stack:
            id_settings = identity_app.Settings(data_dir=tmp / "identity", **common, **CHEAP_ARGON, **db("identity"))
            link_settings = linking_app.Settings(
                data_dir=tmp / "linking", linking_code_key=new_key(), **common, **db("linking")
            )
            notify_settings = notify_app.Settings(data_dir=tmp / "notify", smtp_url=smtp.url, **common, **db("notify"))
            for module, s in ((identity_app, id_settings), (linking_app, link_settings), (notify_app, notify_settings)):
                await asyncio.to_thread(migrate, module, s)
            await stack.enter_async_context(identity_app.build(id_settings).running())
            await stack.enter_async_context(linking_app.build(link_settings).running())
            notify = Notify(notify_settings)
            await notify.start()

            async def stop_notify() -> None:
                if notify.stack is not None:
                    await notify.stop()

            stack.push_async_callback(stop_notify)
            gw = {"nats_url": server.url, "data_dir": tmp / "gw", "public_url": PUBLIC_URL}
            a = await stack.enter_async_context(running_gateway(GatewaySettings(**gw)))
            b = await stack.enter_async_context(running_gateway(GatewaySettings(**gw)))
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)

            school_id, class_id = uid("school"), uid("class")
            pupils = {first: uid("pupil") for first in ("Amy", "Ben", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal")}
            events = [
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
            ] + [
                (
                    platform.PUPIL_UPSERTED,
                    platform.PupilUpserted(
                        school_id=school_id, pupil_id=pid, first_name=first, last_name="Smith", class_ids=[class_id]
                    ),
                )
                for first, pid in pupils.items()
            ]
            js = nc.jetstream()
            for subject, ev in events:
                await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})

            async def applied() -> bool:
                status = await rpc.call(
                    nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=[e.event_id for _, e in events])
                )
                return not status.missing

            await eventually(applied, timeout=15)
            tokens = {}
            for role in ("school_admin", "teacher"):
                email = f"{uid(role)}@school.example"
                await rpc.call(
                    nc,
                    identity.CREATE_STAFF,
                    identity.CreateStaffRequest(
                        email=email, name="Staff Person", role=role, school_id=school_id, password=STAFF_PASSWORD
                    ),
                    timeout=10,
                )
                login = await a.http.post("/api/v1/auth/login", json={"email": email, "password": STAFF_PASSWORD})
                assert login.status_code == 200, login.text
                tokens[role] = login.json()["access_token"]
            world = World(
                a,
                b,
                smtp,
                nc,
                server.url,
                notify,
                school_id,
                class_id,
                pupils,
                tokens["school_admin"],
                tokens["teacher"],
                [tmp / "identity", tmp / "linking", tmp / "notify"],
                {
                    "identity": id_settings.resolved_database_url(),
                    "linking": link_settings.resolved_database_url(),
                    "notify": notify_settings.resolved_database_url(),
                },
                sqlite,
            )
            created = await a.http.post(f"/api/v1/classes/{class_id}/codes", headers=bearer(world.teacher_token))
            assert created.status_code == 201, created.text
            sheet = await a.http.get(f"/api/v1/classes/{class_id}/qr-sheet", headers=bearer(world.teacher_token))
            for first, pid in pupils.items():
                card = re.search(re.escape(first) + r".*?class=\"code\">([0-9A-Z-]{14})<", sheet.text, re.S)
                assert card, f"no card for {first}"
                world.codes[pid] = card[1]
            yield world
    finally:
        smtp.stop()
        server.stop(kill=True)


@dataclass
class Parent:
    email: str
    name: str
    token: str
    id: str
    pupils: list[str]


async def parent_with_two_children(world: World, invited: str, printed: str) -> Parent:
    """A parent invited by the school for one child (registering with the invitation's code, at
    the invited address), who then adds a second child with its printed code."""
    email = f"{uid('erase')}@example.org"  # lower case: the address and its key are the same bytes
    name = f"Zelda {uuid.uuid4().hex[:6].title()}"
    pupil_a, pupil_b = world.pupils[invited], world.pupils[printed]
    sent = await world.a.http.post(
        f"/api/v1/pupils/{pupil_a}/invitations", headers=bearer(world.teacher_token), json={"email": email}
    )
    assert sent.status_code == 201, sent.text
    invitation = await world.email(email, f"Oak Primary invites you to see {invited}'s schoolwork")
    code = re.search(re.escape(PUBLIC_URL) + r"/link/([0-9A-Z-]{14})", invitation)
    assert code
    reg = await world.a.http.post(
        "/api/v1/auth/register",
        json={
            "email": email,
            "password": PASSWORD,
            "name": name,
            "accept_aup": True,
            "code": code[1],
            "relationship": "mother",
        },
    )
    assert reg.status_code == 202, reg.text
    verify = await world.email(email, VERIFY_SUBJECT)
    token = re.search(re.escape(PUBLIC_URL) + r"/verify\?token=([\w-]+)", verify)
    assert token
    assert (await world.a.http.post("/api/v1/auth/verify", json={"token": token[1]})).status_code == 200
    login = await world.a.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    session = login.json()["access_token"]
    added = await world.a.http.post(
        "/api/v1/me/children",
        headers=bearer(session),
        json={"code": world.codes[pupil_b], "relationship": "mother"},
    )
    assert added.status_code == 201, added.text

    async def both_linked() -> bool:
        r = await world.a.http.get("/api/v1/me/children", headers=bearer(session))
        return {c["pupil_id"]: c["status"] for c in r.json()} == {pupil_a: "linked", pupil_b: "linked"}

    await eventually(both_linked, timeout=10, message="both children linked")
    me = await world.a.http.get("/api/v1/me", headers=bearer(session))
    parent = Parent(email, name, session, me.json()["id"], [pupil_a, pupil_b])
    return parent


async def parents_shown_to_staff(world: World, pupil_id: str) -> list[dict]:
    r = await world.a.http.get(f"/api/v1/classes/{world.class_id}/pupils", headers=bearer(world.teacher_token))
    assert r.status_code == 200, r.text
    return next(p for p in r.json() if p["pupil_id"] == pupil_id)["parents"]


async def delete_me(gw: Gateway, token: str, password: str = PASSWORD):
    return await gw.http.request("DELETE", "/api/v1/me", headers=bearer(token), json={"password": password})


async def notify_rows(world: World, parent: Parent) -> int:
    """How many of notify's emails are about the parent or to their address."""
    db = Database(world.db_urls["notify"])
    try:
        async with db.reader() as s:
            found = await s.execute(
                text("SELECT count(*) FROM emails WHERE parent_id = :p OR recipient_key = :e OR recipient = :e"),
                {"p": parent.id, "e": parent.email},
            )
            return int(found.scalar_one())
    finally:
        await db.dispose()


async def test_a_parent_deletes_their_account_and_everything_about_them_ends(world: World) -> None:
    parent = await parent_with_two_children(world, "Amy", "Ben")
    amy, ben = parent.pupils
    # Both replicas know the session before the deletion.
    for gw in (world.a, world.b):
        assert (await gw.http.get("/api/v1/me", headers=bearer(parent.token))).status_code == 200
    assert [p["parent_id"] for p in await parents_shown_to_staff(world, amy)] == [parent.id]

    wrong = await delete_me(world.a, parent.token, "not my password at all")
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong_password", wrong.text
    still = await world.b.http.get("/api/v1/me/children", headers=bearer(parent.token))
    assert still.status_code == 200 and {c["pupil_id"] for c in still.json()} == {amy, ben}, "nothing changed"

    deleted = await delete_me(world.a, parent.token)
    assert deleted.status_code == 204, deleted.text
    assert "max-age=0" in deleted.headers.get("set-cookie", "").lower(), "the session cookie is cleared"
    # The other replica had the session in memory: it ended there before the answer.
    assert (await world.b.http.get("/api/v1/me", headers=bearer(parent.token))).status_code == 401
    again = await delete_me(world.b, parent.token)
    assert again.status_code == 401, again.text
    login = await world.a.http.post("/api/v1/auth/login", json={"email": parent.email, "password": PASSWORD})
    assert login.status_code == 401

    async def gone_from_staff_view() -> bool:
        return not await parents_shown_to_staff(world, amy) and not await parents_shown_to_staff(world, ben)

    await eventually(gone_from_staff_view, timeout=10, message="staff no longer see the parent")
    r = await world.a.http.get(f"/api/v1/classes/{world.class_id}/pupils", headers=bearer(world.teacher_token))
    assert parent.email not in r.text and parent.name not in r.text, "the accepted invitation's address is erased"

    for pupil in (amy, ben):
        audit = await world.a.http.get(f"/api/v1/pupils/{pupil}/audit", headers=bearer(world.admin_token))
        assert audit.status_code == 200, audit.text
        removed = [row for row in audit.json() if row["action"] == "link_removed"]
        assert [(row["parent_id"], row["reason"]) for row in removed] == [(parent.id, "account_deleted")]
        assert parent.email not in audit.text and parent.name not in audit.text

    await eventually(lambda: _zero(notify_rows(world, parent)), timeout=10, message="notify forgot the emails")

    # The address registers again: a new account, with no children.
    token = await register_and_sign_in(world, parent.email)
    me = (await world.a.http.get("/api/v1/me", headers=bearer(token))).json()
    assert me["id"] != parent.id and me["email"] == parent.email
    assert (await world.a.http.get("/api/v1/me/children", headers=bearer(token))).json() == []


async def _zero(count) -> bool:
    return await count == 0


async def register_and_sign_in(world: World, email: str) -> str:
    before = len(world.emails(email, VERIFY_SUBJECT))
    body = {"email": email, "password": PASSWORD, "name": "Someone New", "accept_aup": True}
    assert (await world.a.http.post("/api/v1/auth/register", json=body)).status_code == 202
    await eventually(lambda: len(world.emails(email, VERIFY_SUBJECT)) > before, timeout=15)
    verify = world.emails(email, VERIFY_SUBJECT)[-1]
    token = re.search(re.escape(PUBLIC_URL) + r"/verify\?token=([\w-]+)", verify)
    assert token
    assert (await world.a.http.post("/api/v1/auth/verify", json={"token": token[1]})).status_code == 200
    login = await world.a.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return login.json()["access_token"]


async def test_staff_cannot_delete_their_account_through_the_api(world: World) -> None:
    r = await delete_me(world.a, world.teacher_token, STAFF_PASSWORD)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    assert (await world.a.http.get("/api/v1/me", headers=bearer(world.teacher_token))).status_code == 200


async def test_a_deletion_without_a_password_changes_nothing(world: World) -> None:
    token = await register_and_sign_in(world, f"{uid('nopw')}@example.org")
    for body in ({}, {"password": ""}, {"password": 5}):
        r = await world.a.http.request("DELETE", "/api/v1/me", headers=bearer(token), json=body)
        assert r.status_code == 422, r.text
    assert (await world.b.http.get("/api/v1/me", headers=bearer(token))).status_code == 200


async def test_notify_down_at_the_deletion_erases_when_it_comes_back(world: World) -> None:
    parent = await parent_with_two_children(world, "Cat", "Dan")
    assert await notify_rows(world, parent) > 0
    sent_before = len(world.smtp.to(parent.email))
    await world.notify.stop()
    try:
        assert (await delete_me(world.a, parent.token)).status_code == 204
        await eventually(lambda: _no_parents(world, parent.pupils), timeout=10, message="linking applied the deletion")
        assert await notify_rows(world, parent) > 0, "notify was away: its rows are still there"
    finally:
        await world.notify.start()
    await eventually(lambda: _zero(notify_rows(world, parent)), timeout=15, message="notify applied it on return")

    # A request about the parent that was still on its way (a reset asked just before) is
    # dropped, not recorded with the address; the next request, to someone else, is sent.
    late = notify.PasswordResetEmail(
        to=parent.email, parent_id=parent.id, reset_url=f"{PUBLIC_URL}/reset-password?token=t", expires_at=IN_A_DAY
    )
    other = f"{uid('other')}@example.org"
    marker = notify.PasswordResetEmail(to=other, reset_url=f"{PUBLIC_URL}/reset-password?token=u", expires_at=IN_A_DAY)
    js = world.nc.jetstream()
    for request in (late, marker):
        await js.publish(
            notify.request_subject(request.kind),
            request.model_dump_json().encode(),
            headers={"Nats-Msg-Id": request.event_id},
        )
    await eventually(lambda: world.smtp.to(other), timeout=15, message="the request after it was sent")
    assert await notify_rows(world, parent) == 0
    assert len(world.smtp.to(parent.email)) == sent_before, "nothing more was sent to the deleted address"


async def _no_parents(world: World, pupils: list[str]) -> bool:
    for pupil in pupils:
        if await parents_shown_to_staff(world, pupil):
            return False
    return True


def run_portal(args: list[str], nats_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTAL_NATS_URL": nats_url}
    return subprocess.run([PORTAL, *args], capture_output=True, text=True, env=env, timeout=60)


async def test_portal_parent_delete_does_the_same_without_a_password(world: World) -> None:
    parent = await parent_with_two_children(world, "Eve", "Fay")
    done = await asyncio.to_thread(run_portal, ["parent", "delete", "--email", parent.email.upper()], world.nats_url)
    assert done.returncode == 0, done.stderr
    assert parent.id in done.stdout
    for gw in (world.a, world.b):
        assert (await gw.http.get("/api/v1/me", headers=bearer(parent.token))).status_code == 401
    await eventually(lambda: _no_parents(world, parent.pupils), timeout=10, message="links ended")
    for pupil in parent.pupils:
        audit = (await world.a.http.get(f"/api/v1/pupils/{pupil}/audit", headers=bearer(world.admin_token))).json()
        assert [(r["parent_id"], r["reason"]) for r in audit if r["action"] == "link_removed"] == [
            (parent.id, "account_deleted")
        ]
    missing = await asyncio.to_thread(run_portal, ["parent", "delete", "--email", parent.email], world.nats_url)
    assert missing.returncode == 1 and "No account has that email address" in missing.stderr
    staff = await asyncio.to_thread(
        run_portal, ["parent", "delete", "--email", "nobody-staff@school.example"], world.nats_url
    )
    assert staff.returncode == 1


async def test_portal_parent_delete_by_id_as_the_audit_names_it(world: World) -> None:
    """After restoring a backup, an operator deletes again the accounts the audit trails say were
    deleted since: by id, since the address is not in the audit."""
    parent = await parent_with_two_children(world, "Gus", "Hal")
    both = await asyncio.to_thread(
        run_portal, ["parent", "delete", "--email", parent.email, "--id", parent.id], world.nats_url
    )
    neither = await asyncio.to_thread(run_portal, ["parent", "delete"], world.nats_url)
    assert both.returncode == 2 and neither.returncode == 2
    assert (await world.a.http.get("/api/v1/me", headers=bearer(parent.token))).status_code == 200, "nothing changed"
    done = await asyncio.to_thread(run_portal, ["parent", "delete", "--id", parent.id], world.nats_url)
    assert done.returncode == 0, done.stderr
    for gw in (world.a, world.b):
        assert (await gw.http.get("/api/v1/me", headers=bearer(parent.token))).status_code == 401
    await eventually(lambda: _no_parents(world, parent.pupils), timeout=10, message="links ended")
    again = await asyncio.to_thread(run_portal, ["parent", "delete", "--id", parent.id], world.nats_url)
    assert again.returncode == 1 and "No account has that id" in again.stderr


def _files_holding(dirs: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for d in dirs:
        for path in d.rglob("*"):
            if path.is_file() and (path.suffix in (".db", ".sqlite") or path.name.endswith(("-wal", "-journal"))):
                data = path.read_bytes()
                found += [f"{path.name}: {n.decode()}" for n in needles if n in data]
    return found


async def test_the_address_and_name_leave_every_database_file(world: World) -> None:
    if not world.sqlite:
        pytest.skip("the files are SQLite's; PostgreSQL's are the database server's")
    parent = await parent_with_two_children(world, "Amy", "Fay")
    needles = [parent.email.encode(), parent.name.encode()]
    assert _files_holding(world.data_dirs, needles[:1]), "the address is in the files before"
    assert (await delete_me(world.b, parent.token)).status_code == 204
    # Linking and notify apply the deletion, then every file must lose the address.
    await eventually(lambda: _zero(notify_rows(world, parent)), timeout=10)

    def erased() -> bool:
        holding = _files_holding(world.data_dirs, needles)
        assert not holding, f"still in: {holding}"
        return True

    await eventually(erased, timeout=ERASURE_SECONDS, interval=0.5)
