"""Disabling a member of staff: `portal staff disable` / `enable`, the platform's
`platform.roster.staff.left.v1` (and a later `staff.upserted.v1`), and an admin's Staff page.

A disabled member of staff's sessions stop working on every gateway replica by the time the
command or the page answers; signing in answers exactly as a wrong password does; no reset email
goes to them and a reset link sent earlier stops working; enabling them gives back their old
password. Admins act only within their scope (another school's staff: 404) and never on
themselves.

A real NATS, the real identity and linking services and gateways under uvicorn (the `portal`
fixture of conftest.py), spoken to over HTTP, the `portal` command and published events.
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
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gateway_harness import Gateway, running_gateway
from gateway_portal import PASSWORD, PUBLIC_URL, Portal, assert_error, auth, login
from helpers import eventually

from contracts import identity, notify, platform
from contracts.base import Event, utcnow
from contracts.kit.rpc import call
from gateway.auth import COOKIE_NAME

pytestmark = pytest.mark.asyncio

PORTAL = str(Path(sys.executable).with_name("portal"))


# -- helpers ---------------------------------------------------------------------------------------


def run_portal(portal: Portal, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORTAL_NATS_URL": portal.gateway_settings.nats_url or ""}
    return subprocess.run(
        [PORTAL, *args], capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL
    )


async def portal_command(portal: Portal, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(run_portal, portal, *args)


async def new_staff(
    portal: Portal, role: str = "teacher", *, school_id: str | None = None, trust_id: str | None = None
) -> tuple[str, str]:
    """A member of staff of this test's own, with a password: email, account id."""
    email = f"staff-{uuid.uuid4().hex[:8]}@school.example"
    reply = await call(
        portal.nc,
        identity.CREATE_STAFF,
        identity.CreateStaffRequest(
            email=email,
            name=f"Sam {role.title().replace('_', '')}",
            role=role,
            school_id=school_id if role != "trust_admin" else None,
            trust_id=trust_id if role == "trust_admin" else None,
            password=PASSWORD,
        ),
        timeout=10,
    )
    return email, reply.account_id


async def signed_in(gateway: httpx.AsyncClient, token: str) -> bool:
    """Whether one replica takes the token. `/ready` first: the replicas here are threads of one
    process, and its round trip over NATS makes the replica read what NATS had sent it before."""
    assert (await gateway.get("/ready")).status_code in (200, 503)
    answer = await gateway.get("/api/v1/me", headers=auth(token))
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def login_answer(http: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await http.post("/api/v1/auth/login", json={"email": email, "password": password})


async def assert_refused_like_a_wrong_password(http: httpx.AsyncClient, email: str) -> None:
    right = await login_answer(http, email)
    wrong = await login_answer(http, email, "not the password at all, no")
    assert_error(right, 401, "invalid_credentials")
    assert right.json() == wrong.json()


@asynccontextmanager
async def second_replica(portal: Portal, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = portal.gateway_settings.model_copy(update={"data_dir": tmp_path / "gateway-2"})
    async with running_gateway(settings, timeout=20) as gateway:
        yield gateway


@asynccontextmanager
async def email_requests(portal: Portal, kind: str) -> AsyncIterator[list[dict]]:
    """The email requests of one kind identity sends while the block runs."""
    seen: list[dict] = []

    async def on_request(msg) -> None:
        seen.append(json.loads(msg.data))

    sub = await portal.nc.subscribe(notify.request_subject(kind), cb=on_request)
    await portal.nc.flush()
    try:
        yield seen
    finally:
        await sub.unsubscribe()


async def publish(portal: Portal, subject: str, event: Event) -> None:
    js = portal.nc.jetstream()
    await js.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id})


async def name_of(portal: Portal, account_id: str) -> str:
    contacts = await call(portal.nc, identity.CONTACTS, identity.ContactsRequest(ids=[account_id]))
    return contacts.contacts[0].name


def page_csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found[1]


def cookie(token: str) -> dict[str, str]:
    return {"Cookie": f"{COOKIE_NAME}={token}", "Origin": PUBLIC_URL}


# -- the portal command ------------------------------------------------------------------------------


