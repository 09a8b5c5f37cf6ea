"""Linking's part of closing the holes an attacker would use, attacked through the public
interfaces: the gateway's HTTP API, and platform and notify events published on NATS.

- registering with a printed code answers and links a barred address as any other (the answer
  reveals no bar) and never makes the barred link;
- a pupil who moves school loses the links, invitations and codes of the old school;
- a pupil has at most 10 pending invitations;
- an invitation shows as bounced only when the receiving mail server rejected it;
- a platform event naming a pupil with an invisible character is dead-lettered, not applied.

A real NATS, the real identity, linking and notify services (notify sending to a real SMTP
server, at most one email an address a day) and a gateway under uvicorn, one for the module;
each test uses pupils of its own from the roster of `gateway_portal`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from gateway_portal import PASSWORD, Portal, assert_error, auth, cards, login, running_portal
from helpers import eventually
from smtp_server import SmtpServer

from contracts import identity, notify, platform
from contracts import linking as contract
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from notify import app as notify_app
from portal.natsserver import free_port

pytestmark = pytest.mark.asyncio

ROSTER_DEAD_LETTERS = "deadletter.linking.linking-roster"


@dataclass
class Heard:
    """What the module heard on NATS (plain subscriptions: nothing is taken from a stream)."""

    email_requests: list[dict] = field(default_factory=list)
    email_failures: list[dict] = field(default_factory=list)
    links_removed: list[dict] = field(default_factory=list)
    roster_dead_letters: list[dict] = field(default_factory=list)

    def request(self, kind: str, to: str) -> dict | None:
        found = [r for r in self.email_requests if r.get("kind") == kind and r.get("to", "").lower() == to.lower()]
        return found[-1] if found else None

    def failure(self, reference: str) -> dict | None:
        return next((f for f in self.email_failures if f["reference"] == reference), None)


@dataclass
class World:
    portal: Portal
    smtp: SmtpServer
    heard: Heard


@pytest.fixture(scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    tmp = tmp_path_factory.mktemp("security-linking")
    smtp = SmtpServer(free_port()).start()
    try:
        async with running_portal(tmp) as portal:
            heard = Heard()

            def keep(into: list[dict]):
                async def on_msg(msg) -> None:
                    into.append(json.loads(msg.data))

                return on_msg

            nc = portal.nc
            await nc.subscribe("notify.request.>", cb=keep(heard.email_requests))
            await nc.subscribe(notify.EMAIL_FAILED, cb=keep(heard.email_failures))
            await nc.subscribe(contract.LINK_REMOVED, cb=keep(heard.links_removed))
            await nc.subscribe(ROSTER_DEAD_LETTERS, cb=keep(heard.roster_dead_letters))
            await nc.flush()

            settings = notify_app.Settings(
                nats_url=portal.gateway_settings.nats_url,
                data_dir=tmp / "notify",
                smtp_url=smtp.url,
                notify_daily_cap=1,
                notify_retry_base_seconds=1.0,
            )
            await asyncio.to_thread(migrate, notify_app, settings)
            async with notify_app.build(settings).running():
                yield World(portal, smtp, heard)
    finally:
        smtp.stop()


def address(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}@example.org"


async def register(world: World, email: str, code: str) -> httpx.Response:
    body = {
        "email": email,
        "password": PASSWORD,
        "name": "Pat Parent",
        "accept_aup": True,
        "code": code,
        "relationship": "father",
    }
    return await world.portal.http.post("/api/v1/auth/register", json=body)


async def verify(world: World, email: str) -> str:
    """Verify `email` with the link of its verification email request; its bearer token."""
    request = await eventually(
        lambda: world.heard.request("verification", email), timeout=15, message=f"verification email to {email}"
    )
    token = request["verify_url"].split("token=", 1)[1]
    verified = await world.portal.http.post("/api/v1/auth/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    return await login(world.portal.http, email)


async def signed_in_parent(world: World) -> tuple[str, str]:
    """A new verified parent: (bearer token, parent id)."""
    email = address("parent")
    body = {"email": email, "password": PASSWORD, "name": "Sam Parent", "accept_aup": True}
    assert (await world.portal.http.post("/api/v1/auth/register", json=body)).status_code == 202
    token = await verify(world, email)
    me = await world.portal.http.get("/api/v1/me", headers=auth(token))
    return token, me.json()["id"]


async def children(world: World, token: str) -> list[str]:
    response = await world.portal.http.get("/api/v1/me/children", headers=auth(token))
    assert response.status_code == 200, response.text
    return [c["pupil_id"] for c in response.json()]


async def add_child(world: World, token: str, code: str) -> httpx.Response:
    body = {"code": code, "relationship": "mother", "accept_aup": True}
    return await world.portal.http.post("/api/v1/me/children", json=body, headers=auth(token))


async def printed_code(world: World, class_id: str, pupil_id: str, full_name: str) -> str:
    """A new printed code for one pupil, as read off the class's sheet."""
    p = world.portal
    assert (await p.post("admin_a", f"/pupils/{pupil_id}/code")).status_code == 201
    return cards((await p.get("teacher_a", f"/classes/{class_id}/qr-sheet")).text)[full_name]


