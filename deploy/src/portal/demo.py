"""Demo data for `portal up --demo`: a trust with schools, classes, pupils, staff and activity.

Everything goes in through the portal's real interfaces, as the platform, a school and parents
would use them: roster and activity as `platform.*` events, staff through
`rpc.identity.create_staff.v1`, printed codes through linking, and each demo parent through the
gateway's HTTP API (register with a code from the class's QR sheet, verify with the link from
the local mail sink, add the other children by code). A second run on the same data directory
finds the demo parents able to log in and only prints the logins again.
"""

from __future__ import annotations

import asyncio
import html
import mailbox
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from portal.settings import PortalSettings

TRUST_ID = "demo-trust"
TRUST_NAME = "Demo Learning Trust"
TIMEZONE = "Europe/London"
PASSWORD = "copper-kettle-meadow"
DOMAIN = "demo.parent-portal.example"
PUPILS_PER_CLASS = 25

# school id -> (name, [(class id, class name)]): 2 schools, 6 classes.
SCHOOLS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "demo-oak": (
        "Oak Primary School",
        [("demo-oak-2r", "Year 2 Robins"), ("demo-oak-4w", "Year 4 Wrens"), ("demo-oak-6k", "Year 6 Kestrels")],
    ),
    "demo-ash": (
        "Ash Academy",
        [("demo-ash-7c", "Year 7 Cedar"), ("demo-ash-8l", "Year 8 Larch"), ("demo-ash-9r", "Year 9 Rowan")],
    ),
}


@dataclass(frozen=True)
class DemoChild:
    """A pupil of the roster whom a demo parent links."""

    pupil_id: str
    first_name: str
    last_name: str
    class_id: str


@dataclass(frozen=True)
class DemoParent:
    """A demo parent and the children they link (the first one while registering)."""

    email: str
    name: str
    relationship: str
    children: tuple[DemoChild, ...]


@dataclass(frozen=True)
class DemoStaff:
    """A demo member of staff."""

    email: str
    name: str
    role: str
    school_id: str | None = None
    trust_id: str | None = None


PARENTS = (
    DemoParent(
        f"alex.morgan@{DOMAIN}", "Alex Morgan", "mother",
        (
            DemoChild("demo-oak-p001", "Ruby", "Morgan", "demo-oak-2r"),
            DemoChild("demo-oak-p002", "Leo", "Morgan", "demo-oak-6k"),
            DemoChild("demo-ash-p001", "Isla", "Morgan", "demo-ash-7c"),
        ),
    ),
    DemoParent(
        f"sam.patel@{DOMAIN}", "Sam Patel", "father",
        (
            DemoChild("demo-oak-p003", "Aarav", "Patel", "demo-oak-4w"),
            DemoChild("demo-ash-p002", "Maya", "Patel", "demo-ash-9r"),
        ),
    ),
    DemoParent(f"jordan.lee@{DOMAIN}", "Jordan Lee", "carer", (DemoChild("demo-ash-p003", "Ella", "Lee", "demo-ash-8l"),)),
)  # fmt: skip
STAFF = (
    DemoStaff(f"teacher.oak@{DOMAIN}", "Rhian Jones", "teacher", school_id="demo-oak"),
    DemoStaff(f"admin.oak@{DOMAIN}", "Priya Shah", "school_admin", school_id="demo-oak"),
    DemoStaff(f"teacher.ash@{DOMAIN}", "Tom Okafor", "teacher", school_id="demo-ash"),
    DemoStaff(f"admin.ash@{DOMAIN}", "Grace Hughes", "school_admin", school_id="demo-ash"),
    DemoStaff(f"trust.admin@{DOMAIN}", "Dan Whitfield", "trust_admin", trust_id=TRUST_ID),
)

