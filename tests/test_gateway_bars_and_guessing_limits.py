"""Linking's safeguards through the gateway: safeguarding bars (`/pupils/{id}/bars`) composed from
linking and identity, and the per-parent guessing limit answered as 429 with `Retry-After`.
A real NATS, the real identity and linking services and a gateway under uvicorn (the `portal`
fixture of conftest.py)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from gateway_portal import PASSWORD, Portal, assert_error, auth, cards, login, verified_parent
from helpers import eventually

from contracts import notify

pytestmark = pytest.mark.asyncio


async def printed(portal: Portal, class_id: str) -> dict[str, str]:
    """Create the class's printed codes; full name -> code."""
    assert (await portal.post("teacher_a", f"/classes/{class_id}/codes")).status_code == 201
    return cards((await portal.get("teacher_a", f"/classes/{class_id}/qr-sheet")).text)


async def add_child(portal: Portal, who: str, code: str) -> httpx.Response:
    return await portal.post(who, "/me/children", json={"code": code, "relationship": "mother", "accept_aup": True})


async def delete(portal: Portal, who: str, path: str) -> httpx.Response:
    return await portal.http.delete(f"/api/v1{path}", headers=auth(portal.tokens.get(who, "")))


async def test_a_bar_through_the_gateway(portal: Portal) -> None:
    r = portal.roster
    amy, ben = r.pupils[r.a1]["Amy"], r.pupils[r.a1]["Ben"]
    codes = await printed(portal, r.a1)
    for name in ("Amy Adams", "Ben Brown"):
        assert (await add_child(portal, "parent", codes[name])).status_code == 201
    email = (await portal.get("parent", "/me")).json()["email"]
    admin_id = (await portal.get("admin_a", "/me")).json()["id"]
    path = f"/pupils/{amy}/bars"
    body = {"email": email.upper(), "reason": "court order"}

    for who in ("teacher_a", "parent", "trust2"):
        assert_error(await portal.post(who, path, json=body), 404, "not_found")
    assert_error(await portal.post(None, path, json=body), 401, "unauthorized")
    assert_error(await portal.post("admin_a", f"/pupils/{r.pupils[r.b1]['Fay']}/bars", json=body), 404, "not_found")
    assert_error(
        await portal.post("admin_a", path, json={"email": "not an address", "reason": "x"}), 422, "validation_error"
    )
    assert_error(await portal.post("admin_a", path, json={"email": email}), 422, "validation_error")

    added = await portal.post("admin_a", path, json=body)
    assert added.status_code == 201, added.text
    bar_id = added.json()["bar_id"]
    # At once on this replica: the link is gone and the child's overview with it.
    assert [c["pupil_id"] for c in (await portal.get("parent", "/me/children")).json()] == [ben]
    assert_error(await portal.get("parent", f"/me/children/{amy}/overview"), 404, "not_found")
    assert_error(await add_child(portal, "parent", codes["Amy Adams"]), 404, "invalid_code")
    assert (await portal.post("admin_a", f"/pupils/{amy}/code")).status_code == 201
    fresh = cards((await portal.get("teacher_a", f"/classes/{r.a1}/qr-sheet")).text)["Amy Adams"]
    assert_error(await add_child(portal, "parent", fresh), 404, "invalid_code")

    # Registering with a barred address and a good code answers as for anyone (the answer must
    # not reveal the bar) and links nothing (tests/test_security_linking.py follows it through).
    assert (
        await portal.post("admin_a", path, json={"email": "newcomer@example.org", "reason": "police advice"})
    ).status_code == 201
    registering = {
        "email": "newcomer@example.org",
        "password": PASSWORD,
        "name": "New Comer",
        "accept_aup": True,
        "code": fresh,
        "relationship": "father",
    }
    assert (await portal.http.post("/api/v1/auth/register", json=registering)).status_code == 202

    listed = await portal.get("admin_a", path)
    assert listed.status_code == 200, listed.text
    assert [(b["bar_id"], b["email"], b["reason"]) for b in listed.json()][0] == (bar_id, email.upper(), "court order")
    assert [b["email"] for b in listed.json()][1:] == ["newcomer@example.org"] and all(b["at"] for b in listed.json())
    assert (await portal.get("trust1", path)).json() == listed.json()
    assert_error(await portal.get("teacher_a", path), 404, "not_found")
    assert (await portal.get("admin_a", f"/pupils/{ben}/bars")).json() == []

    assert_error(await delete(portal, "teacher_a", f"{path}/{bar_id}"), 404, "not_found")
    assert (await delete(portal, "admin_a", f"{path}/{bar_id}")).status_code == 204
    assert_error(await delete(portal, "admin_a", f"{path}/{bar_id}"), 404, "not_found")
    assert [b["email"] for b in (await portal.get("admin_a", path)).json()] == ["newcomer@example.org"]

    # Lifted: an invitation to the address links the child again.
    invitations: list[dict] = []

    async def on_request(msg) -> None:
        invitations.append(json.loads(msg.data))

    sub = await portal.nc.subscribe(notify.request_subject("invitation"), cb=on_request)
    await portal.nc.flush()
    assert (await portal.post("teacher_a", f"/pupils/{amy}/invitations", json={"email": email})).status_code == 201
    await eventually(lambda: invitations, timeout=10, message="invitation email request")
    await sub.unsubscribe()
    assert (await add_child(portal, "parent", invitations[0]["code"])).status_code == 201

    trail = (await portal.get("admin_a", f"/pupils/{amy}/audit")).json()
    rows = [(e["action"], e["actor"], e["parent_id"]) for e in trail]
    staff = f"staff:{admin_id}"
    assert ("bar_added", staff, None) in rows and ("bar_lifted", staff, None) in rows
    removed = rows.index(("link_removed", staff, portal.parent_id))
    assert rows[removed - 1] == ("bar_added", staff, None)
    assert rows[-1] == ("link_created", f"parent:{portal.parent_id}", portal.parent_id)


async def test_the_eleventh_wrong_code_answers_429_with_retry_after(portal: Portal) -> None:
    r = portal.roster
    codes = await printed(portal, r.a2)
    token = await login(portal.http, await verified_parent(portal.http, portal.nc))
    portal.tokens["guesser"] = token
    for i in range(10):
        wrong = f"2222-3333-{4444 + i}".replace("0", "2").replace("1", "3")
        if i % 2:
            assert_error(await portal.get("guesser", f"/link-codes/{wrong}"), 404, "invalid_code")
        else:
            assert_error(await add_child(portal, "guesser", wrong), 404, "invalid_code")
    limited = await add_child(portal, "guesser", codes["Dan Dale"])
    body = assert_error(limited, 429, "too_many_attempts")
    seconds = int(re.search(r"retry after (\d+) s$", body["detail"]).group(1))
    assert 3500 < seconds <= 3600 and limited.headers["retry-after"] == str(seconds)
    # Another parent on the same address is unaffected (one of this test's own: the module's
    # signed-in parent is the bar test's).
    portal.tokens["neighbour"] = await login(portal.http, await verified_parent(portal.http, portal.nc))
    assert (await add_child(portal, "neighbour", codes["Dan Dale"])).status_code == 201