async def invite(world: World, who: str, pupil_id: str, email: str) -> httpx.Response:
    return await world.portal.post(who, f"/pupils/{pupil_id}/invitations", json={"email": email})


async def pupil_row(world: World, who: str, class_id: str, pupil_id: str) -> dict | None:
    response = await world.portal.get(who, f"/classes/{class_id}/pupils")
    assert response.status_code == 200, response.text
    return next((p for p in response.json() if p["pupil_id"] == pupil_id), None)


async def invitation_statuses(world: World, class_id: str, pupil_id: str) -> dict[str, str]:
    row = await pupil_row(world, "teacher_a", class_id, pupil_id)
    assert row is not None
    return {i["email"]: i["status"] for i in row["invitations"]}


# -- bars and the registration's dry run -----------------------------------------------------------


async def test_registering_a_barred_address_answers_as_any_other_and_never_links(world: World) -> None:
    p, r = world.portal, world.portal.roster
    amy = r.pupils[r.a1]["Amy"]
    code = await printed_code(world, r.a1, amy, "Amy Adams")
    barred, other = address("barred"), address("other")
    bar = await p.post("admin_a", f"/pupils/{amy}/bars", json={"email": barred, "reason": "court order"})
    assert bar.status_code == 201, bar.text

    # A code holder learns nothing from the answer: the same status and body either way (the
    # barred address typed as a person might, in capitals).
    answers = [await register(world, email, code) for email in (barred.upper(), other)]
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()

    # Both accounts are real and verified as usual; only the other one has the child.
    barred_token, other_token = await verify(world, barred.upper()), await verify(world, other)
    assert await children(world, other_token) == [amy]
    assert await children(world, barred_token) == []
    assert_error(await p.http.get(f"/api/v1/me/children/{amy}/overview", headers=auth(barred_token)), 404, "not_found")
    # Signed in, the barred parent's code is refused as a bad code would be.
    assert_error(await add_child(world, barred_token, code), 404, "invalid_code")
    assert await children(world, barred_token) == []

    barred_id = (await p.http.get("/api/v1/me", headers=auth(barred_token))).json()["id"]
    trail = (await p.get("admin_a", f"/pupils/{amy}/audit")).json()
    assert not [e for e in trail if e["parent_id"] == barred_id], trail
    parents = (await pupil_row(world, "admin_a", r.a1, amy))["parents"]
    assert barred_id not in [x["parent_id"] for x in parents]


# -- a pupil moving school -----------------------------------------------------------------------------