FIRST_NAMES = (
    "Amelia", "Oliver", "Olivia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Sophia", "Charlie",
    "Grace", "Freddie", "Lily", "Arthur", "Freya", "Oscar", "Emily", "Theo", "Evie", "Alfie", "Poppy", "Jacob",
    "Ella", "Thomas", "Rosie", "Henry", "Zara", "Muhammad", "Aisha", "Kai", "Erin", "Finley", "Nia", "Rhys",
)  # fmt: skip
LAST_NAMES = (
    "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Thomas", "Johnson", "Roberts",
    "Robinson", "Thompson", "Wright", "Walker", "White", "Edwards", "Hughes", "Green", "Hall", "Lewis", "Harris",
    "Clarke", "Khan", "Ali", "Begum", "Wood", "Turner", "Hill", "Baker", "Price", "Ward", "Cooper", "Kaur",
)  # fmt: skip
SUBJECTS = (
    ("Maths", ("fractions worksheet", "times tables practice", "angles in shapes", "long division", "algebra puzzles")),
    ("English", ("book review", "spelling list", "persuasive letter", "poem to learn", "reading log")),
    ("Science", ("plant diary", "forces quiz", "states of matter", "the water cycle", "circuits poster")),
    ("History", ("Romans timeline", "castle fact file", "Victorian schools", "interview a grandparent")),
    ("Geography", ("river map", "weather record", "local area survey")),
)  # fmt: skip
MESSAGE_COUNT = (0, 1, 1, 2, 2, 3, 4)


def login_lines(gateway_url: str) -> list[str]:
    """What `portal up --demo` prints: where to log in and the demo accounts."""
    by_count = {len(p.children): p for p in PARENTS}
    oak_teacher, oak_admin, trust_admin = STAFF[0], STAFF[1], STAFF[4]
    rows = [
        (f"parent, {len(by_count[3].children)} children", by_count[3].email),
        ("parent, 2 children", by_count[2].email),
        ("parent, 1 child", by_count[1].email),
        ("teacher (Oak Primary)", oak_teacher.email),
        ("school admin (Oak Primary)", oak_admin.email),
        ("trust admin", trust_admin.email),
    ]
    pupils = PUPILS_PER_CLASS * sum(len(classes) for _, classes in SCHOOLS.values())
    classes = sum(len(c) for _, c in SCHOOLS.values())
    width, email_width = max(len(who) for who, _ in rows), max(len(email) for _, email in rows)
    return [
        f"Demo data: {TRUST_NAME}, {len(SCHOOLS)} schools, {classes} classes, {pupils} pupils. Log in at {gateway_url}/login",
        *(f"  {who.ljust(width)}  {email.ljust(email_width)}  password {PASSWORD}" for who, email in rows),
    ]


def seed_demo(settings: PortalSettings) -> list[str]:
    """Seed the demo trust into the running portal; return the lines telling how to log in."""
    started = time.monotonic()
    seeded = asyncio.run(_seed(settings))
    how = f"seeded in {time.monotonic() - started:.1f}s" if seeded else "already seeded in this data directory"
    return [f"portal: demo data {how}", *login_lines(settings.gateway_url)]


# -- the roster -------------------------------------------------------------------------------


