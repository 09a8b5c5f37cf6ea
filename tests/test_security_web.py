"""The gateway against a page of another site, a shared browser and a second replica: what an
attacker's page can make a visitor's browser send is refused (415 for a body that is not JSON,
403 `cross_origin` for another site's unsafe request), a login ends the session the browser
held, notices after a redirect carry no names or addresses, and a removal by staff is gone on
every replica when its answer comes.

A real NATS, the real identity and linking services and gateways under uvicorn (the `portal`
fixture of conftest.py, `PORTAL_PUBLIC_URL` http://portal.test), spoken to over HTTP.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from gateway_harness import Gateway, running_gateway
from gateway_portal import PASSWORD, PUBLIC_URL, Portal, assert_error, auth, cards, login, verified_parent

from contracts import linking
from gateway.auth import csrf_token_for

pytestmark = pytest.mark.asyncio

OTHER_SITE = "https://evil.example"
TEACHER = "teacher_a@school.example"


def json_body(email: str, password: str = PASSWORD) -> bytes:
    return json.dumps({"email": email, "password": password}).encode()


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


def cookie_value(response: httpx.Response, name: str) -> str | None:
    """The value `response` sets for cookie `name`, if it sets one."""
    for header in set_cookies(response):
        if header.startswith(f"{name}="):
            return header.split("=", 1)[1].split(";", 1)[0]
    return None


def cookie_header(response: httpx.Response, name: str) -> str:
    """The whole Set-Cookie header of cookie `name`."""
    found = [h for h in set_cookies(response) if h.startswith(f"{name}=")]
    assert found, f"no {name} cookie in {set_cookies(response)}"
    return found[0]


async def signed_in(http: httpx.AsyncClient, token: str) -> bool:
    answer = await http.get("/api/v1/me", headers=auth(token))
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def login_form(http: httpx.AsyncClient) -> tuple[str, str]:
    """The sign-in page's form cookie and the token its form carries."""
    page = await http.get("/login")
    secret = cookie_value(page, "portal_form")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert secret and token, page.text
    return secret, token[1]


async def new_parent(portal: Portal) -> tuple[str, str, str]:
    """A verified parent of this test's own: email, token, account id."""
    email = await verified_parent(portal.http, portal.nc)
    token = await login(portal.http, email)
    me = await portal.http.get("/api/v1/me", headers=auth(token))
    return email, token, me.json()["id"]


async def code_for(portal: Portal, class_id: str, first: str) -> str:
    """A fresh printed code of one pupil (the earlier one stops working)."""
    pupil_id = portal.roster.pupils[class_id][first]
    assert (await portal.post("admin_a", f"/pupils/{pupil_id}/code")).status_code == 201
    sheet = cards((await portal.get("teacher_a", f"/classes/{class_id}/qr-sheet")).text)
    return next(code for name, code in sheet.items() if name.split()[0] == first)


async def link(portal: Portal, token: str, class_id: str, first: str) -> str:
    """Link the parent of `token` to a pupil; the pupil's id."""
    body = {"code": await code_for(portal, class_id, first), "relationship": "mother", "accept_aup": True}
    answer = await portal.http.post("/api/v1/me/children", json=body, headers=auth(token))
    assert answer.status_code == 201, answer.text
    return portal.roster.pupils[class_id][first]


async def seen_children(gateway: httpx.AsyncClient, token: str) -> set[str]:
    """The children a parent's overview lists on one replica."""
    # The replicas here are threads of one process, which may leave one unscheduled while the
    # others run. `/ready` is a round trip over its NATS connection: it returns once the replica
    # has read whatever NATS sent it before, as a replica in a process of its own does at
    # once. What NATS had sent it is the point: all that was published before the first
    # replica answered.
    assert (await gateway.get("/ready")).status_code in (200, 503)
    answer = await gateway.get("/api/v1/me/overview", headers=auth(token))
    assert answer.status_code == 200, answer.text
    return {child["pupil_id"] for child in answer.json()["children"]}


