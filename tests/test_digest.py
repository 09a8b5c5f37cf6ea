"""The weekly and daily digest, end to end over a real NATS with the real identity, linking,
notify (two replicas) and overview, a gateway and a real SMTP server: when it is due in the
school's timezone, what it says, that it goes once per parent and day however many runs ask,
its RFC 8058 one-click unsubscribe, and `portal digest run --at`."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from gateway_harness import Gateway, bearer, running_gateway
from helpers import eventually
from natsauth import CREDS_DIR, authed_nats
from smtp_server import Received, SmtpServer
from sqlalchemy import select
from sqlmodel import col
from test_journeys import staff_token, uid

from contracts import linking as lc
from contracts import notify as nc_contract
from contracts import platform
from contracts.base import Event
from contracts.kit import rpc
from contracts.kit.service import migrate
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app
from linking.codes import new_key
from notify import app as notify_app
from notify.digest import due_day
from notify.tables import BULK, Email
from overview import app as overview_app
from portal.natsserver import free_port

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
WEEKLY = "Your weekly Parent Portal summary"
DAILY = "Your daily Parent Portal summary"
CHEAP_ARGON = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}
PORTAL = str(Path(sys.executable).with_name("portal"))

# Friday 27 November 2026; London is on UTC in winter, Auckland on UTC+13.
FRIDAY_1600_LONDON = datetime(2026, 11, 27, 16, 0, tzinfo=UTC)
FRIDAY_1600_AUCKLAND = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


@dataclass
class School:
    school_id: str
    class_id: str
    pupils: list[str]
    names: dict[str, str] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    teacher_token: str = ""


@dataclass
class World:
    gw: Gateway
    smtp: SmtpServer
    nc: nats.NATS
    nats_url: str
    notify: list[notify_app.NotifyRuntime]
    london: School
    auckland: School

    def digests(self, to: str) -> list[Received]:
        return [m for m in self.smtp.to(to) if m.subject in (WEEKLY, DAILY)]

    async def run(self, at: datetime, replica: int = 0) -> nc_contract.DigestRunReply:
        # Each replica's own handler: two replicas, not two requests one replica may take both of.
        return await self.notify[replica].digest_runs.run_request(nc_contract.DigestRunRequest(at=at))

    async def ledger(self, parent_id: str) -> list[tuple[str, str]]:
        async with self.notify[0].db.reader() as s:
            rows = await s.execute(
                select(col(Email.request_id), col(Email.status), col(Email.priority)).where(
                    col(Email.request_id).like(f"digest:{parent_id}:%")
                )
            )
            found = list(rows.tuples())
        # Every digest is bulk: the emails a person waits for go before it.
        assert all(priority == BULK for _, _, priority in found), found
        return sorted((r, st) for r, st, _ in found)


async def roster(nc: nats.NATS, name: str, timezone: str, first_names: list[str]) -> School:
    school = School(uid("school"), uid("class"), [uid("pupil") for _ in first_names])
    events: list[tuple[str, Event]] = [
        (
            platform.SCHOOL_UPSERTED,
            platform.SchoolUpserted(trust_id=uid("trust"), school_id=school.school_id, name=name, timezone=timezone),
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
    await publish(nc, events)

    async def applied() -> bool:
        status = await rpc.call(nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=[e.event_id for _, e in events]))
        return not status.missing

    await eventually(applied, timeout=15)
    return school


async def publish(nc: nats.NATS, events: list[tuple[str, Event]]) -> None:
    js = nc.jetstream()
    for subject, ev in events:
        await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("digest")

    def db(name: str) -> dict:
        return {} if request.param == "sqlite" else {"database_url": request.getfixturevalue("pg").create(name)}

    server = authed_nats(tmp / "nats")
    smtp = SmtpServer(free_port()).start()
    common = {"nats_url": server.url, "public_url": PUBLIC_URL}
    try:
        async with AsyncExitStack() as stack:
            notify_db = db("notify")
            settings = {
                identity_app: identity_app.Settings(
                    data_dir=tmp / "identity", **common, **CHEAP_ARGON, **db("identity")
                ),
                linking_app: linking_app.Settings(
                    data_dir=tmp / "linking", linking_code_key=new_key(), **common, **db("linking")
                ),
                # The schedule off: each test says when a run happens.
                notify_app: notify_app.Settings(
                    data_dir=tmp / "notify", smtp_url=smtp.url, notify_digest_every_seconds=0, **common, **notify_db
                ),
                overview_app: overview_app.Settings(data_dir=tmp / "overview", **common, **db("overview")),
            }
            runtimes = {}
            for module, s in settings.items():
                await asyncio.to_thread(migrate, module, s)
                runtimes[module] = module.build(s)
                await stack.enter_async_context(runtimes[module].running())
            # A second notify replica on the same ledger.
            second = notify_app.build(settings[notify_app])
            await stack.enter_async_context(second.running())
            gw = await stack.enter_async_context(
                running_gateway(GatewaySettings(nats_url=server.url, data_dir=tmp / "gw", public_url=PUBLIC_URL))
            )
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)
            london = await roster(
                nc, "Oak Primary", "Europe/London", ["Amy", "Ben", "Cat", "Dan", "Eve", "Fay", "Gwen"]
            )
            auckland = await roster(nc, "Kauri School", "Pacific/Auckland", ["Huia"])
            for school in (london, auckland):
                school.teacher_token = await staff_token(gw, nc, school.school_id, "teacher")
                await printed_codes(gw, school)
            yield World(gw, smtp, nc, server.url, [runtimes[notify_app], second], london, auckland)
    finally:
        smtp.stop()
        server.stop(kill=True)


async def printed_codes(world_gw: Gateway, school: School) -> None:
    """'Create QR codes' for the class; each pupil's typed code, read off the printable sheet."""
    created = await world_gw.http.post(f"/api/v1/classes/{school.class_id}/codes", headers=bearer(school.teacher_token))
    assert created.status_code == 201, created.text
    sheet = await world_gw.http.get(f"/api/v1/classes/{school.class_id}/qr-sheet", headers=bearer(school.teacher_token))
    assert sheet.status_code == 200
    for pid, first in school.names.items():
        card = re.search(re.escape(first) + r".*?class=\"code\">([0-9A-Z-]{14})<", sheet.text, re.S)
        assert card, f"no card for {first}"
        school.codes[pid] = card[1]


