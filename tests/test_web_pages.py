"""The web pages in a real browser (Debian's Chromium driven by Playwright) against a real
`portal up` on a free port, its mail read from a real SMTP server on loopback.

Journeys, in file order, sharing one portal and one browser: staff invite by email and the
parent registers and verifies from the emails; the QR path from a printed code's URL; a second
child added by typed code and switching between children; staff removing one child's access
(the sibling stays); a parent unlinking a child; school admin pages; forgot and reset password;
a parent downloading their data from their account page.
Every page is screenshotted at 390×844 and 1280×800 into test-artifacts/screenshots/ and
checked with axe-core: no serious or critical violation.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import nats
import pytest
from axe_playwright_python.async_playwright import Axe
from helpers import eventually
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from smtp_server import SmtpServer

from contracts import platform
from contracts.base import utcnow
from portal.natsserver import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
# What runs here: no sandbox as root, no GPU, and nothing that phones home (the network is closed).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIZES = [(390, 844), (1280, 800)]
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-artifacts" / "screenshots"
PORTAL = str(Path(sys.executable).with_name("portal"))
STAFF_PASSWORD = "a long staff passphrase"
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "purple elephant river lantern"
SCHOOL = "oak"
CLASS_Y3, CLASS_Y5 = "oak-y3", "oak-y5"
AMY, ZOE, BEN, SAM = "p-amy", "p-zoe", "p-ben", "p-sam"
TEACHER = "teacher@oak.example"
ADMIN = "head@oak.example"
MARY_SCHOOL = "mary.smith@school-records.example"
MARY = "mary@home.example"
DAD = "dan@home.example"
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
RESET_SUBJECT = "Reset your Parent Portal password"


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without the machine's PORTAL_* settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(overrides)
    return env


@dataclass
class Portal:
    """One `portal up` and the SMTP server it sends to."""

    url: str
    data_dir: Path
    smtp: SmtpServer
    env: dict[str, str]
    seen: dict = field(default_factory=dict)

    def mails(self, to: str, subject: str | None = None) -> list[str]:
        return [m.part("plain") for m in self.smtp.to(to) if subject is None or subject in m.subject]

    async def mail(self, to: str, subject: str, count: int = 1) -> str:
        """The `count`-th email with `subject` to `to`, once it has arrived."""
        await eventually(
            lambda: len(self.mails(to, subject)) >= count, timeout=20, message=f"email {subject!r} to {to}"
        )
        return self.mails(to, subject)[count - 1]

    def link(self, text: str, path: str) -> str:
        """The first link to `path` in an email's text."""
        found = re.search(re.escape(self.url) + re.escape(path) + r"[^\s<>\"]*", text)
        assert found, f"no {path} link in:\n{text}"
        return found[0]