@asynccontextmanager
async def second_replica(portal: Portal, tmp_path: Path, **changes: str) -> AsyncIterator[Gateway]:
    """Another gateway replica on the same NATS (with `changes` to its settings)."""
    settings = portal.gateway_settings.model_copy(update={"data_dir": tmp_path / "gateway-2", **changes})
    async with running_gateway(settings, timeout=20) as gateway:
        yield gateway


# -- A. another site's page ------------------------------------------------------------------------


async def test_a_login_body_that_is_not_json_answers_415_and_signs_nobody_in(portal: Portal) -> None:
    # <form enctype="text/plain"> on any site can send this body, with the attacker's password.
    for content_type in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        refused = await portal.http.post("/api/v1/auth/login", content=json_body(TEACHER), headers=headers)
        assert_error(refused, 415, "unsupported_media_type")
        assert not set_cookies(refused) and "access_token" not in refused.text, content_type

    # JSON, with or without parameters, signs in as before.
    for content_type in ("application/json", "Application/JSON; charset=utf-8"):
        answer = await portal.http.post(
            "/api/v1/auth/login", content=json_body(TEACHER), headers={"content-type": content_type}
        )
        assert answer.status_code == 200 and cookie_value(answer, "portal_session"), answer.text


async def test_a_signed_in_request_with_a_body_that_is_not_json_changes_nothing(portal: Portal) -> None:
    r = portal.roster
    cara = r.pupils[r.a1]["Cara"]
    address = "not-json-invite@example.org"
    refused = await portal.http.post(
        f"/api/v1/pupils/{cara}/invitations",
        content=json.dumps({"email": address}).encode(),
        headers={**auth(portal.tokens["teacher_a"]), "content-type": "text/plain"},
    )
    assert_error(refused, 415, "unsupported_media_type")
    pupils = (await portal.get("teacher_a", f"/classes/{r.a1}/pupils")).json()
    invited = [i["email"] for p in pupils if p["pupil_id"] == cara for i in p["invitations"]]
    assert address not in invited, "nothing was sent"


async def test_a_login_from_another_sites_page_is_refused_even_with_the_right_password(portal: Portal) -> None:
    json_type = {"content-type": "application/json"}
    for browser_says in (
        {"origin": OTHER_SITE},
        {"origin": "null"},  # a sandboxed frame or a file: no origin is not ours
        {"origin": "http://portal.test:8080"},
        {"origin": "https://portal.test"},  # another scheme is another origin
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},
        {"origin": PUBLIC_URL, "sec-fetch-site": "cross-site"},
    ):
        refused = await portal.http.post(
            "/api/v1/auth/login", content=json_body(TEACHER), headers={**json_type, **browser_says}
        )
        body = assert_error(refused, 403, "cross_origin")
        assert not set_cookies(refused) and "access_token" not in body, browser_says

    # The portal's own pages, and clients that are not browsers, sign in as before.
    for browser_says in (
        {"origin": PUBLIC_URL, "sec-fetch-site": "same-origin"},
        {"origin": "HTTP://Portal.Test:80"},
        {"sec-fetch-site": "none"},  # typed by the user
        {},
    ):
        answer = await portal.http.post(
            "/api/v1/auth/login", content=json_body(TEACHER), headers={**json_type, **browser_says}
        )
        assert answer.status_code == 200, (browser_says, answer.text)


async def test_another_sites_page_cannot_sign_out_or_register_a_visitor(portal: Portal) -> None:
    token = await login(portal.http, TEACHER)
    refused = await portal.http.post("/api/v1/auth/logout", headers={**auth(token), "origin": OTHER_SITE})
    assert_error(refused, 403, "cross_origin")
    assert await signed_in(portal.http, token), "still signed in"

    email = "cross-site-registration@example.org"
    body = {"email": email, "password": PASSWORD, "name": "Cross Site", "accept_aup": True}
    assert_error(
        await portal.http.post("/api/v1/auth/register", json=body, headers={"sec-fetch-site": "cross-site"}),
        403,
        "cross_origin",
    )
    # No account was made: an unverified one would answer 403 email_not_verified.
    assert_error(await portal.http.post("/api/v1/auth/login", json=body), 401, "invalid_credentials")