async def test_portal_staff_disable_ends_sessions_on_every_replica_and_enable_gives_back_the_old_password(
    portal: Portal, tmp_path: Path
) -> None:
    email, account_id = await new_staff(portal, school_id=portal.roster.school_a)
    token = await login(portal.http, email)
    async with email_requests(portal, "password_reset") as resets:
        assert (await portal.http.post("/api/v1/auth/password-reset", json={"email": email})).status_code == 202
        await eventually(lambda: resets, message="reset email request")
    reset_token = parse_qs(urlsplit(resets[0]["reset_url"]).query)["token"][0]

    async with second_replica(portal, tmp_path) as other:
        # Both replicas know the session (and keep it for minutes unless an event says otherwise).
        assert await signed_in(portal.http, token)
        assert await signed_in(other.http, token)

        done = await portal_command(portal, "staff", "disable", "--email", email.upper())
        assert done.returncode == 0, done.stderr
        assert "disabled teacher" in done.stdout and account_id in done.stdout

        # Answered only once the revocation was out: every replica has been sent it.
        assert not await signed_in(other.http, token)
        assert not await signed_in(portal.http, token)
        assert_error(await other.http.get("/api/v1/me", headers=auth(token)), 401, "unauthorized")

    await assert_refused_like_a_wrong_password(portal.http, email)
    # Adding them again by hand updates them and says they stay disabled.
    added = await portal_command(
        portal,
        "staff",
        "add",
        "--email",
        email,
        "--name",
        "Sam Again",
        "--role",
        "teacher",
        "--school",
        portal.roster.school_a,
    )
    assert added.returncode == 0, added.stderr
    assert "stays disabled" in added.stdout
    await assert_refused_like_a_wrong_password(portal.http, email)

    # A reset link sent before the disabling no longer works, and no new one is sent.
    confirm = {"token": reset_token, "password": "a brand new staff passphrase"}
    assert_error(await portal.http.post("/api/v1/auth/password-reset/confirm", json=confirm), 400, "invalid_token")
    control, _ = await new_staff(portal, school_id=portal.roster.school_a)
    async with email_requests(portal, "password_reset") as resets:
        for address in (email, control):
            assert (await portal.http.post("/api/v1/auth/password-reset", json={"email": address})).status_code == 202
        # The control's request came after the disabled account's: once it is here, that one would be too.
        await eventually(lambda: any(r["to"] == control for r in resets), message="control's reset email")
        assert [r["to"] for r in resets] == [control]

    again = await portal_command(portal, "staff", "enable", "--email", email)
    assert again.returncode == 0, again.stderr
    assert "enabled teacher" in again.stdout
    assert (await login_answer(portal.http, email)).status_code == 200
    assert not await signed_in(portal.http, token)  # the old session stays ended


async def test_portal_staff_disable_of_an_unknown_address_or_a_parent_changes_nothing(portal: Portal) -> None:
    unknown = await portal_command(portal, "staff", "disable", "--email", "nobody-here@school.example")
    assert unknown.returncode == 2 and "no such member of staff" in unknown.stderr.lower()
    parent_email = (await portal.get("parent", "/me")).json()["email"]
    as_parent = await portal_command(portal, "staff", "disable", "--email", parent_email)
    assert as_parent.returncode == 2, as_parent.stderr
    assert (await portal.get("parent", "/me")).status_code == 200


# -- the platform's roster events ------------------------------------------------------------------


async def test_a_staff_left_event_disables_and_a_later_staff_upserted_enables_again(
    portal: Portal, tmp_path: Path
) -> None:
    email, account_id = await new_staff(portal, school_id=portal.roster.school_a)
    staff_id = f"staff-{uuid.uuid4().hex[:8]}"

    def upserted(name: str, **kw) -> platform.StaffUpserted:
        return platform.StaffUpserted(
            school_id=portal.roster.school_a, staff_id=staff_id, email=email, name=name, role="teacher", **kw
        )

    # The roster names the account made by hand: it is theirs from now on.
    await publish(portal, platform.STAFF_UPSERTED, upserted("Robin Roster"))
    await eventually(lambda: _equals(name_of(portal, account_id), "Robin Roster"), message="roster name")
    token = await login(portal.http, email)

    async with second_replica(portal, tmp_path) as other:
        assert await signed_in(other.http, token)
        left = platform.StaffLeft(staff_id=staff_id)
        await publish(portal, platform.STAFF_LEFT, left)
        await eventually(lambda: _not(signed_in(other.http, token)), message="session ended on the second replica")
        assert not await signed_in(portal.http, token)
    await assert_refused_like_a_wrong_password(portal.http, email)

    # An upsert from before the departure, arriving late, does not bring them back (its other
    # changes still apply: the name shows it was read).
    stale = upserted("Robin Stale", occurred_at=left.occurred_at - timedelta(minutes=5))
    await publish(portal, platform.STAFF_UPSERTED, stale)
    await eventually(lambda: _equals(name_of(portal, account_id), "Robin Stale"), message="stale upsert read")
    await assert_refused_like_a_wrong_password(portal.http, email)

    await publish(portal, platform.STAFF_UPSERTED, upserted("Robin Returned", occurred_at=utcnow()))
    await eventually(lambda: _status(login_answer(portal.http, email), 200), message="enabled by the roster")


async def _equals(value, expected) -> bool:
    return (await value) == expected


async def _not(value) -> bool:
    return not await value


async def _status(response, status: int) -> bool:
    return (await response).status_code == status


# -- admins on the web pages and the API -----------------------------------------------------------


