"""The portal as an installable app in a real browser (Debian's Chromium driven by Playwright)
against a real `portal up` (the fixtures of test_web_pages.py): Chromium finds the manifest
and calls the portal installable, the service worker takes control, a parent signed in and
reading their child's pages leaves nothing personal in the Cache Storage, and with the network
gone every page shows the offline page until the network is back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_web_pages
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from test_web_pages import (
    BEN,
    CHROMIUM,
    CHROMIUM_FLAGS,
    CLASS_Y5,
    DAD,
    PASSWORD,
    SHOTS,
    STAFF_PASSWORD,
    TEACHER,
    Portal,
    check,
    new_page,
    register_and_verify,
    sign_in,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# The same fixtures as test_web_pages.py: a `portal up` and a Chromium of this module's own.
portal = test_web_pages.portal
browser = test_web_pages.browser

SHELL = {
    "/offline",
    "/offline?lang=cy",
    "/static/portal.css",
    "/static/icons/icon-32.png",
    "/static/icons/apple-touch-icon.png",
    "/static/icons/icon-192.png",
    "/static/icons/icon-512.png",
    "/static/icons/icon-maskable-192.png",
    "/static/icons/icon-maskable-512.png",
}

# Every cache of the page's origin: name -> [(path, the kept answer's text)].
CACHE_CONTENTS = """async () => {
  const out = {};
  for (const name of await caches.keys()) {
    const cache = await caches.open(name);
    out[name] = [];
    for (const request of await cache.keys()) {
      const response = await cache.match(request);
      const type = response.headers.get("content-type") || "";
      const text = type.startsWith("image/") ? "" : await response.text();
      out[name].push([new URL(request.url).pathname + new URL(request.url).search, text]);
    }
  }
  return out;
}"""


async def controlled(page: Page) -> None:
    """Wait until the service worker is active and controls the page."""
    await page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    state = await page.evaluate("navigator.serviceWorker.ready.then((r) => r.active.state)")
    assert state == "activated"


async def a_parent_of_ben(browser: Browser, portal: Portal) -> tuple[BrowserContext, Page]:
    """Staff print Year 5's codes; Ben's father registers with his and signs in."""
    staff_ctx, staff = await new_page(browser, portal)
    await sign_in(staff, TEACHER, STAFF_PASSWORD)
    await staff.goto(f"/classes/{CLASS_Y5}")
    await staff.get_by_role("link", name="Create QR codes").click()
    await staff.get_by_role("button", name="Create new QR codes for Year 5").click()
    await expect(staff.get_by_role("status")).to_contain_text("New QR codes created")
    await staff.get_by_role("link", name="Print QR sheet").click()
    codes = dict(re.findall(r'class="pupil">(\w+)[^<]*<.*?class="code">([0-9A-Z-]{14})<', await staff.content(), re.S))
    await staff_ctx.close()
    ctx, dad = await new_page(browser, portal)
    await dad.goto(f"/link/{codes['Ben']}")
    await register_and_verify(dad, portal, DAD, "Dan Smith", "father", screens=False)
    await sign_in(dad, DAD, PASSWORD)
    await expect(dad.get_by_role("heading", name="Ben Smith")).to_be_visible()
    return ctx, dad


async def test_chromium_finds_the_portal_installable(portal: Portal, tmp_path: Path) -> None:
    # A profile on disk: Chromium offers no installing in the throw-away (incognito) contexts.
    async with async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, args=CHROMIUM_FLAGS, base_url=portal.url
        )
        try:
            page = await ctx.new_page()
            await page.goto("/login")
            await controlled(page)
            cdp = await ctx.new_cdp_session(page)
            manifest = await cdp.send("Page.getAppManifest")
            assert manifest["url"] == f"{portal.url}/manifest.webmanifest"
            assert manifest["errors"] == [], manifest["errors"]
            parsed = manifest["manifest"]  # as Chromium read it (its own names for the values)
            assert parsed["name"] == "Parent Portal" and parsed["display"].lower().endswith("standalone")
            assert len(parsed["icons"]) == 4, parsed["icons"]
            # Chromium's own check: a manifest with a large enough icon that loads, a worker in control.
            installability = await cdp.send("Page.getInstallabilityErrors")
            assert installability["installabilityErrors"] == [], installability
        finally:
            await ctx.close()


async def test_offline_page_when_the_network_is_gone_and_nothing_personal_is_cached(
    browser: Browser, portal: Portal
) -> None:
    ctx, dad = await a_parent_of_ben(browser, portal)
    try:
        await controlled(dad)
        # Reading Ben's card and his pages, and the API, with the worker in control.
        await dad.goto("/")
        await expect(dad.get_by_role("heading", name="Ben Smith")).to_be_visible()
        await dad.goto(f"/children/{BEN}/homework")
        me = await dad.evaluate("fetch('/api/v1/me').then((r) => r.json())")
        assert me["email"] == DAD
        await dad.evaluate(f"fetch('/api/v1/me/children/{BEN}/overview').then((r) => r.status)")

        caches = await dad.evaluate(CACHE_CONTENTS)
        assert len(caches) == 1 and re.fullmatch(r"portal-shell-[0-9a-f]{16}", next(iter(caches))), list(caches)
        kept = next(iter(caches.values()))
        assert {path for path, _ in kept} == SHELL
        for path, text in kept:
            for personal in ["Dan", "Ben", DAD, "Smith", "csrf_token", "Sign out"]:
                assert personal not in text, f"{personal!r} kept in {path}"

        await ctx.set_offline(True)
        for path in ["/", f"/children/{BEN}/homework", "/account"]:
            await dad.goto(path)
            await expect(dad.get_by_role("heading", level=1)).to_have_text("You are offline")
            assert "Ben" not in await dad.content()
        # Screenshotted and checked with axe-core like every page.
        SHOTS.mkdir(parents=True, exist_ok=True)
        await check(dad, "offline")
        # The portal's look comes from the kept stylesheet.
        header = await dad.locator(".site-header").evaluate("(e) => getComputedStyle(e).backgroundColor")
        assert header == "rgb(11, 87, 164)"
        # The API is not answered from any cache: no network, no answer.
        failed = await dad.evaluate("fetch('/api/v1/me').then(() => 'answered', () => 'failed')")
        assert failed == "failed"

        await ctx.set_offline(False)
        await dad.get_by_role("link", name="Try again").click()
        await expect(dad.get_by_role("heading", name="Ben Smith")).to_be_visible()

        # He reads the portal in Welsh from now on: offline, he is told so in Welsh.
        await dad.goto("/account")
        await dad.get_by_role("radio", name="Cymraeg").check()
        await dad.get_by_role("button", name="Save").click()
        await expect(dad.locator("html")).to_have_attribute("lang", "cy")
        await dad.goto("/")
        await expect(dad.get_by_role("heading", name="Eich plant")).to_be_visible()
        await ctx.set_offline(True)
        await dad.goto(f"/children/{BEN}/homework")
        await expect(dad.get_by_role("heading", level=1)).to_have_text("Rydych all-lein")
        await expect(dad.locator("html")).to_have_attribute("lang", "cy")
        # Of his pages the worker kept one thing more: the language they came in.
        kept = next(iter((await dad.evaluate(CACHE_CONTENTS)).values()))
        assert {path for path, _ in kept} == SHELL | {"/offline/last-language"}
        assert dict(kept)["/offline/last-language"] == "cy"
        await ctx.set_offline(False)
    finally:
        await ctx.close()