async def test_a_pupil_who_moves_school_loses_what_the_old_school_gave(world: World) -> None:
    p, r = world.portal, world.portal.roster
    cara = r.pupils[r.a1]["Cara"]
    old_code = await printed_code(world, r.a1, cara, "Cara Clark")
    token, parent_id = await signed_in_parent(world)
    assert (await add_child(world, token, old_code)).status_code == 201
    assert (await p.http.get(f"/api/v1/me/children/{cara}/overview", headers=auth(token))).status_code == 200
    invited = address("invited")
    assert (await invite(world, "teacher_a", cara, invited)).status_code == 201
    invitation_code = (
        await eventually(lambda: world.heard.request("invitation", invited), timeout=10, message="invitation")
    )["code"]

    # A member of staff of the new school, school B.
    await call(
        p.nc,
        identity.CREATE_STAFF,
        identity.CreateStaffRequest(
            email="admin_b@school.example",
            name="Bea Birch",
            role="school_admin",
            school_id=r.school_b,
            password=PASSWORD,
        ),
        timeout=10,
    )
    p.tokens["admin_b"] = await login(p.http, "admin_b@school.example")

    moved = platform.PupilUpserted(
        school_id=r.school_b, pupil_id=cara, first_name="Cara", last_name="Clark", class_ids=[r.b1]
    )
    await p.nc.jetstream().publish(
        platform.PUPIL_UPSERTED, moved.model_dump_json().encode(), headers={"Nats-Msg-Id": moved.event_id}
    )

    # The parent loses the child, the overview with it.
    await eventually(lambda: _without(children(world, token), cara), timeout=15, message="the child dropped")
    assert_error(await p.http.get(f"/api/v1/me/children/{cara}/overview", headers=auth(token)), 404, "not_found")
    removed = [e for e in world.heard.links_removed if e["parent_id"] == parent_id and e["pupil_id"] == cara]
    assert [(e["by"], e["school_id"]) for e in removed] == [("school_changed", r.school_a)]

    # The old school no longer has the pupil, nor the parent; its own trail says why.
    assert await pupil_row(world, "teacher_a", r.a1, cara) is None
    assert_error(await p.get("teacher_a", f"/parents/{parent_id}/pupils"), 404, "not_found")
    old_trail = (await p.get("admin_a", f"/pupils/{cara}/audit")).json()
    assert [(e["action"], e["actor"], e["reason"]) for e in old_trail if e["parent_id"] == parent_id][-1] == (
        "link_removed",
        "system",
        "school_changed",
    )

    # The new school has the pupil and never saw the old school's parents or invitations.
    row = await pupil_row(world, "admin_b", r.b1, cara)
    assert row is not None and row["parents"] == [] and row["invitations"] == [] and row["code_expires_at"] is None
    assert_error(await p.get("admin_b", f"/parents/{parent_id}/pupils"), 404, "not_found")
    new_trail = (await p.get("admin_b", f"/pupils/{cara}/audit")).json()
    assert not [e for e in new_trail if e["parent_id"] == parent_id or "invitation" in e["action"]], new_trail

    # The old school's printed card and invitation no longer link the child, for anyone.
    newcomer, _ = await signed_in_parent(world)
    for code in (old_code, invitation_code):
        assert_error(await add_child(world, newcomer, code), 404, "invalid_code")
        assert_error(await add_child(world, token, code), 404, "invalid_code")
    assert_error(await register(world, address("late"), old_code), 404, "invalid_code")
    assert await children(world, newcomer) == [] and await children(world, token) == []

    # The new school's own code links as usual.
    assert (await p.post("admin_b", f"/pupils/{cara}/code")).status_code == 201
    new_code = cards((await p.get("admin_b", f"/classes/{r.b1}/qr-sheet")).text)["Cara Clark"]
    assert (await add_child(world, token, new_code)).status_code == 201
    row = await pupil_row(world, "admin_b", r.b1, cara)
    assert row is not None and [x["parent_id"] for x in row["parents"]] == [parent_id]


async def _without(found, pupil_id: str) -> bool:
    return pupil_id not in await found


# -- pending invitations -----------------------------------------------------------------------------