async def test_a_school_admin_disables_a_teacher_from_the_staff_page(portal: Portal, tmp_path: Path) -> None:
    email, account_id = await new_staff(portal, school_id=portal.roster.school_a)
    teacher = await login(portal.http, email)
    admin = portal.tokens["admin_a"]
    async with second_replica(portal, tmp_path) as other:
        assert await signed_in(other.http, teacher)

        page = await portal.http.get("/staff", headers=cookie(admin))
        assert page.status_code == 200, page.text
        assert email in page.text and f"/staff/{account_id}/disable" in page.text
        posted = await portal.http.post(
            f"/staff/{account_id}/disable", data={"csrf_token": page_csrf(page)}, headers=cookie(admin)
        )
        assert posted.status_code == 303, posted.text
        assert posted.headers["location"] == "/staff"

        assert not await signed_in(other.http, teacher)
    await assert_refused_like_a_wrong_password(portal.http, email)

    page = await portal.http.get("/staff", headers=cookie(admin))
    assert f"/staff/{account_id}/enable" in page.text and "Disabled" in page.text
    posted = await portal.http.post(
        f"/staff/{account_id}/enable", data={"csrf_token": page_csrf(page)}, headers=cookie(admin)
    )
    assert posted.status_code == 303, posted.text
    assert (await login_answer(portal.http, email)).status_code == 200


async def test_a_staff_form_without_its_csrf_token_disables_nobody(portal: Portal) -> None:
    email, account_id = await new_staff(portal, school_id=portal.roster.school_a)
    posted = await portal.http.post(
        f"/staff/{account_id}/disable", data={"csrf_token": "forged"}, headers=cookie(portal.tokens["admin_a"])
    )
    assert posted.status_code == 403
    assert (await login_answer(portal.http, email)).status_code == 200


async def test_admins_disable_only_staff_of_their_own_scope(portal: Portal) -> None:
    r = portal.roster
    in_b, in_b_id = await new_staff(portal, school_id=r.school_b)  # trust 1's other school
    in_c, in_c_id = await new_staff(portal, school_id=r.school_c)  # trust 2's school
    other_admin, other_admin_id = await new_staff(portal, "trust_admin", trust_id=r.trust2)
    admin_a_id = (await portal.get("admin_a", "/me")).json()["id"]

    # A school admin of school A: school B's teacher is unknown to them, on the API and the page.
    listed = await portal.get("admin_a", "/staff")
    assert listed.status_code == 200, listed.text
    ids = {m["account_id"] for m in listed.json()}
    assert admin_a_id in ids and in_b_id not in ids and in_c_id not in ids and other_admin_id not in ids
    assert_error(await portal.post("admin_a", f"/staff/{in_b_id}/disable"), 404, "not_found")
    page = await portal.http.get("/staff", headers=cookie(portal.tokens["admin_a"]))
    refused = await portal.http.post(
        f"/staff/{in_b_id}/disable", data={"csrf_token": page_csrf(page)}, headers=cookie(portal.tokens["admin_a"])
    )
    assert refused.status_code == 404
    assert_error(await portal.post("admin_a", "/staff/no-such-account/disable"), 404, "not_found")
    # Parents are not staff, whoever asks.
    assert_error(await portal.post("trust1", f"/staff/{portal.parent_id}/disable"), 404, "not_found")

    # A teacher disables nobody; their routes answer 404 like any unknown address.
    assert_error(await portal.post("teacher_a", f"/staff/{in_b_id}/disable"), 404, "not_found")
    assert_error(await portal.get("teacher_a", "/staff"), 404, "not_found")

    # Trust 1's admin: both of trust 1's schools, not trust 2's staff or its admins.
    assert_error(await portal.post("trust1", f"/staff/{in_c_id}/disable"), 404, "not_found")
    assert_error(await portal.post("trust1", f"/staff/{other_admin_id}/disable"), 404, "not_found")
    disabled = await portal.post("trust1", f"/staff/{in_b_id}/disable")
    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["disabled"] is True
    await assert_refused_like_a_wrong_password(portal.http, in_b)
    enabled = await portal.post("trust1", f"/staff/{in_b_id}/enable")
    assert enabled.status_code == 200 and enabled.json()["disabled"] is False
    for address in (in_b, in_c, other_admin):
        assert (await login_answer(portal.http, address)).status_code == 200


async def test_nobody_disables_themselves(portal: Portal) -> None:
    for who in ("admin_a", "trust1"):
        me = (await portal.get(who, "/me")).json()["id"]
        assert_error(await portal.post(who, f"/staff/{me}/disable"), 403, "forbidden")
        assert (await portal.get(who, "/me")).status_code == 200
    page = await portal.http.get("/staff", headers=cookie(portal.tokens["admin_a"]))
    me = (await portal.get("admin_a", "/me")).json()["id"]
    assert f"/staff/{me}/disable" not in page.text and "This is you" in page.text
    refused = await portal.http.post(
        f"/staff/{me}/disable", data={"csrf_token": page_csrf(page)}, headers=cookie(portal.tokens["admin_a"])
    )
    assert refused.status_code == 403
    assert (await portal.get("admin_a", "/me")).status_code == 200