async def test_a_form_posted_to_a_page_from_another_site_is_refused(portal: Portal) -> None:
    secret, token = await login_form(portal.http)
    form = {"email": TEACHER, "password": PASSWORD, "csrf_token": token, "next": "/"}
    cookies = {"cookie": f"portal_form={secret}"}
    for browser_says in ({"sec-fetch-site": "cross-site"}, {"origin": OTHER_SITE}, {"origin": "null"}):
        refused = await portal.http.post("/login", data=form, headers={**cookies, **browser_says})
        assert refused.status_code == 403, (browser_says, refused.status_code)
        assert refused.headers["content-type"].startswith("text/html")
        assert "another website" in refused.text and PUBLIC_URL in refused.text
        assert cookie_value(refused, "portal_session") is None, "not signed in"

    # The same form from the portal's own page signs in.
    same = await portal.http.post(
        "/login", data=form, headers={**cookies, "origin": PUBLIC_URL, "sec-fetch-site": "same-origin"}
    )
    assert same.status_code == 303 and cookie_value(same, "portal_session"), same.text


# -- C. a login ends the session it replaces ---------------------------------------------------------


async def test_logging_in_ends_the_session_the_request_still_carried(portal: Portal) -> None:
    parent_email, _, _ = await new_parent(portal)

    # Someone else signs in on a browser that still holds the teacher's session cookie.
    before = await login(portal.http, TEACHER)
    answer = await portal.http.post(
        "/api/v1/auth/login",
        json={"email": parent_email, "password": PASSWORD},
        headers={"cookie": f"portal_session={before}"},
    )
    assert answer.status_code == 200, answer.text
    assert not await signed_in(portal.http, before), "the earlier session ended"
    assert await signed_in(portal.http, answer.json()["access_token"])

    # The same with a bearer token.
    before = await login(portal.http, TEACHER)
    answer = await portal.http.post(
        "/api/v1/auth/login", json={"email": parent_email, "password": PASSWORD}, headers=auth(before)
    )
    assert answer.status_code == 200 and not await signed_in(portal.http, before)

    # A mistyped password signs nobody out.
    before = await login(portal.http, TEACHER)
    wrong = await portal.http.post(
        "/api/v1/auth/login",
        json={"email": parent_email, "password": "not the password at all"},
        headers={"cookie": f"portal_session={before}"},
    )
    assert_error(wrong, 401, "invalid_credentials")
    assert await signed_in(portal.http, before)

    # The sign-in page does the same.
    secret, token = await login_form(portal.http)
    page = await portal.http.post(
        "/login",
        data={"email": parent_email, "password": PASSWORD, "csrf_token": token},
        headers={"cookie": f"portal_form={secret}; portal_session={before}"},
    )
    assert page.status_code == 303, page.text
    assert not await signed_in(portal.http, before), "the earlier session ended"
    new = cookie_value(page, "portal_session")
    assert new and new != before and await signed_in(portal.http, new)


# -- B. notices -----------------------------------------------------------------------------------


def assert_nothing_personal(value: str | None, *words: str) -> None:
    assert value is not None, "a notice was set"
    plain = unquote(unquote(value)).lower()
    for word in words:
        assert word.lower() not in plain, f"{word!r} in the notice cookie {plain!r}"
    assert "@" not in plain, plain