async def parent(world: World, school: School | None = None, pupil_id: str | None = None) -> tuple[str, str, str]:
    """A verified parent (linked to `pupil_id` when given): (email, account id, session token)."""
    email = f"{uid('parent')}@example.org"
    extra = {}
    if school is not None and pupil_id is not None:
        extra = {"code": school.codes[pupil_id], "relationship": "mother"}
    reg = await world.gw.http.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "name": "Mary Smith", "accept_aup": True, **extra},
    )
    assert reg.status_code == 202, reg.text
    await eventually(lambda: [m for m in world.smtp.to(email) if m.subject == VERIFY_SUBJECT], timeout=15)
    text = next(m for m in world.smtp.to(email) if m.subject == VERIFY_SUBJECT).part("plain")
    token = re.search(re.escape(PUBLIC_URL) + r"/verify\?token=([\w-]+)", text)[1]
    assert (await world.gw.http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    login = await world.gw.http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    session = login.json()["access_token"]
    me = (await world.gw.http.get("/api/v1/me", headers=bearer(session))).json()
    if pupil_id is not None:

        async def linked() -> bool:
            kids = (await world.gw.http.get("/api/v1/me/children", headers=bearer(session))).json()
            return any(k["pupil_id"] == pupil_id and k["status"] == "linked" for k in kids)

        await eventually(linked, timeout=15)
    return email, me["id"], session


async def set_digest(world: World, session: str, value: str) -> None:
    r = await world.gw.http.put("/api/v1/me/preferences", headers=bearer(session), json={"digest": value})
    assert r.status_code == 200, r.text


async def sent(world: World, parent_id: str, count: int) -> None:
    """Wait until the parent's `count` digests are all sent."""

    async def done() -> bool:
        rows = await world.ledger(parent_id)
        return len(rows) == count and all(st == "sent" for _, st in rows)

    await eventually(done, timeout=20, message=f"{count} digests sent")


def test_due_day_is_a_rule_of_the_schedule_and_the_school_timezone() -> None:
    assert due_day("weekly", "Europe/London", datetime(2026, 11, 27, 15, 59, tzinfo=UTC)) is None
    assert str(due_day("weekly", "Europe/London", datetime(2026, 11, 27, 16, 0, tzinfo=UTC))) == "2026-11-27"
    # Late in the evening still sends that day's; Monday morning never sends Friday's.
    assert str(due_day("weekly", "Europe/London", datetime(2026, 11, 27, 23, 59, tzinfo=UTC))) == "2026-11-27"
    assert due_day("weekly", "Europe/London", datetime(2026, 11, 30, 9, 0, tzinfo=UTC)) is None
    assert due_day("weekly", "Europe/London", datetime(2026, 11, 30, 16, 0, tzinfo=UTC)) is None
    assert str(due_day("daily", "Europe/London", datetime(2026, 11, 30, 16, 0, tzinfo=UTC))) == "2026-11-30"
    assert due_day("daily", "Europe/London", datetime(2026, 11, 28, 16, 0, tzinfo=UTC)) is None
    # Summer time: 16:00 in London is 15:00 UTC.
    assert str(due_day("weekly", "Europe/London", datetime(2026, 7, 3, 15, 0, tzinfo=UTC))) == "2026-07-03"
    assert str(due_day("weekly", "Pacific/Auckland", FRIDAY_1600_AUCKLAND)) == "2026-11-27"
    assert due_day("weekly", "Pacific/Auckland", datetime(2026, 11, 27, 2, 59, tzinfo=UTC)) is None


async def test_a_weekly_digest_on_friday_at_1600_in_london_with_the_children_news(world: World) -> None:
    amy = world.london.pupils[0]
    email, parent_id, _ = await parent(world, world.london, amy)
    at = FRIDAY_1600_LONDON
    await publish(
        world.nc,
        [
            (
                platform.HOMEWORK_ASSIGNED,
                platform.HomeworkAssigned(
                    homework_id=uid("hw"), school_id=world.london.school_id, pupil_ids=[amy],
                    title="Spelling list 4", due_at=datetime(2026, 11, 25, 9, 0, tzinfo=UTC),
                ),
            ),
            (
                platform.HOMEWORK_ASSIGNED,
                platform.HomeworkAssigned(
                    homework_id=uid("hw"), school_id=world.london.school_id, pupil_ids=[amy],
                    title="Fractions worksheet", due_at=datetime(2026, 12, 2, 9, 0, tzinfo=UTC),
                ),
            ),
            (
                platform.MESSAGE_DELIVERED,
                platform.MessageDelivered(
                    message_id=uid("msg"), pupil_id=amy, from_name="Mr Jones", subject="Trip on Monday",
                    sent_at=datetime(2026, 11, 26, 10, 0, tzinfo=UTC),
                ),
            ),
            (
                platform.STARS_AWARDED,
                platform.StarsAwarded(
                    award_id=uid("star"), pupil_id=amy, stars=2, reason="Kindness to a new classmate",
                    occurred_at=datetime(2026, 11, 25, 11, 0, tzinfo=UTC),
                ),
            ),
            (
                platform.STARS_AWARDED,
                platform.StarsAwarded(
                    award_id=uid("star"), pupil_id=amy, stars=5, reason="Last week's reading",
                    occurred_at=datetime(2026, 11, 18, 11, 0, tzinfo=UTC),
                ),
            ),
        ],
    )  # fmt: skip

    await eventually(lambda: _overview_has(world, amy), timeout=15)

    early = await world.run(datetime(2026, 11, 27, 15, 59, tzinfo=UTC))
    assert early.recipients >= 1
    assert await world.ledger(parent_id) == []

    first = await world.run(at)
    assert first.recorded >= 1
    await sent(world, parent_id, 1)
    [msg] = world.digests(email)
    assert msg.subject == WEEKLY
    text, html = msg.part("plain"), msg.part("html")
    assert "Amy" in text and "Oak Primary" in text
    assert re.search(r"OVERDUE: Spelling list 4, due Wed 25 Nov, 09:00", text), text
    assert "Fractions worksheet, due Wed 2 Dec, 09:00" in text and "OVERDUE: Fractions" not in text
    assert "Trip on Monday, from Mr Jones" in text
    assert "Stars this week: 2" in text and "2 stars: Kindness to a new classmate" in text
    assert "Last week's reading" not in text
    assert f"{PUBLIC_URL}/go/{amy}/homework" in text and f"{PUBLIC_URL}/go/{amy}/messages" in text
    assert f"{PUBLIC_URL}/account" in text
    assert "Overdue:" in html and "Kindness to a new classmate" in html and f'href="{PUBLIC_URL}/account"' in html

    # RFC 8058's headers, the URL under the public URL and outside the API.
    unsubscribe = str(msg.message["List-Unsubscribe"]).strip()
    assert re.fullmatch(re.escape(f"<{PUBLIC_URL}/unsubscribe/") + r"[\w-]{20,}>", unsubscribe), unsubscribe
    assert msg.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # Again, later the same evening, and on both replicas at once: nothing more.
    await world.run(at)
    both = await asyncio.gather(
        world.run(datetime(2026, 11, 27, 18, 0, tzinfo=UTC), 0), world.run(datetime(2026, 11, 27, 18, 0, tzinfo=UTC), 1)
    )
    assert all(r.already >= 1 for r in both)
    assert len(await world.ledger(parent_id)) == 1
    # Monday morning does not send Friday's again either.
    await world.run(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    await sent(world, parent_id, 1)
    assert len(world.digests(email)) == 1


async def _overview_has(world: World, pupil_id: str) -> bool:
    from contracts import overview as oc

    reply = await rpc.call(world.nc, oc.STARS, oc.StarsRequest(pupil_id=pupil_id, week=FRIDAY_1600_LONDON.date()))
    return reply.total == 2


async def test_two_replicas_running_at_the_same_moment_send_one_digest_each(world: World) -> None:
    parents = [await parent(world, world.london, pid) for pid in world.london.pupils[1:3]]
    at = datetime(2026, 11, 27, 16, 30, tzinfo=UTC)
    runs = await asyncio.gather(*(world.run(at, i % 2) for i in range(4)))
    assert sum(r.recorded for r in runs) >= 2
    for email, parent_id, _ in parents:
        await sent(world, parent_id, 1)
        assert len(world.digests(email)) == 1


async def test_daily_goes_on_monday_not_on_saturday_and_weekly_not_on_monday(world: World) -> None:
    daily_email, daily_id, session = await parent(world, world.london, world.london.pupils[3])
    weekly_email, weekly_id, _ = await parent(world, world.london, world.london.pupils[4])
    await set_digest(world, session, "daily")
    await world.run(datetime(2026, 11, 28, 17, 0, tzinfo=UTC))  # Saturday
    assert await world.ledger(daily_id) == []
    await world.run(datetime(2026, 11, 30, 16, 0, tzinfo=UTC))  # Monday
    await sent(world, daily_id, 1)
    assert [m.subject for m in world.digests(daily_email)] == [DAILY]
    assert await world.ledger(weekly_id) == []
    assert world.digests(weekly_email) == []


async def test_a_school_in_another_timezone_has_its_own_16_00(world: World) -> None:
    email, parent_id, _ = await parent(world, world.auckland, world.auckland.pupils[0])
    await world.run(datetime(2026, 11, 27, 2, 59, tzinfo=UTC))
    assert await world.ledger(parent_id) == []
    await world.run(FRIDAY_1600_AUCKLAND)
    await sent(world, parent_id, 1)
    assert [r for r, _ in await world.ledger(parent_id)] == [f"digest:{parent_id}:2026-11-27"]
    [msg] = world.digests(email)
    assert "Huia" in msg.part("plain") and "Kauri School" in msg.part("plain")


async def test_a_parent_who_reads_welsh_gets_the_digest_in_welsh(world: World) -> None:
    email, parent_id, session = await parent(world, world.london, world.london.pupils[6])
    chosen = await world.gw.http.put("/api/v1/me/preferences", headers=bearer(session), json={"language": "cy"})
    assert chosen.status_code == 200, chosen.text
    await world.run(FRIDAY_1600_LONDON + timedelta(minutes=20))
    await sent(world, parent_id, 1)
    [msg] = [m for m in world.smtp.to(email) if m.message["Content-Language"] == "cy"]
    assert msg.subject == "Eich crynodeb wythnosol gan Borth Rhieni"
    text = msg.part("plain")
    assert "Dyma eich crynodeb wythnosol gan Borth Rhieni" in text and "fel yr oedd ar 27 Tachwedd 2026." in text
    assert "Negeseuon heb eu darllen" in text and "Dad-danysgrifio:" in text
    assert msg.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_a_parent_with_no_linked_child_gets_none(world: World) -> None:
    email, parent_id, _ = await parent(world)
    reply = await world.run(datetime(2026, 11, 27, 16, 45, tzinfo=UTC))
    assert reply.no_children >= 1
    assert await world.ledger(parent_id) == []
    assert world.digests(email) == []


async def test_one_click_unsubscribe_turns_the_digest_off_and_an_altered_token_changes_nothing(world: World) -> None:
    email, parent_id, session = await parent(world, world.london, world.london.pupils[5])
    await world.run(datetime(2026, 11, 27, 17, 0, tzinfo=UTC))
    await sent(world, parent_id, 1)
    url = str(world.digests(email)[0].message["List-Unsubscribe"]).strip().strip("<>")
    path = url.removeprefix(PUBLIC_URL)
    one_click = {"List-Unsubscribe": "One-Click"}

    # Opening the link (as a mail scanner does) changes nothing: a page with a button.
    page = await world.gw.http.get(path)
    assert page.status_code == 200 and "Unsubscribe" in page.text and 'name="List-Unsubscribe"' in page.text
    altered = path[:-1] + ("A" if path[-1] != "A" else "B")
    for bad in (altered, "/unsubscribe/nonsense", f"{path}x"):
        r = await world.gw.http.post(bad, data=one_click)
        assert r.status_code == 400, (bad, r.status_code)
    assert (await world.gw.http.post(path, data={"List-Unsubscribe": "Something-Else"})).status_code == 400
    prefs = await world.gw.http.get("/api/v1/me/preferences", headers=bearer(session))
    assert prefs.json()["digest"] == "weekly"

    # The mail program's POST: no session, no CSRF token, from wherever it comes.
    r = await world.gw.http.post(path, data=one_click, headers={"Origin": "https://webmail.example"})
    assert r.status_code == 200, r.text
    prefs = await world.gw.http.get("/api/v1/me/preferences", headers=bearer(session))
    assert prefs.json()["digest"] == "off"
    # A second click says the same.
    assert (await world.gw.http.post(path, data=one_click)).status_code == 200
    # Next Friday: nothing for them.
    await world.run(datetime(2026, 12, 4, 16, 0, tzinfo=UTC))
    assert len(await world.ledger(parent_id)) == 1


async def test_portal_digest_run_at_a_moment(world: World) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env |= {"PORTAL_NATS_URL": world.nats_url, "PORTAL_NATS_CREDS_DIR": str(CREDS_DIR)}
    run = await asyncio.to_thread(
        subprocess.run,
        [PORTAL, "digest", "run", "--at", "2026-11-20T16:00:00Z"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert re.search(r"digests at 2026-11-20T16:00:00\+00:00: \d+ sent, \d+ already sent", run.stdout), run.stdout
    bad = await asyncio.to_thread(
        subprocess.run,
        [PORTAL, "digest", "run", "--at", "next friday"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "ISO 8601" in bad.stderr
    naive = await asyncio.to_thread(
        subprocess.run,
        [PORTAL, "digest", "run", "--at", "2026-11-20T16:00"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert naive.returncode != 0 and "offset" in naive.stderr