def _portal_cmd(args: list[str], env: dict[str, str], stdin: str = "") -> None:
    done = subprocess.run([PORTAL, *args], input=stdin, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"portal {' '.join(args)}: {done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    tmp = tmp_path_factory.mktemp("web")
    smtp = SmtpServer(free_port()).start()
    port = free_port()
    env = clean_env(
        PORTAL_DATA_DIR=str(tmp / "data"),
        PORTAL_HTTP_PORT=str(port),
        PORTAL_SMTP_URL=smtp.url,
        PORTAL_LOG_LEVEL="WARNING",
        # The lowest cost OWASP allows: sign-ins stay real but quick on two cores.
        PORTAL_IDENTITY_ARGON2_TIME_COST="2",
        PORTAL_IDENTITY_ARGON2_MEMORY_KIB="19456",
        PORTAL_IDENTITY_ARGON2_PARALLELISM="1",
        # "Send the email again" is pressed seconds after registering.
        PORTAL_IDENTITY_RESEND_INTERVAL_SECONDS="0",
    )
    out, err = (tmp / "up.out").open("w"), (tmp / "up.err").open("w")
    proc = subprocess.Popen(
        [PORTAL, "up"], env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp / "up.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "portal up not ready within 60 s"
            time.sleep(0.25)
        roster = tmp / "roster.csv"
        with roster.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(
                [
                    "trust_id",
                    "trust_name",
                    "school_id",
                    "school_name",
                    "timezone",
                    "class_id",
                    "class_name",
                    "pupil_id",
                    "first_name",
                    "last_name",
                ]
            )
            for class_id, class_name, pupils in [
                (CLASS_Y3, "Year 3", [(AMY, "Amy", "Smith"), (ZOE, "Zoe", "Brown")]),
                (CLASS_Y5, "Year 5", [(BEN, "Ben", "Smith"), (SAM, "Sam", "Jones")]),
            ]:
                for pid, first, last in pupils:
                    w.writerow(
                        [
                            "oak-trust",
                            "Oak Trust",
                            SCHOOL,
                            "Oak Primary",
                            "Europe/London",
                            class_id,
                            class_name,
                            pid,
                            first,
                            last,
                        ]
                    )
        _portal_cmd(["roster", "import", str(roster)], env)
        for email, name, role in [(TEACHER, "Tess Teacher", "teacher"), (ADMIN, "Hannah Head", "school_admin")]:
            _portal_cmd(
                [
                    "staff",
                    "add",
                    "--email",
                    email,
                    "--name",
                    name,
                    "--school",
                    SCHOOL,
                    "--role",
                    role,
                    "--password-stdin",
                ],
                env,
                STAFF_PASSWORD + "\n",
            )
        yield Portal(url, tmp / "data", smtp, env)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        err.close()
        smtp.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package"
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        await chromium.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    return SHOTS


AXE = Axe()
CHECKED: list[str] = []


async def check(page: Page, name: str) -> None:
    """Screenshot the page at both sizes and assert axe-core finds nothing serious or critical."""
    # No script but the one installing the offline page's service worker (before axe adds its
    # own): every page works without JavaScript.
    assert await page.locator("script:not([src='/static/register-sw.js'])").count() == 0, f"{name} has a script"
    for width, height in SIZES:
        await page.set_viewport_size({"width": width, "height": height})
        await page.screenshot(path=str(SHOTS / f"{name}-{width}x{height}.png"), full_page=True)
        results = await AXE.run(page)
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in results.response["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"{name} at {width}x{height}:\n" + "\n".join(bad)
    await page.set_viewport_size({"width": SIZES[0][0], "height": SIZES[0][1]})
    CHECKED.append(name)


async def new_page(browser: Browser, portal: Portal) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(base_url=portal.url, viewport={"width": SIZES[0][0], "height": SIZES[0][1]})
    page = await context.new_page()
    page.set_default_timeout(15_000)
    return context, page


async def sign_in(page: Page, email: str, password: str, name: str | None = None) -> None:
    await page.goto("/login")
    if name:
        await check(page, name)
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state()


async def register_and_verify(
    page: Page, portal: Portal, email: str, name: str, relationship: str, screens: bool
) -> None:
    """From a /link/<CODE> page: register with the code, then verify from the email."""
    await page.get_by_role("link", name=re.compile("Create an account and link")).click()
    if screens:
        await check(page, "register")
        # Sent empty: every problem named, tied to its field.
        await page.get_by_role("button", name=re.compile("Create account")).click()
        await expect(page.get_by_role("alert")).to_contain_text("Enter your name")
        assert await page.get_by_label("Your full name").get_attribute("aria-invalid") == "true"
        await check(page, "register-errors")
    await page.get_by_label("Your full name").fill(name)
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Choose a password").fill(PASSWORD)
    await page.get_by_label(re.compile("Your relationship to")).select_option(relationship)
    await page.get_by_label(re.compile("I accept Oak Primary's acceptable-use policy")).check()
    await page.get_by_role("button", name=re.compile("Create account and link")).click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    if screens:
        await check(page, "check-email")
        await page.get_by_role("button", name="Send the email again").click()
        await expect(page.get_by_text("We have sent the email again")).to_be_visible()
    text = await portal.mail(email, VERIFY_SUBJECT, 2 if screens else 1)
    await page.goto(portal.link(text, "/verify?token="))
    if screens:
        await check(page, "verify")
    await page.get_by_role("button", name="Confirm my email address").click()
    await expect(page.get_by_role("heading", name="Email address confirmed")).to_be_visible()
    if screens:
        await check(page, "verified")


async def publish_activity(portal: Portal) -> None:
    """Homework, a message and stars for Amy, as the learning platform would send them."""
    # As the platform's publisher: `portal up` runs NATS with a user per part, anonymous refused.
    seed = (portal.data_dir / "nats" / "platform.nk").read_text().strip()
    nc = await nats.connect((portal.data_dir / "nats.url").read_text().strip(), nkeys_seed_str=seed)
    try:
        js = nc.jetstream()
        now = utcnow()
        events = [
            (
                platform.HOMEWORK_ASSIGNED,
                platform.HomeworkAssigned(
                    homework_id="hw-1",
                    school_id=SCHOOL,
                    pupil_ids=[AMY],
                    title="Fractions worksheet",
                    due_at=now + timedelta(days=2),
                    description="Questions 1 to 10 on page 12.",
                ),
            ),
            (
                platform.HOMEWORK_ASSIGNED,
                platform.HomeworkAssigned(
                    homework_id="hw-2",
                    school_id=SCHOOL,
                    pupil_ids=[AMY],
                    title="Spelling: silent letters",
                    due_at=now + timedelta(days=4),
                ),
            ),
            (
                platform.MESSAGE_DELIVERED,
                platform.MessageDelivered(
                    message_id="m-1", pupil_id=AMY, from_name="Mr Jones", subject="Trip to the museum", sent_at=now
                ),
            ),
            (
                platform.STARS_AWARDED,
                platform.StarsAwarded(award_id="s-1", pupil_id=AMY, stars=3, reason="Great reading"),
            ),
        ]
        for subject, ev in events:
            await js.publish(subject, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id})
    finally:
        await nc.close()


# -- journeys ----------------------------------------------------------------------------------


async def scene_staff_invite_by_email_then_parent_registers_verifies_and_sees_the_child(
    browser: Browser, portal: Portal
) -> None:
    await publish_activity(portal)
    staff_ctx, staff = await new_page(browser, portal)
    await staff.goto("/")
    assert staff.url.endswith("/login"), "signed out: home sends to sign in"
    await staff.get_by_label("Email address").fill(TEACHER)
    await staff.get_by_label("Password").fill("not the password")
    await staff.get_by_role("button", name="Sign in").click()
    await expect(staff.get_by_role("alert")).to_contain_text("not right")
    await check(staff, "login-error")
    await sign_in(staff, TEACHER, STAFF_PASSWORD, name="login")
    await expect(staff.get_by_role("heading", name="Your classes")).to_be_visible()
    await expect(staff.get_by_role("link", name=re.compile("Year 3"))).to_contain_text(
        "0 of 2 pupils with a linked parent"
    )
    await check(staff, "staff-home")
    await staff.get_by_role("link", name=re.compile("Year 3")).click()
    await expect(staff.get_by_role("heading", name="Year 3: parents")).to_be_visible()
    await check(staff, "class-empty")
    await staff.get_by_role("link", name="Invite a parent of Amy").click()
    await staff.get_by_label("Parent's email address").fill("not an address")
    await staff.get_by_role("button", name="Send invitation email").click()
    await expect(staff.get_by_role("alert")).to_be_visible()
    await check(staff, "invite-error")
    await staff.get_by_label("Parent's email address").fill(MARY_SCHOOL)
    await staff.get_by_role("button", name="Send invitation email").click()
    await expect(staff.get_by_role("status")).to_contain_text(f"Invitation sent to {MARY_SCHOOL} for Amy")
    await expect(staff.locator(".badge-invited")).to_have_text("Invited")
    await check(staff, "class-invited")
    portal.seen["staff"] = (staff_ctx, staff)

    # The parent opens the link from the email (on another address than the school's).
    invitation = await portal.mail(MARY_SCHOOL, "invites you to see Amy's schoolwork")
    mary_ctx, mary = await new_page(browser, portal)
    await mary.goto(portal.link(invitation, "/link/"))
    await expect(mary.get_by_role("heading", level=1)).to_have_text("Link to Amy, Year 3, Oak Primary?")
    await check(mary, "link-anonymous")
    await register_and_verify(mary, portal, MARY, "Mary Smith", "mother", screens=True)
    await sign_in(mary, MARY, PASSWORD)
    await expect(mary.get_by_role("heading", name="Amy Smith")).to_be_visible()
    assert await mary.locator(".child-switcher").count() == 0, "one child: nothing to switch"
    # The platform's events reach the card (the projection may lag the first view).
    for _ in range(50):
        if await mary.locator(".stat dd").first.inner_text() == "2":
            break
        await asyncio.sleep(0.2)
        await mary.reload()
    await expect(mary.locator(".stat", has_text="Homework to do").locator("dd")).to_have_text("2")
    await expect(mary.locator(".stat", has_text="Unread messages").locator("dd")).to_have_text("1")
    await expect(mary.locator(".stat", has_text="Stars this week").locator("dd")).to_have_text("3")
    await expect(mary.locator(".due-list")).to_contain_text("Fractions worksheet")
    await expect(mary.get_by_role("link", name="Amy's homework")).to_have_attribute(
        "href", re.compile(f"/go/{AMY}/homework$")
    )
    await check(mary, "parent-home-one-child")
    portal.seen["mary"] = (mary_ctx, mary)


async def scene_parent_sees_homework_messages_and_stars_in_detail(browser: Browser, portal: Portal) -> None:
    _, mary = portal.seen["mary"]
    await mary.goto("/")
    await mary.get_by_role("link", name="Homework list").click()
    await expect(mary.get_by_role("heading", level=1)).to_have_text("Amy's homework")
    await expect(mary.get_by_role("heading", name="Fractions worksheet")).to_be_visible()
    await expect(mary.locator(".detail-item").first).to_contain_text("Questions 1 to 10 on page 12.")
    await check(mary, "child-homework")
    await mary.get_by_role("link", name="Messages").click()
    await expect(mary.get_by_role("heading", name="Trip to the museum")).to_be_visible()
    await expect(mary.locator(".detail-item")).to_contain_text("From Mr Jones")
    await check(mary, "child-messages")
    await mary.get_by_role("link", name="Stars").click()
    await expect(mary.locator(".detail-item")).to_contain_text("3 stars: Great reading")
    await check(mary, "child-stars")
    await mary.get_by_role("link", name="Previous week").click()
    await expect(mary.get_by_text("No stars that week yet.")).to_be_visible()
    await mary.get_by_role("link", name="Back to Amy's card").click()
    await expect(mary.get_by_role("heading", name="Amy Smith")).to_be_visible()
    # Into the platform (the demo's stand-in): the portal's signed token says who arrived.
    await mary.get_by_role("link", name="Amy's homework").click()
    await expect(mary.get_by_role("heading", name="Who arrived")).to_be_visible()
    await expect(mary.locator(".arrival")).to_contain_text(f"came for pupil {AMY}")
    await check(mary, "platform-arrival")
    await mary.reload()
    await expect(mary.get_by_role("alert")).to_contain_text("used already")
    await mary.goto("/")


async def scene_qr_path_from_a_printed_code_url(browser: Browser, portal: Portal) -> None:
    _, staff = portal.seen["staff"]
    await staff.goto("/")
    await staff.get_by_role("link", name=re.compile("Year 5")).click()
    await staff.get_by_role("link", name="Create QR codes").click()
    await check(staff, "create-codes-first")
    await staff.get_by_role("button", name="Create new QR codes for Year 5").click()
    await expect(staff.get_by_role("status")).to_contain_text("New QR codes created for 2 pupils")
    await staff.get_by_role("link", name="Create QR codes").click()
    await expect(staff.get_by_role("heading", name="The codes printed before will stop working")).to_be_visible()
    await check(staff, "create-codes-again")
    await staff.go_back()
    await staff.get_by_role("link", name="Print QR sheet").click()
    sheet = await staff.content()
    await staff.screenshot(path=str(SHOTS / "qr-sheet-1280x800.png"), full_page=True)
    codes = dict(re.findall(r'class="pupil">(\w+)[^<]*<.*?class="code">([0-9A-Z-]{14})<', sheet, re.S))
    assert set(codes) >= {"Ben", "Sam"}, codes
    portal.seen["ben_code"] = codes["Ben"]

    # Ben's father scans the card: the QR code holds PUBLIC_URL/link/<CODE>.
    dad_ctx, dad = await new_page(browser, portal)
    await dad.goto(f"/link/{codes['Ben']}")
    await expect(dad.get_by_role("heading", level=1)).to_have_text("Link to Ben, Year 5, Oak Primary?")
    await register_and_verify(dad, portal, DAD, "Dan Smith", "father", screens=False)
    await sign_in(dad, DAD, PASSWORD)
    await expect(dad.get_by_role("heading", name="Ben Smith")).to_be_visible()
    portal.seen["dad"] = (dad_ctx, dad)

    await dad.goto("/link/AAAA-BBBB-CCCC")
    await expect(dad.get_by_role("heading", name="This code does not work")).to_be_visible()
    await check(dad, "link-invalid")


async def scene_second_child_by_typed_code_and_switching(browser: Browser, portal: Portal) -> None:
    _, mary = portal.seen["mary"]
    await mary.goto("/")
    await mary.get_by_role("link", name="Add a child").click()
    await check(mary, "add-child")
    await mary.get_by_label("Code").fill("nope")
    await mary.get_by_role("button", name="Continue").click()
    await expect(mary.get_by_role("alert")).to_be_visible()
    await check(mary, "add-child-error")
    # Typed forgivingly: lower case, spaces instead of dashes.
    await mary.get_by_label("Code").fill(portal.seen["ben_code"].lower().replace("-", " "))
    await mary.get_by_role("button", name="Continue").click()
    await expect(mary.get_by_role("heading", level=1)).to_have_text("Link to Ben, Year 5, Oak Primary?")
    await check(mary, "add-child-preview")
    await mary.get_by_role("button", name="Link Ben to my account").click()
    await expect(mary.get_by_role("alert")).to_contain_text("Choose your relationship")
    await check(mary, "add-child-confirm-error")
    await mary.get_by_label("Your relationship to Ben").select_option("mother")
    await mary.get_by_role("button", name="Link Ben to my account").click()
    await expect(mary.get_by_role("status")).to_contain_text("Ben is now linked to your account")
    switcher = mary.get_by_role("navigation", name="Your children")
    await expect(switcher.get_by_role("link")).to_have_text(["Amy", "Ben"])
    await expect(mary.get_by_role("heading", name="Ben Smith")).to_be_visible()
    await check(mary, "parent-home-ben")
    await switcher.get_by_role("link", name="Amy").click()
    await expect(mary.get_by_role("heading", name="Amy Smith")).to_be_visible()
    await expect(switcher.get_by_role("link", name="Amy")).to_have_attribute("aria-current", "page")
    await check(mary, "parent-home-amy")
    await switcher.get_by_role("link", name="Ben").click()
    await expect(mary.get_by_role("heading", name="Ben Smith")).to_be_visible()


async def scene_staff_remove_one_child_the_sibling_stays(browser: Browser, portal: Portal) -> None:
    _, staff = portal.seen["staff"]
    await staff.goto("/")
    await staff.get_by_role("link", name=re.compile("Year 3")).click()
    await expect(staff.locator(".badge-linked")).to_have_text("Linked")
    await check(staff, "class-linked")
    await staff.get_by_role("link", name="Remove Mary Smith's access to Amy").click()
    await expect(staff.get_by_role("heading", level=1)).to_have_text("Remove Mary Smith's access to Amy Smith?")
    await expect(staff.get_by_role("button", name="Remove Mary Smith's access to all 2 children")).to_be_visible()
    await check(staff, "remove-confirm")
    await staff.get_by_role("button", name="Remove Mary Smith's access to Amy").click()
    # The notice names no parent: its cookie carries ids only, and Mary is no longer in the class.
    await expect(staff.get_by_role("status")).to_have_text("The parent can no longer see Amy's schoolwork.")
    await expect(staff.get_by_role("link", name="Remove Mary Smith's access to Amy")).to_have_count(0)

    _, mary = portal.seen["mary"]
    await mary.goto("/")
    await expect(mary.get_by_role("heading", name="Ben Smith")).to_be_visible()
    assert "Amy" not in await mary.locator("main").inner_text()
    assert await mary.locator(".child-switcher").count() == 0
    await mary.goto(f"/?child={AMY}")
    await expect(mary.get_by_role("heading", name="Ben Smith")).to_be_visible()
    assert (await mary.request.get(f"/api/v1/me/children/{AMY}/overview")).status == 404


async def scene_parent_unlinks_a_child_after_confirming(browser: Browser, portal: Portal) -> None:
    _, dad = portal.seen["dad"]
    await dad.goto("/")
    await dad.get_by_role("link", name="Unlink Ben").click()
    await check(dad, "unlink-confirm")
    await dad.get_by_role("button", name="Unlink Ben from my account").click()
    await expect(dad.get_by_role("status")).to_have_text("The child is no longer linked to your account.")
    await expect(dad.get_by_role("link", name="Add a child")).to_be_visible()
    await check(dad, "parent-home-empty")


async def scene_school_admin_settings_and_audit_trail(browser: Browser, portal: Portal) -> None:
    ctx, admin = await new_page(browser, portal)
    await sign_in(admin, ADMIN, STAFF_PASSWORD)
    await admin.get_by_role("link", name="Settings for Oak Primary").click()
    await check(admin, "settings")
    await admin.get_by_label("Parents or carers who can use one printed QR code").fill("0")
    await admin.get_by_role("button", name="Save settings").click()
    await expect(admin.get_by_role("alert")).to_be_visible()
    assert (
        await admin.get_by_label("Parents or carers who can use one printed QR code").get_attribute("aria-invalid")
        == "true"
    )
    await check(admin, "settings-error")
    await admin.get_by_label("Parents or carers who can use one printed QR code").fill("3")
    await admin.get_by_role("button", name="Save settings").click()
    await expect(admin.get_by_role("status")).to_have_text("Settings saved.")
    await expect(admin.get_by_label("Parents or carers who can use one printed QR code")).to_have_value("3")

    await admin.goto(f"/classes/{CLASS_Y3}")
    await admin.get_by_role("link", name="Audit trail for Amy").click()
    trail = admin.locator(".audit-list")
    for action in ("Invitation sent", "Access removed", "Link active"):
        await expect(trail).to_contain_text(action)
    await expect(trail).to_contain_text("Mary Smith")
    await check(admin, "audit")
    # Teachers have no audit trail or settings.
    _, staff = portal.seen["staff"]
    assert (await staff.goto(f"/classes/{CLASS_Y3}/pupils/{AMY}/audit")).status == 404
    await check(staff, "not-found")
    await ctx.close()


async def scene_forgot_and_reset_password_then_sign_out(browser: Browser, portal: Portal) -> None:
    _, mary = portal.seen["mary"]
    await mary.get_by_role("button", name="Sign out").click()
    await expect(mary.get_by_role("status")).to_have_text("You have signed out.")
    await mary.get_by_role("link", name="Forgotten your password?").click()
    await check(mary, "forgot")
    await mary.get_by_label("Email address").fill(MARY)
    await mary.get_by_role("button", name="Email me a link").click()
    await check(mary, "forgot-sent")
    text = await portal.mail(MARY, RESET_SUBJECT)
    await mary.goto(portal.link(text, "/reset-password?token="))
    await mary.get_by_label("New password").fill("password1234")
    await mary.get_by_role("button", name="Save new password").click()
    await expect(mary.get_by_role("alert")).to_be_visible()
    await check(mary, "reset-error")
    await mary.get_by_label("New password").fill(NEW_PASSWORD)
    await mary.get_by_role("button", name="Save new password").click()
    await expect(mary.get_by_role("heading", name="Password changed")).to_be_visible()
    await check(mary, "reset-done")
    await sign_in(mary, MARY, NEW_PASSWORD)
    await expect(mary.get_by_role("heading", name="Ben Smith")).to_be_visible()


async def scene_pages_send_safety_headers_and_refuse_forms_without_their_token(
    browser: Browser, portal: Portal
) -> None:
    _, mary = portal.seen["mary"]
    response = await mary.goto("/")
    headers = response.headers
    assert headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["referrer-policy"]
    assert "strict-transport-security" not in headers, "HSTS only over https"
    # A form posted without the session's CSRF token (as another site would) changes nothing.
    forged = await mary.request.post(f"/children/{BEN}/unlink", form={"csrf_token": "forged"}, max_redirects=0)
    assert forged.status == 403 and "form" in (await forged.text()).lower()
    await mary.goto("/")
    await expect(mary.get_by_role("heading", name="Ben Smith")).to_be_visible()
    async with httpx.AsyncClient(base_url=portal.url) as http:
        anonymous = await http.post("/login", data={"email": MARY, "password": NEW_PASSWORD})
        assert anonymous.status_code == 403 and "portal_session" not in anonymous.headers.get("set-cookie", "")
    assert len(CHECKED) >= 25, CHECKED


async def scene_school_admin_bars_an_address_then_lifts_the_bar(browser: Browser, portal: Portal) -> None:
    # Last: the bar ends Mary's link to Ben for good (lifting it does not link her again).
    ctx, admin = await new_page(browser, portal)
    await sign_in(admin, ADMIN, STAFF_PASSWORD)
    await admin.goto(f"/classes/{CLASS_Y5}")
    await admin.get_by_role("link", name="Safeguarding bars for Ben").click()
    await expect(admin.get_by_text("No address is barred from Ben")).to_be_visible()
    await admin.get_by_role("button", name="Bar this address from Ben").click()
    await expect(admin.get_by_role("alert")).to_contain_text("Enter why this address is barred from Ben")
    assert await admin.get_by_label("Reason for the bar").get_attribute("aria-invalid") == "true"
    assert "f-reason-error" in (await admin.get_by_label("Reason for the bar").get_attribute("aria-describedby") or "")
    await check(admin, "bars-error")
    await admin.get_by_label("Email address to bar").fill(MARY)
    await admin.get_by_label("Reason for the bar").fill("Court order")
    await admin.get_by_role("button", name="Bar this address from Ben").click()
    await expect(admin.get_by_role("status")).to_contain_text(
        f"{MARY} can no longer be linked to Ben; their access ended"
    )
    await expect(admin.locator(".bar-list")).to_contain_text("Court order")
    await check(admin, "bars")

    _, mary = portal.seen["mary"]
    await mary.goto("/")
    await expect(mary.get_by_role("link", name="Add a child")).to_be_visible()
    assert "Ben" not in await mary.locator("main").inner_text()
    await admin.goto(f"/classes/{CLASS_Y5}/pupils/{BEN}/audit")
    await expect(admin.locator(".audit-list")).to_contain_text("Address barred")
    await expect(admin.locator(".audit-list")).to_contain_text("Court order")

    await admin.go_back()
    await admin.get_by_role("button", name=f"Lift the bar on {MARY} for Ben").click()
    await check(admin, "lift-bar-confirm")
    await admin.get_by_role("button", name=f"Lift the bar on {MARY} for Ben").click()
    await expect(admin.get_by_role("status")).to_have_text(
        "The bar is lifted: that address may be linked to Ben again."
    )
    await expect(admin.get_by_text("No address is barred from Ben")).to_be_visible()
    await admin.goto(f"/classes/{CLASS_Y5}/pupils/{BEN}/audit")
    await expect(admin.locator(".audit-list")).to_contain_text("Bar lifted")
    # Teachers have no bars page.
    _, staff = portal.seen["staff"]
    assert (await staff.goto(f"/classes/{CLASS_Y5}/pupils/{BEN}/bars")).status == 404
    await ctx.close()


async def scene_parent_downloads_their_data_from_the_account_page(browser: Browser, portal: Portal) -> None:
    _, mary = portal.seen["mary"]
    await mary.goto("/")
    await mary.get_by_role("link", name="Your account").click()
    await expect(mary.get_by_role("heading", name="Your account", exact=True)).to_be_visible()
    await expect(mary.locator("main")).to_contain_text(MARY)
    await check(mary, "account")
    async with mary.expect_download() as started:
        await mary.get_by_role("link", name="Download my data").click()
    download = await started.value
    assert re.fullmatch(r"parent-portal-data-\d{4}-\d{2}-\d{2}\.json", download.suggested_filename)
    text = Path(await download.path()).read_text()
    data = json.loads(text)
    assert data["account"]["email"] == MARY and data["account"]["role"] == "parent"
    assert {"Amy", "Ben"} <= {c["first_name"] for c in data["children"]}
    assert data["emails"] and data["sessions"]
    assert "argon2" not in text and "token" not in text.lower()
    # Asked without a password, nothing is deleted and the field says why.
    await mary.get_by_role("button", name="Delete my account").click()
    await expect(mary.get_by_role("alert")).to_contain_text("Enter your password")
    assert await mary.get_by_label("Your password").get_attribute("aria-invalid") == "true"
    await check(mary, "account-errors")


# -- the story ---------------------------------------------------------------------------------
# The scenes above are one school's story: each starts from where the one before it left the
# portal (the accounts, links and browser sessions in `portal.seen`). So that any test also runs
# alone (`-k`), a test plays every earlier scene it has not seen yet, in order, then its own.

SCENES = [
    scene_staff_invite_by_email_then_parent_registers_verifies_and_sees_the_child,
    scene_parent_sees_homework_messages_and_stars_in_detail,
    scene_qr_path_from_a_printed_code_url,
    scene_second_child_by_typed_code_and_switching,
    scene_staff_remove_one_child_the_sibling_stays,
    scene_parent_unlinks_a_child_after_confirming,
    scene_school_admin_settings_and_audit_trail,
    scene_forgot_and_reset_password_then_sign_out,
    scene_pages_send_safety_headers_and_refuse_forms_without_their_token,
    scene_school_admin_bars_an_address_then_lifts_the_bar,
    scene_parent_downloads_their_data_from_the_account_page,
]


@dataclass
class Story:
    """Plays the scenes in order, each at most once per portal."""

    browser: Browser
    portal: Portal
    played: set[str] = field(default_factory=set)

    async def upto(self, scene: Callable[[Browser, Portal], Awaitable[None]]) -> None:
        """Play every scene before `scene` not played yet, then `scene` itself."""
        for earlier in SCENES[: SCENES.index(scene) + 1]:
            if earlier.__name__ not in self.played:
                # Marked first: a scene that fails is not played again by the next test.
                self.played.add(earlier.__name__)
                await earlier(self.browser, self.portal)


@pytest.fixture(scope="module")
def story(browser: Browser, portal: Portal, shots: Path) -> Story:
    return Story(browser, portal)


async def test_staff_invite_by_email_then_parent_registers_verifies_and_sees_the_child(story: Story) -> None:
    await story.upto(scene_staff_invite_by_email_then_parent_registers_verifies_and_sees_the_child)


async def test_parent_sees_homework_messages_and_stars_in_detail(story: Story) -> None:
    await story.upto(scene_parent_sees_homework_messages_and_stars_in_detail)


async def test_qr_path_from_a_printed_code_url(story: Story) -> None:
    await story.upto(scene_qr_path_from_a_printed_code_url)


async def test_second_child_by_typed_code_and_switching(story: Story) -> None:
    await story.upto(scene_second_child_by_typed_code_and_switching)


async def test_staff_remove_one_child_the_sibling_stays(story: Story) -> None:
    await story.upto(scene_staff_remove_one_child_the_sibling_stays)


async def test_parent_unlinks_a_child_after_confirming(story: Story) -> None:
    await story.upto(scene_parent_unlinks_a_child_after_confirming)


async def test_school_admin_settings_and_audit_trail(story: Story) -> None:
    await story.upto(scene_school_admin_settings_and_audit_trail)


async def test_forgot_and_reset_password_then_sign_out(story: Story) -> None:
    await story.upto(scene_forgot_and_reset_password_then_sign_out)


async def test_pages_send_safety_headers_and_refuse_forms_without_their_token(story: Story) -> None:
    await story.upto(scene_pages_send_safety_headers_and_refuse_forms_without_their_token)


async def test_school_admin_bars_an_address_then_lifts_the_bar(story: Story) -> None:
    await story.upto(scene_school_admin_bars_an_address_then_lifts_the_bar)


async def test_parent_downloads_their_data_from_the_account_page(story: Story) -> None:
    await story.upto(scene_parent_downloads_their_data_from_the_account_page)
