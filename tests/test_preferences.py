"""A parent's preferences (`/api/v1/me/preferences` and the `/account` page): how often the digest
email comes and the language of pages and emails.

Real identity and linking over a real nats-server, a gateway under uvicorn, spoken to over HTTP
as a client and as a browser would (cookie, CSRF token, form posts).
"""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from gateway_portal import Portal, assert_error, auth, login, verified_parent
from helpers import eventually
from nats.aio.msg import Msg

from contracts import identity
from contracts.kit.rpc import call

pytestmark = pytest.mark.asyncio

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def new_parent(portal: Portal) -> str:
    """A parent of their own (each test changes their preferences), signed in: their token."""
    return await login(portal.http, await verified_parent(portal.http, portal.nc))


async def preferences(portal: Portal, token: str) -> dict:
    got = await portal.http.get("/api/v1/me/preferences", headers=auth(token))
    assert got.status_code == 200, got.text
    return got.json()


async def test_a_new_parent_gets_the_weekly_digest_in_english(portal: Portal) -> None:
    token = await new_parent(portal)
    assert await preferences(portal, token) == {"digest": "weekly", "language": "en"}


async def test_a_parent_changes_one_preference_and_the_other_stays(portal: Portal) -> None:
    token = await new_parent(portal)
    account_id = (await portal.http.get("/api/v1/me", headers=auth(token))).json()["id"]
    announced: list[identity.PreferencesChanged] = []

    async def heard(msg: Msg) -> None:
        event = identity.PreferencesChanged.model_validate_json(msg.data)
        if event.account_id == account_id:
            announced.append(event)

    sub = await portal.nc.subscribe(identity.PREFERENCES_CHANGED, cb=heard)
    changed = await portal.http.put("/api/v1/me/preferences", headers=auth(token), json={"digest": "daily"})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"digest": "daily", "language": "en"}
    assert await preferences(portal, token) == {"digest": "daily", "language": "en"}

    both = await portal.http.put(
        "/api/v1/me/preferences", headers=auth(token), json={"digest": "off", "language": "cy"}
    )
    assert both.json() == {"digest": "off", "language": "cy"}
    assert await preferences(portal, token) == {"digest": "off", "language": "cy"}

    # The same again changes nothing, and announces nothing.
    await portal.http.put("/api/v1/me/preferences", headers=auth(token), json={"digest": "off"})
    await eventually(lambda: len(announced) >= 2, timeout=10, message="both changes announced")
    await asyncio.sleep(0.5)
    await sub.unsubscribe()
    assert [(e.digest, e.language) for e in announced] == [("daily", "en"), ("off", "cy")]


@pytest.mark.parametrize(
    "body",
    [
        {"digest": "hourly"},
        {"language": "fr"},
        {"digest": "daily", "language": "EN"},
        {"digets": "off"},  # a misspelt key is not a change that silently did nothing
        {},
        {"digest": None},
        {"digest": 1},
    ],
)
async def test_an_unknown_value_is_refused_and_changes_nothing(portal: Portal, body: dict) -> None:
    token = await new_parent(portal)
    refused = await portal.http.put("/api/v1/me/preferences", headers=auth(token), json=body)
    assert_error(refused, 422, "validation_error")
    assert await preferences(portal, token) == {"digest": "weekly", "language": "en"}


async def test_only_the_signed_in_parent_has_preferences(portal: Portal) -> None:
    assert_error(await portal.http.get("/api/v1/me/preferences"), 401, "unauthorized")
    assert_error(await portal.http.put("/api/v1/me/preferences", json={"digest": "off"}), 401, "unauthorized")
    # Staff have none: a parent-only route answers them 404, as every other one does.
    assert_error(await portal.get("teacher_a", "/me/preferences"), 404, "not_found")


async def test_a_cross_site_form_cannot_turn_the_digest_off(portal: Portal) -> None:
    token = await new_parent(portal)
    cookie = {"cookie": f"portal_session={token}"}
    forged = await portal.http.put("/api/v1/me/preferences", headers=cookie, json={"digest": "off"})
    assert forged.status_code == 403, forged.text
    page = await portal.http.get("/account", headers=cookie)
    forged_form = await portal.http.post(
        "/account/preferences", headers=cookie, data={"digest": "off", "language": "cy"}
    )
    assert forged_form.status_code == 403, forged_form.text
    assert page.status_code == 200
    assert await preferences(portal, token) == {"digest": "weekly", "language": "en"}


async def test_the_account_page_shows_and_saves_the_choices(portal: Portal) -> None:
    token = await new_parent(portal)
    browser = httpx.AsyncClient(
        base_url=str(portal.http.base_url), cookies={"portal_session": token}, follow_redirects=False, timeout=10
    )
    async with browser:
        page = await browser.get("/account")
        assert page.status_code == 200, page.text
        assert re.search(r'name="digest" type="radio" value="weekly" checked', page.text)
        assert re.search(r'name="language" type="radio" value="en" checked', page.text)
        csrf = CSRF.search(page.text).group(1)

        saved = await browser.post(
            "/account/preferences", data={"csrf_token": csrf, "digest": "daily", "language": "en"}
        )
        assert saved.status_code == 303 and saved.headers["location"] == "/account", saved.text
        again = await browser.get("/account")
        assert "Your choices are saved." in again.text
        assert re.search(r'name="digest" type="radio" value="daily" checked', again.text)
        assert await preferences(portal, token) == {"digest": "daily", "language": "en"}

        bad = await browser.post(
            "/account/preferences", data={"csrf_token": csrf, "digest": "hourly", "language": "en"}
        )
        assert bad.status_code == 400
        assert "Choose how often the summary email comes" in bad.text
        assert await preferences(portal, token) == {"digest": "daily", "language": "en"}


async def test_identity_s_export_holds_the_preferences(portal: Portal) -> None:
    # The gateway's `/me/export` adds linking's and notify's parts to this (tests/test_data_export.py).
    token = await new_parent(portal)
    await portal.http.put("/api/v1/me/preferences", headers=auth(token), json={"digest": "off", "language": "cy"})
    account_id = (await portal.http.get("/api/v1/me", headers=auth(token))).json()["id"]
    export = await call(portal.nc, identity.EXPORT, identity.ExportRequest(account_id=account_id), timeout=10)
    assert (export.digest, export.language) == ("off", "cy")