async def test_notices_carry_no_names_or_addresses_and_are_secure_over_https(portal: Portal, tmp_path: Path) -> None:
    r = portal.roster
    teacher = portal.tokens["teacher_a"]
    admin = portal.tokens["admin_a"]
    parent_email, parent, parent_id = await new_parent(portal)
    dan = portal.roster.pupils[r.a2]["Dan"]

    async with second_replica(portal, tmp_path, public_url="https://portal.test") as secure:
        # A parent adds a child with a typed code (http): the cookie names no child.
        form = {
            "code": await code_for(portal, r.a2, "Dan"),
            "relationship": "mother",
            "accept_aup": "yes",
            "csrf_token": csrf_token_for(parent),
        }
        added = await portal.http.post("/children/confirm", data=form, headers={"cookie": f"portal_session={parent}"})
        assert added.status_code == 303, added.text
        notice = cookie_value(added, "portal_notice")
        assert_nothing_personal(notice, "Dan", parent_email)
        assert "Secure" not in cookie_header(added, "portal_notice"), "plain http in development"
        home = await portal.http.get(
            added.headers["location"], headers={"cookie": f"portal_session={parent}; portal_notice={notice}"}
        )
        assert "Dan is now linked to your account." in html.unescape(home.text), "the page names the child"
        assert dan in await seen_children(secure.http, parent)  # remembered by the second replica

        # Staff invite over https: Secure, and no address or child's name in it.
        invited = "invited-for-amy@example.org"
        amy_page = f"/classes/{r.a1}/pupils/{r.pupils[r.a1]['Amy']}/invite"
        sent = await secure.http.post(
            amy_page,
            data={"email": invited, "csrf_token": csrf_token_for(teacher)},
            headers={"cookie": f"__Host-portal_session={teacher}"},
        )
        assert sent.status_code == 303, sent.text
        header = cookie_header(sent, "__Host-portal_notice")
        assert "Secure" in header and "HttpOnly" in header
        notice = cookie_value(sent, "__Host-portal_notice")
        assert_nothing_personal(notice, "Amy", invited)
        page = await secure.http.get(
            sent.headers["location"],
            headers={"cookie": f"__Host-portal_session={teacher}; __Host-portal_notice={notice}"},
        )
        assert f"Invitation sent to {invited} for Amy." in html.unescape(page.text)
        assert "Secure" in cookie_header(page, "__Host-portal_notice"), "cleared the same way"

        # Staff remove the parent (http page): no parent's name or address, no child's name; and
        # the second replica stopped showing the child by the time the answer came.
        removed = await portal.http.post(
            f"/classes/{r.a2}/pupils/{dan}/parents/{parent_id}/remove",
            data={"csrf_token": csrf_token_for(teacher)},
            headers={"cookie": f"portal_session={teacher}"},
        )
        assert removed.status_code == 303, removed.text
        assert dan not in await seen_children(secure.http, parent)
        notice = cookie_value(removed, "portal_notice")
        assert_nothing_personal(notice, "Dan", "Mary", parent_email)
        page = await portal.http.get(
            removed.headers["location"], headers={"cookie": f"portal_session={teacher}; portal_notice={notice}"}
        )
        assert "The parent can no longer see Dan's schoolwork." in html.unescape(page.text)

        # A bar (https page): the address is on the bars page, not in the cookie.
        barred = "barred-from-eve@example.org"
        bars = f"/classes/{r.a2}/pupils/{r.pupils[r.a2]['Eve']}/bars"
        added_bar = await secure.http.post(
            bars,
            data={"email": barred, "reason": "court order", "csrf_token": csrf_token_for(admin)},
            headers={"cookie": f"__Host-portal_session={admin}"},
        )
        assert added_bar.status_code == 303, added_bar.text
        notice = cookie_value(added_bar, "__Host-portal_notice")
        assert_nothing_personal(notice, "Eve", barred, "court")
        assert "Secure" in cookie_header(added_bar, "__Host-portal_notice")
        page = await secure.http.get(
            bars, headers={"cookie": f"__Host-portal_session={admin}; __Host-portal_notice={notice}"}
        )
        assert f"{barred} can no longer be linked to Eve; their access ended." in html.unescape(page.text)


async def test_a_notice_cookie_can_only_show_the_portals_own_sentences(portal: Portal) -> None:
    teacher = portal.tokens["teacher_a"]
    page_of = f"/classes/{portal.roster.a1}"
    for planted in ("Call%2001234%20to%20verify%20your%20account", "n%3Dnot_a_notice"):
        page = await portal.http.get(page_of, headers={"cookie": f"portal_session={teacher}; portal_notice={planted}"})
        assert page.status_code == 200 and "01234" not in page.text and "notice-banner" not in page.text
    # A notice of ours with an id the page does not know shows general words, never the value.
    planted = "n%3Dparent_removed%26pupil%3D%253Cb%253EMallory"
    page = await portal.http.get(page_of, headers={"cookie": f"portal_session={teacher}; portal_notice={planted}"})
    assert "The parent can no longer see the pupil's schoolwork." in html.unescape(page.text)
    assert "Mallory" not in page.text