def roster() -> dict[str, list[tuple[str, str, str]]]:
    """class id -> its pupils `(pupil_id, first_name, last_name)`, the demo children among them."""
    rng = random.Random(9)  # noqa: S311 - repeatable demo data, not a secret
    demo = {c.pupil_id: c for p in PARENTS for c in p.children}
    out: dict[str, list[tuple[str, str, str]]] = {}
    for school_id, (_, classes) in SCHOOLS.items():
        number = 0
        for class_id, _ in classes:
            pupils = [(c.pupil_id, c.first_name, c.last_name) for c in demo.values() if c.class_id == class_id]
            # Full names unique within a class: the QR sheet's cards are told apart by name.
            names = {(f, last) for _, f, last in pupils}
            while len(pupils) < PUPILS_PER_CLASS:
                name = (rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
                if name in names:
                    continue
                number += 1
                names.add(name)
                # From p101: the demo children have the low numbers.
                pupils.append((f"{school_id}-p{number + 100:03d}", *name))
            out[class_id] = pupils
    return out


def roster_events(classes: dict[str, list[tuple[str, str, str]]]) -> list[tuple[str, Any]]:
    """The platform's roster events for the demo trust, with ids fixed so a replay is a duplicate."""
    from contracts import platform

    events: list[tuple[str, Any]] = []
    for school_id, (name, school_classes) in SCHOOLS.items():
        events.append((platform.SCHOOL_UPSERTED, platform.SchoolUpserted(
            event_id=f"demo-school-{school_id}", trust_id=TRUST_ID, trust_name=TRUST_NAME, school_id=school_id,
            name=name, timezone=TIMEZONE,
        )))  # fmt: skip
        for class_id, class_name in school_classes:
            events.append((platform.CLASS_UPSERTED, platform.ClassUpserted(
                event_id=f"demo-class-{class_id}", school_id=school_id, class_id=class_id, name=class_name,
            )))  # fmt: skip
            for pid, first, last in classes[class_id]:
                events.append((platform.PUPIL_UPSERTED, platform.PupilUpserted(
                    event_id=f"demo-pupil-{pid}", school_id=school_id, pupil_id=pid, first_name=first, last_name=last,
                    class_ids=[class_id],
                )))  # fmt: skip
    return events


# -- activity: homework, messages and stars over this week and last ----------------------------


# What the demo's homework, messages say beyond their titles (the optional event fields).
DESCRIPTIONS = (
    "Answer the questions on the worksheet in full sentences.",
    "Spend about twenty minutes on it, and ask at home if you get stuck.",
    "Use the notes from Tuesday's lesson.",
)
SENDERS = ("Mrs Evans", "Mr Khan", "Miss Roberts", "Mr Davies")
MESSAGE_SUBJECTS = ("Well done this week", "Trip letter", "Reading at home", "Sports day kit", "Your project")


def activity_events(classes: dict[str, list[tuple[str, str, str]]], now: datetime) -> list[tuple[str, Any]]:
    """Homework, messages and stars over the last 14 days; every demo child has something of each."""
    from contracts import platform

    rng = random.Random(14)  # noqa: S311 - repeatable demo data, not a secret
    demo = {c.pupil_id for p in PARENTS for c in p.children}
    events: list[tuple[str, Any]] = []

    def ago(days: float) -> datetime:
        return now - timedelta(days=days)

    def add(subject: str, event: Any) -> None:
        events.append((subject, event))

    for n, (class_id, pupils) in enumerate(classes.items()):
        school_id = class_id.rsplit("-", 1)[0]
        # Five pieces of homework set 13, 9, 6, 3 and 1 days ago, each due a week after it
        # was set; the one of 6 days ago is withdrawn in every other class.
        for k, days in enumerate((13, 9, 6, 3, 1)):
            subject_name, titles = SUBJECTS[(n + k) % len(SUBJECTS)]
            hw = f"demo-hw-{class_id}-{k}"
            set_at = ago(days) - timedelta(hours=rng.uniform(0, 6))
            add(platform.HOMEWORK_ASSIGNED, platform.HomeworkAssigned(
                event_id=f"{hw}-assigned", occurred_at=set_at, homework_id=hw, school_id=school_id,
                pupil_ids=[p[0] for p in pupils], title=f"{subject_name}: {titles[(n + 2 * k) % len(titles)]}",
                due_at=(set_at + timedelta(days=7)).replace(hour=9, minute=0, second=0, microsecond=0),
                description=f"{DESCRIPTIONS[(n + k) % len(DESCRIPTIONS)]} Hand it in on the platform.",
            ))  # fmt: skip
            if days == 6 and n % 2:
                add(platform.HOMEWORK_WITHDRAWN, platform.HomeworkWithdrawn(
                    event_id=f"{hw}-withdrawn", occurred_at=ago(5), homework_id=hw,
                ))  # fmt: skip
            # Older homework is mostly handed in; demo children leave the two newest undone.
            done_share = 0.9 if days > 7 else 0.5 if days > 2 else 0.15
            for pid, _, _ in pupils:
                if (pid in demo and days <= 3) or rng.random() >= done_share:
                    continue
                add(platform.HOMEWORK_COMPLETED, platform.HomeworkCompleted(
                    event_id=f"{hw}-done-{pid}", occurred_at=set_at + timedelta(hours=rng.uniform(2, days * 24 - 1)),
                    homework_id=hw, pupil_id=pid,
                ))  # fmt: skip
        for pid, _, _ in pupils:
            messages = rng.choice(MESSAGE_COUNT) + (2 if pid in demo else 0)
            for m in range(messages):
                msg = f"demo-msg-{pid}-{m}"
                delivered = ago(rng.uniform(0.05, 14))
                add(platform.MESSAGE_DELIVERED, platform.MessageDelivered(
                    event_id=f"{msg}-delivered", occurred_at=delivered, message_id=msg, pupil_id=pid,
                    from_name=SENDERS[(n + m) % len(SENDERS)], subject=MESSAGE_SUBJECTS[(n + m) % len(MESSAGE_SUBJECTS)],
                    sent_at=delivered,
                ))  # fmt: skip
                # Demo children keep their two newest unread.
                if (pid in demo and m >= messages - 2) or rng.random() < 0.4:
                    continue
                add(platform.MESSAGE_READ, platform.MessageRead(
                    event_id=f"{msg}-read", occurred_at=min(now, delivered + timedelta(hours=rng.uniform(1, 30))),
                    message_id=msg, pupil_id=pid,
                ))  # fmt: skip
            awards = [ago(rng.uniform(0, 14)) for _ in range(rng.randint(0, 5))]
            if pid in demo:
                awards.append(now - timedelta(minutes=1))  # surely this week, whatever day it is
            for a, at in enumerate(awards):
                add(platform.STARS_AWARDED, platform.StarsAwarded(
                    event_id=f"demo-star-{pid}-{a}", occurred_at=at, award_id=f"demo-star-{pid}-{a}", pupil_id=pid,
                    stars=rng.choice((1, 1, 2, 3)), reason=rng.choice(("Great effort", "Kindness", "Super reading", "Teamwork")),
                ))  # fmt: skip
    return events


# -- seeding ----------------------------------------------------------------------------------


class DemoError(Exception):
    """The demo could not be seeded; the message says why."""


async def _seed(settings: PortalSettings) -> bool:
    import httpx
    import nats

    from contracts.base import utcnow
    from portal.roster import publish_all, wait_applied

    async def quiet(exc: Exception) -> None:
        pass  # nats-py prints a traceback per error by default

    nc = await nats.connect(
        settings.resolve_nats_servers(), error_cb=quiet, connect_timeout=5, **settings.nats_connect_options("operator")
    )
    try:
        async with httpx.AsyncClient(base_url=settings.gateway_url, timeout=30) as http:
            if await _already_seeded(http):
                return False
            maildir = settings.data_dir / "mail"
            if settings.smtp_url:
                raise DemoError(
                    "the demo parents verify their addresses through the local mail sink: unset PORTAL_SMTP_URL"
                )
            classes = roster()
            events = roster_events(classes)
            js = nc.jetstream()
            # Staff accounts need no roster: their password hashing overlaps the roster's wait.
            staff = asyncio.gather(*(_create_staff(nc, s) for s in STAFF))
            await publish_all(js, events)
            await wait_applied(nc, [e.event_id for _, e in events], timeout=60)
            codes = await _printed_codes(nc, classes)
            await asyncio.gather(*(_parent(http, p, codes, maildir) for p in PARENTS))
            await staff
            await publish_all(js, activity_events(classes, utcnow()))
            await _overview_caught_up(js)
            return True
    finally:
        await nc.close()


async def _login(http: Any, email: str) -> tuple[int, str | None]:
    r = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return r.status_code, (r.json()["access_token"] if r.status_code == 200 else None)


async def _already_seeded(http: Any) -> bool:
    parent = max(PARENTS, key=lambda p: len(p.children))
    status, token = await _login(http, parent.email)
    if status != 200:
        return False
    r = await http.get("/api/v1/me/children", headers={"Authorization": f"Bearer {token}"})
    return r.status_code == 200 and len(r.json()) == len(parent.children)


async def _create_staff(nc: Any, staff: DemoStaff) -> None:
    from contracts import identity
    from contracts.kit import rpc

    request = identity.CreateStaffRequest(
        email=staff.email,
        name=staff.name,
        role=staff.role,
        school_id=staff.school_id,
        trust_id=staff.trust_id,
        password=PASSWORD,
    )
    await rpc.call(nc, identity.CREATE_STAFF, request, timeout=20)


_CARD = re.compile(r'<section class="card" aria-label="([^"]*)">.*?<div class="code">([^<]*)</div>', re.S)


async def _printed_codes(nc: Any, classes: dict[str, list[tuple[str, str, str]]]) -> dict[str, str]:
    """pupil id -> printed code of each demo child, from their class's QR sheet (created if need be)."""
    from contracts import linking
    from contracts.kit import rpc

    scope = linking.StaffScope(school_ids=list(SCHOOLS))
    wanted = {c.class_id for p in PARENTS for c in p.children}
    codes: dict[str, str] = {}

    async def one_class(class_id: str) -> None:
        request = linking.ClassSheetRequest(scope=scope, actor_id="demo", class_id=class_id)
        try:
            sheet = await rpc.call(nc, linking.CLASS_SHEET, request, timeout=20)
        except rpc.RpcError as exc:
            if exc.code != linking.E_NO_CODE:
                raise
            create = linking.CreateCodesRequest(scope=scope, actor_id="demo", class_id=class_id)
            await rpc.call(nc, linking.CREATE_CODES, create, timeout=20)
            sheet = await rpc.call(nc, linking.CLASS_SHEET, request, timeout=20)
        by_name = {html.unescape(name): html.unescape(code).strip() for name, code in _CARD.findall(sheet.text or "")}
        for pid, first, last in classes[class_id]:
            if f"{first} {last}" in by_name:
                codes[pid] = by_name[f"{first} {last}"]

    await asyncio.gather(*(one_class(class_id) for class_id in sorted(wanted)))
    return codes


async def _parent(http: Any, parent: DemoParent, codes: dict[str, str], maildir: Path) -> None:
    """Register (or finish registering) one demo parent and link their children, as they would."""
    first, *others = parent.children
    status, token = await _login(http, parent.email)
    if status == 200:
        others = list(parent.children)  # an earlier run got this far: adding a linked child again is a no-op
    else:
        seen = set(await asyncio.to_thread(_mail_keys, maildir))
        if status == 403:  # registered earlier, never verified
            r = await http.post("/api/v1/auth/resend-verification", json={"email": parent.email})
        else:
            r = await http.post("/api/v1/auth/register", json={
                "email": parent.email, "password": PASSWORD, "name": parent.name, "accept_aup": True,
                "code": codes[first.pupil_id], "relationship": parent.relationship,
            })  # fmt: skip
        _expect(r, 202, f"registering {parent.email}")
        verify_token = await _verification_token(maildir, parent.email, seen)
        _expect(await http.post("/api/v1/auth/verify", json={"token": verify_token}), 200, f"verifying {parent.email}")
        status, token = await _login(http, parent.email)
        if status != 200:
            raise DemoError(f"{parent.email} cannot log in after verifying (HTTP {status})")
    auth = {"Authorization": f"Bearer {token}"}
    for child in others:
        body = {"code": codes[child.pupil_id], "relationship": parent.relationship, "accept_aup": True}
        r = await http.post("/api/v1/me/children", json=body, headers=auth)
        _expect(r, (200, 201), f"linking {child.first_name} {child.last_name} to {parent.email}")
    # Verification links the first child through an event: wait until every child shows linked.
    deadline = time.monotonic() + 20
    while True:
        r = await http.get("/api/v1/me/children", headers=auth)
        _expect(r, 200, f"listing {parent.email}'s children")
        statuses = {c["pupil_id"]: c["status"] for c in r.json()}
        if all(statuses.get(c.pupil_id) == "linked" for c in parent.children):
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{parent.email}'s children are not all linked: {statuses}")
        await asyncio.sleep(0.1)


def _expect(response: Any, status: int | tuple[int, ...], doing: str) -> None:
    allowed = status if isinstance(status, tuple) else (status,)
    if response.status_code not in allowed:
        raise DemoError(f"{doing}: HTTP {response.status_code} {response.text[:300]}")


def _mail_keys(maildir: Path) -> list[str]:
    try:
        return list(mailbox.Maildir(maildir, factory=None, create=False).keys())
    except (mailbox.NoSuchMailboxError, FileNotFoundError):
        return []


_VERIFY = re.compile(r"/verify\?token=([A-Za-z0-9_\-]+)")


def _find_verification(maildir: Path, email: str, seen: set[str]) -> str | None:
    try:
        box = mailbox.Maildir(maildir, factory=None, create=False)
    except (mailbox.NoSuchMailboxError, FileNotFoundError):
        return None
    for key in box.keys():  # noqa: SIM118 - a Maildir is not a dict: iterating it reads every message
        if key in seen:
            continue
        try:
            msg = BytesParser(policy=policy.default).parsebytes(box.get_bytes(key))
        except (KeyError, FileNotFoundError):
            continue
        if email.lower() not in str(msg["To"] or "").lower():
            continue
        body = msg.get_body(preferencelist=("plain",))
        found = _VERIFY.search(body.get_content() if body is not None else "")
        if found:
            return found.group(1)
    return None


async def _verification_token(maildir: Path, email: str, seen: set[str], timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        token = await asyncio.to_thread(_find_verification, maildir, email, seen)
        if token:
            return token
        await asyncio.sleep(0.1)
    raise DemoError(f"no verification email for {email} reached the mail sink ({maildir}) within {timeout:g}s")


async def _overview_caught_up(js: Any, timeout: float = 30) -> None:
    """Return once overview has applied every platform event published so far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = await js.consumer_info("PLATFORM", "overview-platform")
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
        except Exception:  # noqa: BLE001, S110 - not created yet, or a leader election: ask again
            pass
        await asyncio.sleep(0.1)
    raise DemoError(f"overview had not applied the demo activity within {timeout:g}s")
