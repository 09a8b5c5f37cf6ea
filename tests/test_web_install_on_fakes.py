"""The portal as an installable app, over HTTP on fake services (no NATS): the web app
manifest with its fields and real PNG icons, every page linking it, the service worker's
script and the offline page with their headers, and a Content-Security-Policy that lets the
browser use them. tests/test_web_install.py proves the same in Chromium."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jinja2
import pytest
from gateway_fakes import session
from PIL import Image

from contracts import identity, linking
from gateway.app import TEMPLATES_DIR, create_app
from gateway.auth import COOKIE_NAME
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings

SETTINGS = linking.SchoolSettings(
    school_id="oak",
    max_carers_per_code=2,
    printed_code_days=365,
    invitation_days=14,
    aup_text="Be kind.",
    aup_version="v1",
    homework_url="https://platform.example/homework?pupil={pupil_id}",
    files_url="https://platform.example/files?pupil={pupil_id}",
    messages_url="https://platform.example/messages?pupil={pupil_id}",
    email_parent_on_removal=True,
)


async def school_settings(req: linking.SchoolSettingsRequest) -> linking.SchoolSettings:
    return SETTINGS


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    fake = FakeTransport({identity.SESSION: session, linking.GET_SCHOOL_SETTINGS: school_settings})
    app = create_app(GatewaySettings(data_dir=tmp_path), clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as client:
        yield client


def directive(csp: str, name: str) -> list[str]:
    """The sources a CSP allows for `name`, through `default-src` when it names none."""
    rules = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    return rules.get(name, rules.get("default-src", []))


async def test_the_manifest_names_the_app_and_its_icons_are_real_pngs_of_their_sizes(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/manifest.webmanifest")
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/manifest+json"
    assert response.headers["cache-control"] == "no-cache"
    manifest = json.loads(response.content)
    assert manifest["name"] == "Parent Portal"
    assert 0 < len(manifest["short_name"]) <= 12
    assert manifest["start_url"] == "/" and manifest["scope"] == "/"
    assert manifest["display"] == "standalone"
    # The header's blue and the page's white, as portal.css has them.
    css = (await http.get("/static/portal.css")).text
    assert f"--accent: {manifest['theme_color']};" in css
    assert f"--paper: {manifest['background_color']};" in css
    sizes = set()
    for icon in manifest["icons"]:
        assert icon["type"] == "image/png"
        image = await http.get(icon["src"])
        assert image.status_code == 200, icon["src"]
        assert image.headers["content-type"] == "image/png"
        decoded = Image.open(io.BytesIO(image.content))
        assert decoded.format == "PNG"
        width, height = (int(n) for n in icon["sizes"].split("x"))
        assert decoded.size == (width, height), icon
        # Drawn, not a blank square: the mark's white and the blue are both there.
        colours = {colour[:3] for _, colour in decoded.convert("RGBA").getcolors(width * height) or []}
        assert (255, 255, 255) in colours and (11, 87, 164) in colours, icon["src"]
        sizes.add((icon["sizes"], icon["purpose"]))
    assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= sizes


async def test_every_page_links_the_manifest_the_theme_the_icons_and_the_worker(http: httpx.AsyncClient) -> None:
    cookie = {"Cookie": f"{COOKIE_NAME}=tok-admin"}
    pages = [
        ("/login", {}),
        ("/register", {}),  # an error page: linking is not there to give the policy
        ("/forgot-password", {}),
        ("/offline", {}),
        ("/schools/oak/settings", cookie),  # signed in
    ]
    for path, headers in pages:
        response = await http.get(path, headers=headers)
        assert response.headers["content-type"].startswith("text/html"), path
        html = response.text
        assert '<link rel="manifest" href="/manifest.webmanifest">' in html, path
        assert '<meta name="theme-color" content="#0b57a4">' in html, path
        assert '<link rel="apple-touch-icon" href="/static/icons/apple-touch-icon.png">' in html, path
        # The one script of every page, from the portal itself (the CSP allows no inline script).
        assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/register-sw.js" defer>'], path
        for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', html):
            assert (await http.get(asset)).status_code == 200, asset


def test_every_page_template_is_built_on_the_base_that_links_the_manifest() -> None:
    """Pages are rendered from these templates: each full page (not a `_part`) extends, in the
    end, base.html, where the manifest is linked."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, extensions=["jinja2.ext.i18n"]
    )

    def parent(name: str) -> str | None:
        extends = env.parse(env.loader.get_source(env, name)[0]).find(jinja2.nodes.Extends)
        return extends.template.value if extends is not None else None

    pages = [
        str(path.relative_to(TEMPLATES_DIR))
        for path in TEMPLATES_DIR.rglob("*.html")
        if not path.name.startswith("_") and path.name != "base.html"
    ]
    assert len(pages) > 30
    for name in pages:
        chain = [name]
        while (up := parent(chain[-1])) is not None:
            chain.append(up)
        assert chain[-1] == "base.html", chain
    assert '<link rel="manifest" href="/manifest.webmanifest">' in (TEMPLATES_DIR / "base.html").read_text()