# -- D. removal on other replicas -----------------------------------------------------------------


async def test_a_removal_is_gone_on_another_replica_when_its_answer_comes(portal: Portal, tmp_path: Path) -> None:
    r = portal.roster
    parent_email, parent, parent_id = await new_parent(portal)
    heard: list[tuple[str, str]] = []

    async def on_removed(msg) -> None:
        body = json.loads(msg.data)
        heard.append((body["parent_id"], body["pupil_id"]))

    sub = await portal.nc.subscribe(linking.LINK_REMOVED, cb=on_removed)
    await portal.nc.flush()
    try:
        async with second_replica(portal, tmp_path) as other:
            dan = await link(portal, parent, r.a2, "Dan")
            eve = await link(portal, parent, r.a2, "Eve")
            cara = await link(portal, parent, r.a1, "Cara")
            # The second replica remembers the three (for minutes, unless an event says otherwise).
            assert await seen_children(other.http, parent) == {dan, eve, cara}

            # One pupil, by staff on the first replica.
            removed = await portal.http.delete(
                f"/api/v1/pupils/{dan}/parents/{parent_id}", headers=auth(portal.tokens["teacher_a"])
            )
            assert removed.status_code == 204, removed.text
            # Answered only once the event was out: anyone subscribed has been sent it already.
            await portal.nc.flush()
            assert (parent_id, dan) in heard
            assert await seen_children(other.http, parent) == {eve, cara}
            assert_error(
                await other.http.get(f"/api/v1/me/children/{dan}/overview", headers=auth(parent)), 404, "not_found"
            )

            # A bar on the parent's address.
            barred = await portal.http.post(
                f"/api/v1/pupils/{eve}/bars",
                json={"email": parent_email, "reason": "court order"},
                headers=auth(portal.tokens["admin_a"]),
            )
            assert barred.status_code == 201, barred.text
            await portal.nc.flush()
            assert (parent_id, eve) in heard
            assert await seen_children(other.http, parent) == {cara}

            # From all their children at the school.
            everywhere = await portal.http.delete(
                f"/api/v1/parents/{parent_id}/pupils", headers=auth(portal.tokens["teacher_a"])
            )
            assert everywhere.status_code == 204, everywhere.text
            await portal.nc.flush()
            assert (parent_id, cara) in heard
            assert await seen_children(other.http, parent) == set()
    finally:
        await sub.unsubscribe()


async def test_a_removal_whose_event_does_not_come_is_logged_as_an_error(nats_server, capfd) -> None:
    import nats as nats_client

    from gateway.caches.links import LinksCache

    async def fetch(parent_id: str) -> list[str]:
        return ["pupil-1", "pupil-2"]

    cache = LinksCache(fetch, ttl=300, removal_wait=10)
    nc = await nats_client.connect(nats_server.url)
    try:
        await cache.subscribe(nc)
        assert await cache.active("parent-1") == ("pupil-1", "pupil-2")

        # The event comes: the block ends without a word.
        async with cache.removals() as removed:
            removed.expect("parent-1", "pupil-1")
            await nc.publish(
                linking.LINK_REMOVED, json.dumps({"parent_id": "parent-1", "pupil_id": "pupil-1"}).encode()
            )
        assert "link_removal_not_seen" not in capfd.readouterr().out

        # It does not (a relay that is stuck): the change still stands, loudly.
        cache.removal_wait = 0.2
        async with cache.removals() as removed:
            removed.expect("parent-1", "pupil-2")
        logged = [line for line in capfd.readouterr().out.splitlines() if "link_removal_not_seen" in line]
        assert len(logged) == 1 and "error" in logged[0] and "pupil-2" in logged[0], logged
        assert linking.LINK_REMOVED in logged[0]
    finally:
        await nc.close()