async def test_a_pupil_has_at_most_10_pending_invitations(world: World) -> None:
    r = world.portal.roster
    dan, eve = r.pupils[r.a2]["Dan"], r.pupils[r.a2]["Eve"]
    addresses = [address(f"carer{i}") for i in range(10)]
    for email in addresses:
        answer = await invite(world, "teacher_a", dan, email)
        assert answer.status_code == 201, answer.text

    eleventh = address("eleventh")
    body = assert_error(await invite(world, "teacher_a", dan, eleventh), 409, "too_many_invitations")
    assert "10" in body["detail"]
    assert_error(await invite(world, "admin_a", dan, eleventh), 409, "too_many_invitations")
    statuses = await invitation_statuses(world, r.a2, dan)
    assert sorted(statuses) == sorted(addresses) and set(statuses.values()) == {"invited"}
    assert world.heard.request("invitation", eleventh) is None

    # Inviting an address again replaces its invitation, so it is always allowed.
    again = await invite(world, "teacher_a", dan, addresses[0])
    assert again.status_code == 201, again.text
    statuses = await invitation_statuses(world, r.a2, dan)
    assert list(statuses.values()).count("invited") == 10
    # The limit is the pupil's: another pupil of the class is invited as usual.
    assert (await invite(world, "teacher_a", eve, eleventh)).status_code == 201


# -- bounced ----------------------------------------------------------------------------------------


async def test_only_a_rejection_by_the_mail_server_marks_an_invitation_bounced(world: World) -> None:
    r = world.portal.roster
    ben, eve = r.pupils[r.a1]["Ben"], r.pupils[r.a2]["Eve"]
    capped, wrong = address("capped"), address("wrong")

    # The address has had its one email today: the second invitation to it is not sent.
    assert (await invite(world, "teacher_a", ben, capped)).status_code == 201
    await eventually(lambda: world.smtp.to(capped), timeout=15, message="the first invitation delivered")
    second = await invite(world, "teacher_a", eve, capped)
    assert second.status_code == 201, second.text
    reference = f"invitation:{second.json()['invitation_id']}"
    failed = await eventually(lambda: world.heard.failure(reference), timeout=15, message="the capped email failed")
    assert failed["reason"] == "daily_cap"

    # The receiving server refuses this address: that invitation bounces. Linking applies
    # notify's events in their order, so by then it has applied the daily cap's too.
    world.smtp.handler.reject[wrong] = f"550 5.1.1 <{wrong}>: no such user"
    rejected = await invite(world, "teacher_a", ben, wrong)
    assert rejected.status_code == 201, rejected.text

    async def bounced() -> bool:
        return (await invitation_statuses(world, r.a1, ben)).get(wrong) == "bounced"

    await eventually(bounced, timeout=20, message="the rejected invitation bounced")
    assert world.heard.failure(f"invitation:{rejected.json()['invitation_id']}")["reason"] == "rejected"
    assert (await invitation_statuses(world, r.a2, eve))[capped] == "invited"
    assert (await invitation_statuses(world, r.a1, ben))[capped] == "invited"


# -- names in platform events -----------------------------------------------------------------------


async def test_a_pupil_event_with_a_bidi_override_in_a_name_is_dead_lettered(world: World) -> None:
    p, r = world.portal, world.portal.roster
    gus = r.pupils[r.b1]["Gus"]
    newcomer = f"pupil-{uuid.uuid4().hex[:8]}"
    js = p.nc.jetstream()
    sent = []
    for pupil_id, first_name in ((gus, "Gus\u202eneerG"), (newcomer, "\u202eIvy")):
        event = platform.PupilUpserted(
            school_id=r.school_b, pupil_id=pupil_id, first_name="placeholder", last_name="Green", class_ids=[r.b1]
        )
        # As a platform that does not check its names would send it: the schema refuses it.
        data = json.loads(event.model_dump_json())
        data["first_name"] = first_name
        await js.publish(platform.PUPIL_UPSERTED, json.dumps(data).encode(), headers={"Nats-Msg-Id": event.event_id})
        sent.append(event.event_id)

    await eventually(
        lambda: {e["event_id"] for e in world.heard.roster_dead_letters} >= set(sent),
        timeout=15,
        message="both events dead-lettered",
    )
    status = await call(p.nc, contract.ROSTER_STATUS, contract.RosterStatusRequest(event_ids=sent), timeout=5)
    assert sorted(status.missing) == sorted(sent)
    rows = (await p.get("trust1", f"/classes/{r.b1}/pupils")).json()
    assert [(x["first_name"], x["last_name"]) for x in rows if x["pupil_id"] == gus] == [("Gus", "Green")]
    assert newcomer not in [x["pupil_id"] for x in rows]
    assert not [x for x in rows if "\u202e" in x["first_name"]]
