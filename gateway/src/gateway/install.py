"""What makes the portal installable as an app: `/manifest.webmanifest`, the service worker at
`/sw.js` and the `/offline` page it shows when the network is gone (docs/http-api.md,
"Installing the portal").

The worker keeps only what is the same for everyone (the offline page in each language, the
stylesheet, the icons) and never a page or an API answer: those carry children's names. It
shows the offline page in the language of the last page that came from the network, so a
parent who reads the portal in Welsh is told in Welsh. Its cache is named after a digest of
those files, the translations and the worker itself, so that a new release that changes any
of them replaces the old copies.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from litestar import Response, get
from litestar.params import Parameter
from litestar.response import Template

from contracts.kit.i18n import DEFAULT_LANGUAGE, LANGUAGES, known

PACKAGE_DIR = Path(__file__).parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATES_DIR = PACKAGE_DIR / "templates"
WORKER_SOURCE = PACKAGE_DIR / "service_worker.js"

NAME = "Parent Portal"
# At most 12 characters: what a phone shows under the icon.
SHORT_NAME = "Portal"
THEME_COLOUR = "#0b57a4"  # --accent in portal.css: the header's blue
BACKGROUND_COLOUR = "#ffffff"  # --paper

ICONS = [
    {"src": "/static/icons/icon-192.png", "sizes": "192x192", "type": "image/png", "purpose": "any"},
    {"src": "/static/icons/icon-512.png", "sizes": "512x512", "type": "image/png", "purpose": "any"},
    {"src": "/static/icons/icon-maskable-192.png", "sizes": "192x192", "type": "image/png", "purpose": "maskable"},
    {"src": "/static/icons/icon-maskable-512.png", "sizes": "512x512", "type": "image/png", "purpose": "maskable"},
]
# What the offline page needs, kept by the worker besides the page itself.
SHELL_ASSETS = [
    "/static/portal.css",
    "/static/icons/icon-32.png",
    "/static/icons/apple-touch-icon.png",
    *(icon["src"] for icon in ICONS),
]
# The templates the offline page is made of, and its translations.
OFFLINE_TEMPLATES = ["base.html", "pages/layout.html", "pages/offline.html"]
LOCALE_DIR = PACKAGE_DIR / "locale"
OFFLINE = "/offline"
# The offline page in each language, as the worker keeps it; the default language's is `/offline`.
OFFLINE_PAGES = {lang: OFFLINE if lang == DEFAULT_LANGUAGE else f"{OFFLINE}?lang={lang}" for lang in LANGUAGES}

# Browsers ask again every time (a changed worker must reach them); nothing here is personal.
REVALIDATE = {"Cache-Control": "no-cache"}


def manifest() -> dict[str, Any]:
    """The web app manifest (https://www.w3.org/TR/appmanifest/)."""
    return {
        "id": "/",
        "name": NAME,
        "short_name": SHORT_NAME,
        "description": "Your children's homework, messages and stars from school.",
        "lang": "en",
        "dir": "ltr",
        "start_url": "/",
        "scope": "/",
        "display": "standalone",
        "theme_color": THEME_COLOUR,
        "background_color": BACKGROUND_COLOUR,
        "icons": ICONS,
    }


@functools.cache
def worker_script() -> str:
    """The service worker's source with its cache version and the files it keeps filled in."""
    source = WORKER_SOURCE.read_text(encoding="utf-8")
    digest = hashlib.sha256(source.encode())
    for asset in SHELL_ASSETS:
        digest.update((STATIC_DIR / asset.removeprefix("/static/")).read_bytes())
    for template in OFFLINE_TEMPLATES:
        digest.update((TEMPLATES_DIR / template).read_bytes())
    for catalogue in sorted(LOCALE_DIR.glob("*/LC_MESSAGES/messages.mo")):
        digest.update(catalogue.read_bytes())
    return (
        source.replace("__VERSION__", digest.hexdigest()[:16])
        .replace("__SHELL_ASSETS__", ", ".join(json.dumps(asset) for asset in SHELL_ASSETS))
        .replace("__OFFLINE_PAGES__", json.dumps(OFFLINE_PAGES))
        .replace("__DEFAULT_LANGUAGE__", json.dumps(DEFAULT_LANGUAGE))
    )


@get("/manifest.webmanifest", include_in_schema=False, operation_id="web_manifest", sync_to_thread=False)
def web_manifest() -> Response[bytes]:
    """The web app manifest every page links to."""
    return Response(
        json.dumps(manifest(), indent=2).encode(), media_type="application/manifest+json", headers=REVALIDATE
    )


@get("/sw.js", include_in_schema=False, operation_id="service_worker", sync_to_thread=False)
def service_worker() -> Response[str]:
    """The service worker, at the root so that its scope is the whole portal."""
    return Response(worker_script(), media_type="text/javascript", headers=REVALIDATE)


@get(OFFLINE, include_in_schema=False, operation_id="page_offline", sync_to_thread=False)
def offline(lang: str | None = Parameter(query="lang", default=None, max_length=8)) -> Template:
    """The page the worker shows when a page cannot be fetched, in `?lang=` (English without it,
    or for a language the portal does not have). The same for everyone: it is rendered as for a
    visitor who is not signed in, with no notice, whoever asks."""
    language = known(lang)
    return Template(
        template_name="pages/offline.html",
        context={
            "principal": None,
            "csrf_token": None,
            "notice": None,
            "is_staff": False,
            "is_admin": False,
            "lang": language,
        },
        headers={**REVALIDATE, "Content-Language": language},
    )


ROOT_ROUTES = [web_manifest, service_worker, offline]