async def test_the_worker_is_same_origin_javascript_revalidated_and_keeps_nothing_personal(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/sw.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    script = response.text
    assert "__VERSION__" not in script and "__SHELL_ASSETS__" not in script
    version = re.search(r'const CACHE = "portal-shell-([0-9a-f]{16})";', script)
    assert version, "a versioned cache name"
    assert "__OFFLINE_PAGES__" not in script and "__DEFAULT_LANGUAGE__" not in script
    kept = json.loads(
        "[" + re.search(r"const SHELL = \[\.\.\.Object\.values\(OFFLINE_PAGES\), (.*)\];", script)[1] + "]"
    )
    # Only what is the same for everyone: the stylesheet and icons (and the offline pages).
    assert kept and all(path.startswith("/static/") for path in kept), kept
    for path in kept:
        assert (await http.get(path)).status_code == 200, path
    offline_pages = json.loads(re.search(r"const OFFLINE_PAGES = (\{.*\});", script)[1])
    assert offline_pages == {"en": "/offline", "cy": "/offline?lang=cy"}
    for lang, path in offline_pages.items():
        page = await http.get(path)
        assert page.status_code == 200 and page.headers["content-language"] == lang, path
    assert "/api" not in script
    # Its only writes to a cache: the install's, from those lists, and the language of the last
    # page (a Response made of that language's code, nothing else of the page).
    assert script.count("cache.addAll(") == 1
    assert re.findall(r"\.put\(([^()]*\([^()]*\))\)", script) == ["LAST_LANGUAGE, new Response(lang)"]
    assert script.count(".put(") == 1
    assert "Object.hasOwn(OFFLINE_PAGES, lang)" in script
    register = await http.get("/static/register-sw.js")
    assert register.status_code == 200
    assert "javascript" in register.headers["content-type"]
    assert 'register("/sw.js", { scope: "/" })' in register.text


async def test_the_offline_page_is_the_same_for_everyone_and_never_personal(http: httpx.AsyncClient) -> None:
    anonymous = await http.get("/offline")
    signed_in = await http.get("/offline", headers={"Cookie": f"{COOKIE_NAME}=tok-admin"})
    assert anonymous.status_code == signed_in.status_code == 200
    assert anonymous.headers["cache-control"] == "no-cache"
    assert "<h1>You are offline</h1>" in anonymous.text
    assert 'href="/"' in anonymous.text  # try again
    # Whoever asks, the same page: no name, no sign-out form, no form token.
    assert signed_in.text == anonymous.text
    assert "Head" not in signed_in.text and "csrf_token" not in signed_in.text
    assert "set-cookie" not in signed_in.headers


async def test_the_offline_page_in_welsh_and_never_in_a_language_the_portal_lacks(http: httpx.AsyncClient) -> None:
    welsh = await http.get("/offline", params={"lang": "cy"})
    assert welsh.status_code == 200 and welsh.headers["content-language"] == "cy"
    assert '<html lang="cy">' in welsh.text and "<h1>Rydych all-lein</h1>" in welsh.text
    # Whatever else is asked for, English: the page never says what it was asked.
    for odd in ["fr", "<script>", "cy-GB", ""]:
        page = await http.get("/offline", params={"lang": odd})
        assert page.status_code == 200 and page.headers["content-language"] == "en", odd
        assert "<h1>You are offline</h1>" in page.text and "<script>alert" not in page.text
    assert (await http.get("/offline", params={"lang": "x" * 50})).status_code == 422


async def test_the_content_security_policy_lets_the_browser_load_the_manifest_and_worker(
    http: httpx.AsyncClient,
) -> None:
    for path in ["/login", "/offline", "/sw.js", "/manifest.webmanifest"]:
        csp = (await http.get(path)).headers["content-security-policy"]
        for name in ["manifest-src", "worker-src", "script-src", "img-src", "style-src"]:
            assert "'self'" in directive(csp, name), (path, name, csp)
        assert "'unsafe-inline'" not in csp
