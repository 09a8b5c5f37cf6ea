"""Secrets at rest and retention, attacked through the public interface: a delivered (or given
up) email's working code, link or token is gone from every service's database files within 30
seconds, the work queue keeps no request notify acknowledged, a dead-lettered email request
keeps no link, code or address (and cannot be replayed), and `portal retention run` erases
ended sessions, finished emails, processed events and a leaver's roster copy and projections.

The four services keep their SQLite files in one data directory, which the tests read byte by
byte (database files and write-ahead logs), as someone holding a copy of the disk would.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from helpers import eventually
from natsauth import authed_nats
from smtp_server import SmtpServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from test_journeys import PUBLIC_URL, School, roster, staff_token, uid

from contracts import identity, platform
from contracts import linking as lc
from contracts import notify as nc_contract
from contracts.base import utcnow
from contracts.kit import rpc
from contracts.kit.deadletters import list_dead_letters
from contracts.kit.service import migrate
from contracts.streams import NOTIFY_REQUESTS
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from notify import app as notify_app
from overview import app as overview_app
from portal.natsserver import free_port

PORTAL = str(Path(sys.executable).with_name("portal"))
CHEAP_ARGON = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}
STAFF_PASSWORD = "a long staff passphrase"
# Every retention at 0 days, as an operator would set them, read by each service from its environment.
RETENTION_ENV = {
    "PORTAL_RETENTION_EMAIL_DAYS": "0",
    "PORTAL_RETENTION_SESSION_DAYS": "0",
    "PORTAL_RETENTION_EVENT_DAYS": "0",
    "PORTAL_RETENTION_LEAVER_DAYS": "0",
}
INVITE_SUBJECT = "Oak Primary invites you to see Amy's schoolwork"


@dataclass
class World:
    http: Gateway
    smtp: SmtpServer
    nc: nats.NATS
    nats_url: str
    data: Path
    oak: School
    teacher: str


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("data-protection")
    data = tmp / "data"
    server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    common = {"nats_url": server.url, "public_url": PUBLIC_URL, "data_dir": data}
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in RETENTION_ENV.items():
                env.setenv(name, value)
            async with AsyncExitStack() as stack:
                settings = {
                    identity_app: identity_app.Settings(**common, **CHEAP_ARGON),
                    linking_app: linking_app.Settings(**common),
                    notify_app: notify_app.Settings(smtp_url=smtp.url, **common),
                    overview_app: overview_app.Settings(**common),
                }
                for module, s in settings.items():
                    assert s.retention_email_days == 0 and s.retention_leaver_days == 0
                    await asyncio.to_thread(migrate, module, s)
                    await stack.enter_async_context(module.build(s).running())
                gw = GatewaySettings(nats_url=server.url, data_dir=tmp / "gw", public_url=PUBLIC_URL)
                http = await stack.enter_async_context(running_gateway(gw))
                nc = await nats.connect(server.url)
                stack.push_async_callback(nc.close)
                oak = await roster(nc, uid("trust"), "Oak Primary", ["Amy", "Ben", "Cat"])
                teacher = await staff_token(http, nc, oak.school_id, "teacher")
                yield World(http, smtp, nc, server.url, data, oak, teacher)
    finally:
        smtp.stop()
        server.stop(kill=True)


def files_holding(data: Path, *secrets: str) -> list[str]:
    """Each database file (and write-ahead log) of the data directory that holds any of `secrets`."""
    needles = [s.encode() for s in secrets if s]
    found = []
    for path in sorted(data.iterdir()):
        if ".db" not in path.name:
            continue
        content = path.read_bytes()
        found += [f"{path.name}: {n.decode()}" for n in needles if n in content]
    return found


async def gone_within_30_seconds(world: World, *secrets: str) -> None:
    await eventually(
        lambda: not files_holding(world.data, *secrets),
        timeout=30,
        interval=0.5,
        message=f"secrets gone from the files (still in {files_holding(world.data, *secrets)})",
    )


async def query(world: World, database: str, sql: str, **params) -> list[tuple]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{world.data / database}")
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


def run_portal(world: World, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTAL_NATS_URL": world.nats_url}
    return subprocess.run([PORTAL, *args], capture_output=True, text=True, env=env, timeout=120)


async def invite(world: World, pupil_id: str, address: str) -> None:
    response = await world.http.http.post(
        f"/api/v1/pupils/{pupil_id}/invitations", headers=bearer(world.teacher), json={"email": address}
    )
    assert response.status_code == 201, response.text


async def email_text(world: World, address: str, subject: str) -> str:
    def found() -> list[str]:
        return [m.part("plain") for m in world.smtp.to(address) if m.subject == subject]

    await eventually(found, timeout=15, message=f"email {subject!r}")
    return found()[-1]


async def requests_waiting(world: World) -> int:
    info = await world.nc.jetstream().stream_info(NOTIFY_REQUESTS.name)
    return info.state.messages


# -- secrets at rest ------------------------------------------------------------------------------


async def test_a_delivered_invitations_code_and_link_leave_every_database_file(world: World) -> None:
    address = f"{uid('mum')}@example.org"
    await invite(world, world.oak.pupils[0], address)
    body = await email_text(world, address, INVITE_SUBJECT)
    link = re.search(re.escape(PUBLIC_URL) + r"/link/([0-9A-Z-]{14})", body)
    assert link, body
    code = link[1]
    await gone_within_30_seconds(world, link[0], code, code.replace("-", ""))
    assert await requests_waiting(world) == 0, "the work queue keeps no request notify acknowledged"
    # The record of the email stays (without content) until the email retention.
    rows = await query(world, "notify.db", "SELECT status, content FROM emails WHERE kind = 'invitation'")
    assert ("sent", None) in rows


async def test_a_delivered_reset_emails_token_leaves_every_database_file(world: World) -> None:
    address = f"{uid('head')}@school.example"
    await rpc.call(
        world.nc,
        identity.CREATE_STAFF,
        identity.CreateStaffRequest(
            email=address, name="Hana Head", role="school_admin", school_id=world.oak.school_id, password=STAFF_PASSWORD
        ),
        timeout=10,
    )
    assert (await world.http.http.post("/api/v1/auth/password-reset", json={"email": address})).status_code == 202
    body = await email_text(world, address, "Reset your Parent Portal password")
    token = re.search(r"/reset-password\?token=([\w-]+)", body)
    assert token, body
    await gone_within_30_seconds(world, token[1])
    # The link still works: it was erased from the files, not spent.
    reset = await world.http.http.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token[1], "password": "another long passphrase"}
    )
    assert reset.status_code in (200, 204), reset.text


async def test_an_invitation_the_mail_server_rejects_keeps_no_code_or_link(world: World) -> None:
    address = f"{uid('nobody')}@example.org"
    world.smtp.handler.reject[address.lower()] = "550 5.1.1 no such user"
    requested: list[dict] = []

    async def seen(msg) -> None:
        body = json.loads(msg.data)
        if body.get("to") == address:
            requested.append(body)

    # A plain subscriber sees the request as it passes, before notify records it.
    sub = await world.nc.subscribe(nc_contract.request_subject("invitation"), cb=seen)
    await world.nc.flush()
    try:
        await invite(world, world.oak.pupils[1], address)
        await eventually(lambda: requested, timeout=10, message="the invitation's email request")
    finally:
        await sub.unsubscribe()
    request = requested[0]

    async def failed() -> bool:
        rows = await query(world, "notify.db", "SELECT status FROM emails WHERE request_id = :r", r=request["event_id"])
        return rows == [("failed",)]

    await eventually(failed, timeout=15, message="the rejected email given up")
    await gone_within_30_seconds(world, request["link_url"], request["code"], request["code"].replace("-", ""))


async def test_a_dead_lettered_email_request_keeps_no_code_link_or_address_and_is_not_replayed(world: World) -> None:
    code, link, address = "QWER-TYUI-PASD", f"{PUBLIC_URL}/link/QWER-TYUI-PASD", f"{uid('dl')}@example.org"
    event_id = uuid.uuid4().hex
    # Valid but for a name longer than any request may carry: notify cannot apply it.
    poison = {
        "event_id": event_id,
        "occurred_at": utcnow().isoformat(),
        "kind": "invitation",
        "to": address,
        "to_name": "N" * 300,
        "reference": "invitation:dead",
        "school_name": "Oak Primary",
        "pupil_first_name": "Amy",
        "link_url": link,
        "code": code,
        "expires_at": (utcnow() + timedelta(days=7)).isoformat(),
    }
    js = world.nc.jetstream()
    await js.publish(
        nc_contract.request_subject("invitation"), json.dumps(poison).encode(), headers={"Nats-Msg-Id": event_id}
    )

    async def letter():
        letters = [d for d in await list_dead_letters(js) if d.consumer == "notify-requests"]
        return letters[-1] if letters else None

    dead = await eventually(letter, timeout=15, message="the request dead-lettered")
    kept = (await js.get_msg("DEADLETTERS", dead.id)).data or b""
    for secret in (code, link, address, "QWERTYUIPASD"):
        assert secret.encode() not in kept, kept
    assert json.loads(kept)["event_id"] == event_id, "the dead letter still says which request it was"
    assert await requests_waiting(world) == 0

    replay = await asyncio.to_thread(run_portal, world, "dead-letters", "replay", str(dead.id))
    assert replay.returncode == 1, replay.stdout
    assert "cannot be sent again" in replay.stderr


# -- retention ------------------------------------------------------------------------------------


def erased(output: str, service: str) -> dict[str, int]:
    line = next(line for line in output.splitlines() if line.startswith(f"{service}: erased "))
    return {k: int(v) for k, v in (part.rsplit(" ", 1) for part in line.split(": erased ", 1)[1].split(", "))}


async def test_retention_run_erases_ended_sessions_finished_emails_and_processed_events(world: World) -> None:
    address = f"{uid('dad')}@example.org"
    await invite(world, world.oak.pupils[2], address)
    await email_text(world, address, "Oak Primary invites you to see Cat's schoolwork")

    async def finished() -> bool:
        return bool(await query(world, "notify.db", "SELECT 1 FROM emails WHERE status IN ('sent', 'failed')"))

    await eventually(finished, timeout=15, message="an email finished")
    # A session that ended: a member of staff signs in, then out.
    token = await staff_token(world.http, world.nc, world.oak.school_id, "teacher")
    assert (await world.http.http.post("/api/v1/auth/logout", headers=bearer(token))).status_code == 204
    assert await query(world, "identity.db", "SELECT 1 FROM sessions WHERE revoked_at IS NOT NULL")

    done = await asyncio.to_thread(run_portal, world, "retention", "run")
    assert done.returncode == 0, done.stderr
    assert erased(done.stdout, "identity")["sessions"] >= 1
    assert erased(done.stdout, "notify")["emails"] >= 1
    assert erased(done.stdout, "linking")["processed_events"] >= 1
    assert set(erased(done.stdout, "overview")) >= {"processed_events", "homework", "messages", "stars"}

    assert not await query(world, "identity.db", "SELECT 1 FROM sessions WHERE revoked_at IS NOT NULL")
    assert not await query(world, "notify.db", "SELECT 1 FROM emails WHERE status IN ('sent', 'failed')")
    assert not await query(world, "linking.db", "SELECT 1 FROM processed_events")
    # The teacher's session, still working, is kept.
    assert (await world.http.http.get("/api/v1/me", headers=bearer(world.teacher))).status_code == 200


async def test_a_leavers_roster_copy_and_projections_are_erased_after_the_leaver_retention(world: World) -> None:
    surname = "Quillfeather"
    school = await roster(world.nc, uid("trust"), "Elm Academy", ["Lena", "Mo"])
    # Give both pupils the unusual surname, so the files can be searched for it.
    js = world.nc.jetstream()
    upserts = [
        platform.PupilUpserted(
            school_id=school.school_id, pupil_id=pid, first_name=first, last_name=surname, class_ids=[school.class_id]
        )
        for pid, first in school.names.items()
    ]
    leaver, stayer = school.pupils
    facts: list[tuple[str, object]] = [(platform.PUPIL_UPSERTED, ev) for ev in upserts]
    facts.append(
        (
            platform.HOMEWORK_ASSIGNED,
            platform.HomeworkAssigned(
                homework_id=uid("hw"),
                school_id=school.school_id,
                pupil_ids=[leaver, stayer],
                title="Fractions",
                due_at=utcnow() + timedelta(days=2),
            ),
        )
    )
    facts += [
        (platform.STARS_AWARDED, platform.StarsAwarded(award_id=uid("star"), pupil_id=p, stars=2))
        for p in (leaver, stayer)
    ]
    for subject, ev in facts:
        await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})  # type: ignore[attr-defined]

    async def projected() -> bool:
        rows = await query(
            world, "overview.db", "SELECT pupil_id FROM star_awards WHERE pupil_id IN (:a, :b)", a=leaver, b=stayer
        )
        return len(rows) == 2

    await eventually(projected, timeout=15, message="the stars projected")

    left = platform.PupilLeft(pupil_id=leaver)
    await js.publish(platform.PUPIL_LEFT, left.model_dump_json().encode(), headers={"Nats-Msg-Id": left.event_id})

    async def applied() -> bool:
        status = await rpc.call(world.nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=[left.event_id]))
        overview = await query(
            world, "overview.db", "SELECT 1 FROM pupils WHERE pupil_id = :p AND left_at IS NOT NULL", p=leaver
        )
        return not status.missing and bool(overview)

    await eventually(applied, timeout=15, message="the departure applied by linking and overview")

    done = await asyncio.to_thread(run_portal, world, "retention", "run")
    assert done.returncode == 0, done.stderr
    assert erased(done.stdout, "linking")["leavers"] == 1
    assert erased(done.stdout, "overview")["stars"] >= 1

    for table in ("homework_pupils", "star_awards"):
        rows = await query(
            world, "overview.db", f"SELECT pupil_id FROM {table} WHERE pupil_id IN (:a, :b)", a=leaver, b=stayer
        )
        assert rows == [(stayer,)], f"{table}: only the pupil who stayed keeps their projection"
    pupils = await query(
        world,
        "linking.db",
        "SELECT pupil_id, first_name, last_name FROM pupils WHERE pupil_id IN (:a, :b)",
        a=leaver,
        b=stayer,
    )
    assert sorted(pupils) == sorted([(leaver, "", ""), (stayer, school.names[stayer], surname)])
    assert not await query(world, "linking.db", "SELECT 1 FROM class_members WHERE pupil_id = :p", p=leaver)
    # The leaver's name is gone from the file itself; the stayer's is still there.
    await gone_within_30_seconds(world, school.names[leaver] + surname)
