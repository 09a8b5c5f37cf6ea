"""Staff at scale through the gateway ("Running it across a trust" in docs/http-api.md):
withdrawing invitations, removal reasons, codes only for the pupils who lack one, one pupil's
card, inviting many parents at once. A real NATS, the real identity and linking services and a
gateway under uvicorn (the `portal` fixture of conftest.py, one per module: each test uses
pupils of its own)."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gateway_portal import PASSWORD, Portal, assert_error, auth, cards, login, uid
from helpers import eventually

from contracts import linking as contract
from contracts import notify, platform
from contracts.base import Event
from contracts.kit.i18n import format_day
from contracts.kit.rpc import RpcError, call
from gateway import uptake as uptake_figures

pytestmark = pytest.mark.asyncio


async def delete(portal: Portal, who: str | None, path: str, headers: dict | None = None, **kw) -> httpx.Response:
    headers = {**auth(portal.tokens.get(who or "")), **(headers or {})}
    return await portal.http.request("DELETE", f"/api/v1{path}", headers=headers, **kw)


async def add_child(portal: Portal, code: str) -> httpx.Response:
    return await portal.post(
        "parent", "/me/children", json={"code": code, "relationship": "mother", "accept_aup": True}
    )


class Mailbox:
    """The invitation emails linking asks notify to send, by address."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def start(self, portal: Portal) -> Mailbox:
        async def on_request(msg) -> None:
            self.sent.append(json.loads(msg.data))

        await portal.nc.subscribe(notify.request_subject("invitation"), cb=on_request)
        await portal.nc.flush()
        return self

    async def code_for(self, email: str) -> str:
        found = await eventually(
            lambda: [m["code"] for m in self.sent if m["to"] == email], timeout=10, message=f"invitation to {email}"
        )
        return found[-1]


async def invite(portal: Portal, pupil_id: str, email: str) -> str:
    response = await portal.post("teacher_a", f"/pupils/{pupil_id}/invitations", json={"email": email})
    assert response.status_code == 201, response.text
    return response.json()["invitation_id"]


async def invitation_statuses(portal: Portal, class_id: str, pupil_id: str) -> dict[str, str]:
    rows = (await portal.get("teacher_a", f"/classes/{class_id}/pupils")).json()
    row = next(r for r in rows if r["pupil_id"] == pupil_id)
    return {i["invitation_id"]: i["status"] for i in row["invitations"]}


async def test_withdrawing_an_invitation_stops_its_code_at_once(portal: Portal) -> None:
    r = portal.roster
    cara = r.pupils[r.a1]["Cara"]
    mail = await Mailbox().start(portal)
    wrong = await invite(portal, cara, "typo@exmaple.org")
    code = await mail.code_for("typo@exmaple.org")

    # Another trust's admin, a parent and nobody cannot withdraw it; nor is it there for them.
    assert_error(await delete(portal, "trust2", f"/invitations/{wrong}"), 404, "not_found")
    assert_error(await delete(portal, "parent", f"/invitations/{wrong}"), 404, "not_found")
    assert_error(await delete(portal, None, f"/invitations/{wrong}"), 401, "unauthorized")
    assert_error(await delete(portal, "teacher_a", "/invitations/no-such-invitation"), 404, "not_found")
    assert (await invitation_statuses(portal, r.a1, cara))[wrong] == "invited"

    assert (await delete(portal, "teacher_a", f"/invitations/{wrong}")).status_code == 204
    assert (await invitation_statuses(portal, r.a1, cara))[wrong] == "revoked"
    assert_error(await portal.get("parent", f"/link-codes/{code}"), 404, "invalid_code")
    assert_error(await add_child(portal, code), 404, "invalid_code")
    # Twice is harmless.
    assert (await delete(portal, "trust1", f"/invitations/{wrong}")).status_code == 204

    # An accepted invitation cannot be withdrawn: the parent is linked.
    email = (await portal.get("parent", "/me")).json()["email"]
    right = await invite(portal, cara, email)
    assert (await add_child(portal, await mail.code_for(email))).status_code == 201
    assert_error(await delete(portal, "teacher_a", f"/invitations/{right}"), 409, "already_accepted")
    assert (await invitation_statuses(portal, r.a1, cara))[right] == "accepted"

    trail = (await portal.get("admin_a", f"/pupils/{cara}/audit")).json()
    assert [e["reason"] for e in trail if e["action"] == "invitation_withdrawn"] == [f"invitation {wrong}"]


async def test_a_removal_keeps_its_reason_on_the_audit_row(portal: Portal) -> None:
    r = portal.roster
    dan = r.pupils[r.a2]["Dan"]
    assert (await portal.post("teacher_a", f"/classes/{r.a2}/codes")).status_code == 201
    sheet = (await portal.get("teacher_a", f"/classes/{r.a2}/qr-sheet")).text
    code = cards(sheet)["Dan Dale"]
    path = f"/pupils/{dan}/parents/{portal.parent_id}"
    # Bad bodies change nothing.
    assert_error(await delete(portal, "teacher_a", path, json={"reason": "x" * 501}), 422, "validation_error")
    assert_error(await delete(portal, "teacher_a", path, json={"reason": 5}), 422, "validation_error")
    assert_error(
        await delete(portal, "teacher_a", path, content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "bad_request",
    )
    assert (await add_child(portal, code)).status_code == 201
    removed = await delete(portal, "teacher_a", path, json={"reason": "  Court order received  "})
    assert removed.status_code == 204, removed.text
    trail = (await portal.get("admin_a", f"/pupils/{dan}/audit")).json()
    assert [e["reason"] for e in trail if e["action"] == "link_removed"] == ["Court order received"]

    # Without a body, as before: the default reason.
    eve = r.pupils[r.a2]["Eve"]
    assert (await add_child(portal, cards(sheet)["Eve Evans"])).status_code == 201
    assert (await delete(portal, "teacher_a", f"/pupils/{eve}/parents/{portal.parent_id}")).status_code == 204
    trail = (await portal.get("admin_a", f"/pupils/{eve}/audit")).json()
    assert [e["reason"] for e in trail if e["action"] == "link_removed"] == ["removed by staff"]


async def roster(portal: Portal, *events: tuple[str, Event]) -> None:
    """Publish roster events and wait until linking applied them."""
    js = portal.nc.jetstream()
    for subject, event in events:
        await js.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id})

    async def applied() -> bool:
        status = await call(
            portal.nc, contract.ROSTER_STATUS, contract.RosterStatusRequest(event_ids=[e.event_id for _, e in events])
        )
        return not status.missing

    await eventually(applied, timeout=15, message="roster applied")


async def live(portal: Portal, code: str) -> bool:
    response = await portal.get("parent", f"/link-codes/{code}")
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


async def test_codes_only_for_pupils_without_one_and_one_pupils_card(portal: Portal) -> None:
    r = portal.roster
    amy, ben = r.pupils[r.a1]["Amy"], r.pupils[r.a1]["Ben"]
    maths = uid("set")
    await roster(
        portal,
        (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=r.school_a, class_id=maths, name="Maths set 1")),
        *(
            (
                platform.PUPIL_UPSERTED,
                platform.PupilUpserted(
                    school_id=r.school_a, pupil_id=pid, first_name=first, last_name=last, class_ids=[r.a1, maths]
                ),
            )
            for pid, first, last in ((amy, "Amy", "Adams"), (ben, "Ben", "Brown"))
        ),
    )
    assert (await portal.post("teacher_a", f"/classes/{r.a1}/codes")).status_code == 201
    printed = cards((await portal.get("teacher_a", f"/classes/{r.a1}/qr-sheet")).text)
    assert len(printed) == 3

    # The set teacher's "only missing" leaves the registration class's cards working.
    made = await portal.post("teacher_a", f"/classes/{maths}/codes", json={"only_missing": True})
    assert made.status_code == 201, made.text
    assert made.json()["codes"] == []
    assert [await live(portal, printed[n]) for n in ("Amy Adams", "Ben Brown")] == [True, True]

    # A pupil who joins mid-year: only they get a code.
    zed = uid("pupil")
    await roster(
        portal,
        (
            platform.PUPIL_UPSERTED,
            platform.PupilUpserted(
                school_id=r.school_a, pupil_id=zed, first_name="Zed", last_name="Zane", class_ids=[r.a1]
            ),
        ),
    )
    rows = {p["pupil_id"]: p for p in (await portal.get("teacher_a", f"/classes/{r.a1}/pupils")).json()}
    assert rows[zed]["code_expires_at"] is None and rows[amy]["code_expires_at"]
    assert_error(await portal.get("teacher_a", f"/pupils/{zed}/qr-sheet"), 404, "no_code")
    made = await portal.post("teacher_a", f"/classes/{r.a1}/codes", json={"only_missing": True})
    assert [c["pupil_id"] for c in made.json()["codes"]] == [zed]
    assert all([await live(portal, c) for c in printed.values()])
    rows = {p["pupil_id"]: p for p in (await portal.get("teacher_a", f"/classes/{r.a1}/pupils")).json()}
    assert rows[zed]["code_expires_at"] == made.json()["codes"][0]["expires_at"]

    # Zed's one card, as HTML and PDF; nobody outside the school gets it.
    page = await portal.get("teacher_a", f"/pupils/{zed}/qr-sheet")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    card = cards(page.text)
    assert list(card) == ["Zed Zane"]
    preview = (await portal.get("parent", f"/link-codes/{card['Zed Zane']}")).json()
    assert preview["first_name"] == "Zed" and preview["class_name"] == "Year 3 Robins"
    pdf = await portal.get("trust1", f"/pupils/{zed}/qr-sheet", params={"format": "pdf"})
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF") and "attachment" in pdf.headers["content-disposition"]
    for who in ("trust2", "parent"):
        assert_error(await portal.get(who, f"/pupils/{zed}/qr-sheet"), 404, "not_found")
    assert_error(
        await portal.get("teacher_a", f"/pupils/{zed}/qr-sheet", params={"format": "doc"}), 422, "validation_error"
    )

    # A bad body changes nothing; without one, every pupil gets a new code.
    assert_error(
        await portal.post("teacher_a", f"/classes/{r.a1}/codes", json={"only_missing": "perhaps"}),
        422,
        "validation_error",
    )
    assert await live(portal, card["Zed Zane"])
    assert len((await portal.post("teacher_a", f"/classes/{r.a1}/codes")).json()["codes"]) == 4
    assert not await live(portal, card["Zed Zane"])


async def test_inviting_a_list_skips_bad_rows_and_sends_the_rest(portal: Portal) -> None:
    r = portal.roster
    amy, ben = r.pupils[r.a1]["Amy"], r.pupils[r.a1]["Ben"]
    fay = r.pupils[r.b1]["Fay"]
    mail = await Mailbox().start(portal)
    tag = uid("bulk")
    rows = [
        {"pupil_id": amy, "email": f"mum.{tag}@example.org"},
        {"pupil_id": ben, "email": "not-an-address"},
        {"pupil_id": "no-such-pupil", "email": f"x.{tag}@example.org"},
        {"pupil_id": fay, "email": f"fay.{tag}@example.org"},
        {"pupil_id": amy, "email": f" MUM.{tag}@Example.org "},
        {"pupil_id": ben, "email": f"dad.{tag}@example.org"},
    ]
    path = f"/classes/{r.a1}/invitations"
    for who in ("trust2", "parent"):
        assert_error(await portal.post(who, path, json={"invitations": rows}), 404, "not_found")
    assert_error(
        await portal.post("teacher_a", f"/classes/{r.b1}/invitations", json={"invitations": rows}), 404, "not_found"
    )
    assert_error(await portal.post("teacher_a", path, json={}), 422, "validation_error")
    too_many = [{"pupil_id": amy, "email": f"n{i}.{tag}@example.org"} for i in range(1001)]
    body = assert_error(await portal.post("teacher_a", path, json={"invitations": too_many}), 413, "payload_too_large")
    assert "1,001" in body["detail"]

    response = await portal.post("teacher_a", path, json={"invitations": rows})
    assert response.status_code == 201, response.text
    assert response.json() == {
        "sent": 2,
        "skipped": [
            {"pupil_id": ben, "email": "not-an-address", "reason": "invalid_email"},
            {"pupil_id": "no-such-pupil", "email": f"x.{tag}@example.org", "reason": "unknown_pupil"},
            {"pupil_id": fay, "email": f"fay.{tag}@example.org", "reason": "unknown_pupil"},
            {"pupil_id": amy, "email": f" MUM.{tag}@Example.org ", "reason": "duplicate"},
        ],
    }
    code = await mail.code_for(f"mum.{tag}@example.org")
    await mail.code_for(f"dad.{tag}@example.org")
    assert not any(tag in m["to"] and m["to"].startswith(("n", "x.", "fay.")) for m in mail.sent)
    assert (await portal.get("parent", f"/link-codes/{code}")).json()["first_name"] == "Amy"
    statuses = await invitation_statuses(portal, r.a1, amy)
    assert list(statuses.values()).count("invited") >= 1

    # Sent again: already waiting for an answer, nothing new goes out.
    again = await portal.post("trust1", path, json={"invitations": rows[:1]})
    assert again.json() == {"sent": 0, "skipped": [{**rows[0], "reason": "already_invited"}]}
    assert (await invitation_statuses(portal, r.a1, amy)) == statuses


def pupil(school_id: str, pupil_id: str, name: str, class_ids: list[str], contacts: list[tuple[str, str]] | None):
    first, last = name.split()
    return (
        platform.PUPIL_UPSERTED,
        platform.PupilUpserted(
            school_id=school_id,
            pupil_id=pupil_id,
            first_name=first,
            last_name=last,
            class_ids=class_ids,
            contacts=None
            if contacts is None
            else [platform.RosterContact(email=e, relationship=rel) for e, rel in contacts],
        ),
    )


async def test_inviting_the_roster_contacts_of_a_class(portal: Portal) -> None:
    r = portal.roster
    kites = uid("kites")
    kim, lee, max_ = uid("pupil"), uid("pupil"), uid("pupil")
    tag = uid("c")
    kim_contacts = [(f"kim.mum.{tag}@example.org", "mother"), (f"kim.dad.{tag}@example.org", "father")]
    lee_contact = f"lee.gran.{tag}@example.org"
    await roster(
        portal,
        (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=r.school_a, class_id=kites, name="Year 5 Kites")),
        pupil(r.school_a, kim, "Kim Kent", [kites], kim_contacts),
        pupil(r.school_a, lee, "Lee Long", [kites], [(lee_contact, "grandparent")]),
        pupil(r.school_a, max_, "Max Moss", [kites], []),
    )
    # Lee has a linked parent: their contact is not invited.
    assert (await portal.post("teacher_a", f"/pupils/{lee}/code")).status_code == 201
    card = cards((await portal.get("teacher_a", f"/pupils/{lee}/qr-sheet")).text)["Lee Long"]
    assert (await add_child(portal, card)).status_code == 201

    mail = await Mailbox().start(portal)
    path = f"/classes/{kites}/invitations"
    assert_error(await portal.post("trust2", path, json={"from_contacts": True}), 404, "not_found")
    assert_error(
        await portal.post("teacher_a", path, json={"from_contacts": True, "invitations": []}), 422, "validation_error"
    )
    sent = await portal.post("teacher_a", path, json={"from_contacts": True})
    assert sent.status_code == 201, sent.text
    assert sent.json() == {
        "sent": 2,
        "skipped": [{"pupil_id": lee, "email": lee_contact, "reason": "already_linked"}],
    }
    for email, _ in kim_contacts:
        code = await mail.code_for(email)
        assert (await portal.get("parent", f"/link-codes/{code}")).json()["first_name"] == "Kim"
    assert not [m for m in mail.sent if m["to"] == lee_contact]

    # Again: both are waiting for an answer, nobody is emailed twice.
    again = (await portal.post("teacher_a", path, json={"from_contacts": True})).json()
    assert again["sent"] == 0
    assert sorted(s["reason"] for s in again["skipped"]) == ["already_invited", "already_invited", "already_linked"]

    # Kept encrypted: the address nobody was sent is nowhere in linking's database in clear.
    data_dir = portal.gateway_settings.data_dir.parent / "linking"
    stored = b"".join(p.read_bytes() for p in data_dir.glob("linking.db*"))
    assert stored and lee_contact.encode() not in stored

    # A leaver's contacts go with them: back again (a roster saying nothing of contacts), none are left.
    left = platform.PupilLeft(pupil_id=lee)
    await roster(portal, (platform.PUPIL_LEFT, left))
    await roster(portal, pupil(r.school_a, lee, "Lee Long", [kites], None))
    again = (await portal.post("teacher_a", path, json={"from_contacts": True})).json()
    assert [s["pupil_id"] for s in again["skipped"]] == [kim, kim]
    # A roster with the columns but empty cells clears them.
    await roster(portal, pupil(r.school_a, kim, "Kim Kent", [kites], []))
    assert (await portal.post("teacher_a", path, json={"from_contacts": True})).json() == {"sent": 0, "skipped": []}


async def registered_with_code(portal: Portal, code: str) -> str:
    """A parent who registers with a child's code and verifies their address, never signing in."""
    email = f"{uid('never')}@example.org"
    urls: list[str] = []

    async def on_request(msg) -> None:
        body = json.loads(msg.data)
        if body.get("to") == email:
            urls.append(body["verify_url"])

    sub = await portal.nc.subscribe(notify.request_subject("verification"), cb=on_request)
    await portal.nc.flush()
    body = {
        "email": email,
        "password": PASSWORD,
        "name": "Nev Never",
        "accept_aup": True,
        "code": code,
        "relationship": "father",
    }
    assert (await portal.http.post("/api/v1/auth/register", json=body)).status_code == 202
    await eventually(lambda: urls, timeout=10, message="verification email request")
    await sub.unsubscribe()
    token = parse_qs(urlsplit(urls[0]).query)["token"][0]
    assert (await portal.http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    return email


async def test_uptake_of_a_trust_a_school_and_a_class_as_json_and_csv(
    portal: Portal, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = portal.roster
    dale, d1 = uid("dale"), uid("d1")
    ivy, jo = uid("pupil"), uid("pupil")
    hal = r.pupils[r.c1]["Hal"]
    await roster(
        portal,
        (
            platform.SCHOOL_UPSERTED,
            platform.SchoolUpserted(trust_id=r.trust2, school_id=dale, name="Dale School", timezone="Europe/London"),
        ),
        (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=dale, class_id=d1, name="Dale 1")),
        pupil(dale, ivy, "Ivy Ivens", [d1], None),
        pupil(dale, jo, "Jo Jones", [d1], None),
    )
    # Hal: the signed-in parent and one who registered with the code and never signed in since.
    assert (await portal.post("trust2", f"/pupils/{hal}/code")).status_code == 201
    card = cards((await portal.get("trust2", f"/pupils/{hal}/qr-sheet")).text)["Hal Hill"]
    assert (await add_child(portal, card)).status_code == 201
    await registered_with_code(portal, card)

    async def hal_linked_twice() -> bool:
        rows = (await portal.get("trust2", f"/classes/{r.c1}/pupils")).json()
        return sum(p["status"] == "linked" for p in rows[0]["parents"]) == 2

    await eventually(hal_linked_twice, timeout=10, message="the registration's link activated")
    # Ivy: one invitation waiting, one bounced.
    waiting = await portal.post("trust2", f"/pupils/{ivy}/invitations", json={"email": f"{uid('w')}@example.org"})
    bounced = await portal.post("trust2", f"/pupils/{ivy}/invitations", json={"email": f"{uid('b')}@example.org"})
    assert waiting.status_code == bounced.status_code == 201
    failed = notify.EmailFailed(
        request_id="r",
        kind="invitation",
        reference=f"invitation:{bounced.json()['invitation_id']}",
        attempts=1,
        reason="rejected",
        smtp_code=550,
    )
    await portal.nc.jetstream().publish(notify.EMAIL_FAILED, failed.model_dump_json().encode())

    async def trust_figures() -> dict | None:
        got = (await portal.get("trust2", "/uptake")).json()
        return got if got["invitations_bounced"] == 1 else None

    trust = await eventually(trust_figures, timeout=10, message="the bounce applied")
    counts = {
        "pupils": 3,
        "pupils_with_linked_parent": 1,
        "invitations_pending": 1,
        "invitations_bounced": 1,
        "parents_linked": 2,
        "parents_active_30d": 1,
        "parents_never_signed_in": 1,
    }
    cedar = dict(counts) | {"pupils": 1, "invitations_pending": 0, "invitations_bounced": 0}
    dale_counts = dict.fromkeys(counts, 0) | {"pupils": 2, "invitations_pending": 1, "invitations_bounced": 1}
    assert trust == {
        "scope": "trust",
        **counts,
        "rows": [
            {"school_id": r.school_c, "name": "Cedar Academy", **cedar},
            {"school_id": dale, "name": "Dale School", **dale_counts},
        ],
    }
    # Linking names the linked parents a page at a time (a trust's are more than a NATS message
    # holds): a page of one parent gives the same figures.
    monkeypatch.setattr(uptake_figures, "PAGE", 1)
    assert (await portal.get("trust2", "/uptake")).json() == trust
    assert (await portal.get("trust2", "/uptake", params={"class_id": r.c1})).json()["parents_never_signed_in"] == 1
    first = await call(
        portal.nc,
        contract.UPTAKE,
        contract.UptakeRequest(scope=contract.StaffScope(trust_ids=[r.trust2]), parents_limit=1),
    )
    assert len(first.parent_ids) == 1 and first.parents_after == first.parent_ids[0]
    assert [row.parents for row in first.rows] == [[0], []]
    second = await call(
        portal.nc,
        contract.UPTAKE_PARENTS,
        contract.UptakeParentsRequest(
            scope=contract.StaffScope(trust_ids=[r.trust2]), after=first.parents_after, limit=1
        ),
    )
    assert len(second.parent_ids) == 1 and second.parent_ids[0] > first.parent_ids[0]
    assert second.parents_after is None
    assert [(row.id, row.parents) for row in second.rows] == [(r.school_c, [0])]
    # Another trust's pages are not to be had.
    with pytest.raises(RpcError) as outside:
        await call(
            portal.nc,
            contract.UPTAKE_PARENTS,
            contract.UptakeParentsRequest(scope=contract.StaffScope(trust_ids=[r.trust1]), school_id=dale, after="0"),
        )
    assert outside.value.reply.error == "not_found"
    monkeypatch.undo()
    school = (await portal.get("trust2", "/uptake", params={"school_id": dale})).json()
    assert school == {"scope": "school", **dale_counts, "rows": [{"class_id": d1, "name": "Dale 1", **dale_counts}]}
    one = (await portal.get("trust2", "/uptake", params={"class_id": r.c1})).json()
    assert one == {"scope": "class", **cedar, "rows": []}

    sheet = await portal.get("trust2", "/uptake", params={"format": "csv"})
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/csv")
    lines = sheet.text.splitlines()
    assert lines[0] == "school_id,name," + ",".join(counts)
    assert lines[1] == f"{r.school_c},Cedar Academy," + ",".join(str(v) for v in cedar.values())
    assert lines[-1] == ",Total," + ",".join(str(v) for v in counts.values())

    # Outside the scope, or asked badly: nothing.
    assert_error(await portal.get("trust1", "/uptake", params={"school_id": dale}), 404, "not_found")
    assert_error(await portal.get("teacher_a", "/uptake", params={"class_id": r.c1}), 404, "not_found")
    assert_error(await portal.get("parent", "/uptake"), 404, "not_found")
    assert_error(await portal.get("trust2", "/uptake", params={"format": "xls"}), 422, "validation_error")
    assert_error(
        await portal.get("trust2", "/uptake", params={"school_id": dale, "class_id": d1}), 422, "validation_error"
    )
    # A teacher: their school, a row per class.
    mine = (await portal.get("teacher_a", "/uptake")).json()
    assert mine["scope"] == "school" and {row["class_id"] for row in mine["rows"]} >= {r.a1, r.a2}


async def test_a_parent_whose_sessions_were_erased_has_still_signed_in(portal: Portal) -> None:
    r = portal.roster
    owls, ola = uid("owls"), uid("pupil")
    await roster(
        portal,
        (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=r.school_a, class_id=owls, name="Owls")),
        pupil(r.school_a, ola, "Ola Oak", [owls], None),
    )
    assert (await portal.post("admin_a", f"/pupils/{ola}/code")).status_code == 201
    card = cards((await portal.get("admin_a", f"/pupils/{ola}/qr-sheet")).text)["Ola Oak"]
    never = await registered_with_code(portal, card)
    once = await registered_with_code(portal, card)
    token = await login(portal.http, once)
    once_id = (await portal.http.get("/api/v1/me", headers=auth(token))).json()["id"]
    # Signed in 40 days ago; the retention has since erased every session of theirs.
    db = sqlite3.connect(portal.gateway_settings.data_dir.parent / "identity" / "identity.db")
    with db:
        db.execute("DELETE FROM sessions WHERE account_id = ?", (once_id,))
        db.execute(
            "UPDATE accounts SET last_signed_in_at = datetime(last_signed_in_at, '-40 days') WHERE id = ?", (once_id,)
        )
    db.close()

    async def both_linked() -> list | None:
        rows = (await portal.get("admin_a", f"/classes/{owls}/pupils")).json()
        parents = rows[0]["parents"]
        return parents if sum(p["status"] == "linked" for p in parents) == 2 else None

    parents = {p["email"]: p for p in await eventually(both_linked, timeout=10, message="both links activated")}
    assert parents[never]["last_signed_in_at"] is None
    signed = datetime.fromisoformat(parents[once]["last_signed_in_at"])
    assert timedelta(days=39) < datetime.now(UTC) - signed < timedelta(days=41)

    figures = (await portal.get("admin_a", "/uptake", params={"class_id": owls})).json()
    assert (figures["parents_linked"], figures["parents_never_signed_in"], figures["parents_active_30d"]) == (2, 1, 0)

    browser = await signed_in_browser(portal, "admin_a@school.example")
    try:
        page = (await browser.get(f"/classes/{owls}")).text
    finally:
        await browser.aclose()
    assert f'Last signed in <time datetime="{signed.isoformat()}">{format_day(signed, "en")}</time>' in page
    assert page.count("Never signed in") == 1


def next_page(response: httpx.Response) -> str | None:
    """The path and query of the `Link: <…>; rel="next"` header, if any."""
    link = response.headers.get("link")
    if link is None:
        return None
    target, rel = link.split(";", 1)
    assert rel.strip() == 'rel="next"', link
    return target.strip().removeprefix("<").removesuffix(">").removeprefix("/api/v1")


async def test_classes_by_school_name_and_page(portal: Portal) -> None:
    r = portal.roster
    everything = (await portal.get("trust1", "/classes")).json()
    assert len(everything) >= 5 and "link" not in (await portal.get("trust1", "/classes")).headers
    pages, path = [], "/classes?limit=2"
    while path:
        response = await portal.get("trust1", path)
        assert response.status_code == 200, response.text
        assert len(response.json()) <= 2
        pages.append(response.json())
        path = next_page(response)
    assert [c for page in pages for c in page] == everything and len(pages) == (len(everything) + 1) // 2

    robins = (await portal.get("trust1", "/classes", params={"q": "rOB"})).json()
    assert [c["class_id"] for c in robins] == [r.a1]
    assert (await portal.get("trust1", "/classes", params={"q": "%"})).json() == []
    birch = (await portal.get("trust1", "/classes", params={"school_id": r.school_b})).json()
    assert [c["class_id"] for c in birch] == [r.b1]
    assert (await portal.get("trust1", "/classes", params={"school_id": r.school_c})).json() == []
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "abc"}, {"q": "x" * 201}):
        assert_error(await portal.get("trust1", "/classes", params=params), 422, "validation_error")


async def test_a_schools_audit_between_dates_by_page_and_as_csv(portal: Portal) -> None:
    r = portal.roster
    path = f"/schools/{r.school_a}/audit"
    everything = await portal.get("admin_a", path, params={"limit": 500})
    assert everything.status_code == 200, everything.text
    rows = everything.json()
    assert len(rows) > 3 and all(row["pupil_id"] for row in rows)
    assert {"invitation_withdrawn", "link_removed", "code_regenerated"} <= {row["action"] for row in rows}
    assert [row["at"] for row in rows] == sorted(row["at"] for row in rows)
    assert (await portal.get("trust1", path, params={"limit": 500})).json() == rows
    for who in ("teacher_a", "trust2", "parent"):
        assert_error(await portal.get(who, path), 404, "not_found")

    today = rows[0]["at"][:10]
    tomorrow = (date.fromisoformat(today) + timedelta(days=1)).isoformat()
    yesterday = (date.fromisoformat(today) - timedelta(days=1)).isoformat()
    assert (await portal.get("admin_a", path, params={"from": tomorrow})).json() == []
    assert (await portal.get("admin_a", path, params={"to": yesterday})).json() == []
    assert (await portal.get("admin_a", path, params={"from": today, "to": today, "limit": 500})).json() == rows
    middle = rows[len(rows) // 2]["at"]
    later = (await portal.get("admin_a", path, params={"from": middle, "limit": 500})).json()
    assert later == [row for row in rows if row["at"] >= middle]

    paged, next_path = [], f"{path}?limit=2&from={today}"
    while next_path:
        response = await portal.get("admin_a", next_path)
        paged.extend(response.json())
        next_path = next_page(response)
    assert paged == rows

    sheet = await portal.get("admin_a", path, params={"format": "csv"})
    assert sheet.status_code == 200 and sheet.headers["content-type"].startswith("text/csv")
    lines = sheet.text.splitlines()
    assert lines[0] == "at,pupil_id,actor,action,parent_id,reason" and len(lines) == len(rows) + 1

    for params in ({"from": "yesterday"}, {"from": tomorrow, "to": yesterday}, {"format": "pdf"}):
        assert_error(await portal.get("admin_a", path, params=params), 422, "validation_error")


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def signed_in_browser(portal: Portal, email: str) -> httpx.AsyncClient:
    """A cookie-keeping client signed in through the login form, as a browser would be."""
    client = httpx.AsyncClient(base_url=str(portal.http.base_url), follow_redirects=False, timeout=10)
    page = await client.get("/login")
    token = CSRF.search(page.text).group(1)
    done = await client.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert done.status_code == 303, done.text
    return client


async def test_the_class_page_shows_expiry_cards_and_withdraws(portal: Portal) -> None:
    r = portal.roster
    cara = r.pupils[r.a1]["Cara"]
    browser = await signed_in_browser(portal, "teacher_a@school.example")
    try:
        email = f"{uid('page')}@example.org"
        await portal.post("teacher_a", f"/classes/{r.a1}/codes", json={"only_missing": True})
        invitation = await invite(portal, cara, email)
        page = await browser.get(f"/classes/{r.a1}")
        assert page.status_code == 200, page.text
        assert "Expires <time" in page.text and f"/api/v1/pupils/{r.pupils[r.a1]['Amy']}/qr-sheet" in page.text
        assert f"Withdraw the invitation to {email}" in page.text
        token = CSRF.search(page.text).group(1)
        done = await browser.post(f"/classes/{r.a1}/invitations/{invitation}/withdraw", data={"csrf_token": token})
        assert done.status_code == 303 and done.headers["location"] == f"/classes/{r.a1}"
        assert (await invitation_statuses(portal, r.a1, cara))[invitation] == "revoked"
        after = await browser.get(f"/classes/{r.a1}")
        assert f"The invitation to {email} is withdrawn" in after.text
        assert f"Withdraw the invitation to {email}" not in after.text
        # Without the form's token: refused, nothing changes.
        again = await invite(portal, cara, email)
        refused = await browser.post(f"/classes/{r.a1}/invitations/{again}/withdraw", data={})
        assert refused.status_code == 403
        assert (await invitation_statuses(portal, r.a1, cara))[again] == "invited"
        # An invitation past its date: "send again" sends a new one to the same address.
        late = await invite(portal, cara, f"late.{email}")
        db = sqlite3.connect(portal.gateway_settings.data_dir.parent / "linking" / "linking.db")
        with db:
            db.execute("UPDATE invitations SET expires_at = '2020' || substr(expires_at, 5) WHERE id = ?", (late,))
        db.close()
        page = await browser.get(f"/classes/{r.a1}")
        assert f"Send the invitation to late.{email} again" in page.text
        resent = await browser.post(
            f"/classes/{r.a1}/pupils/{cara}/invite", data={"csrf_token": token, "email": f"late.{email}"}
        )
        assert resent.status_code == 303
        statuses = await invitation_statuses(portal, r.a1, cara)
        assert statuses[late] == "revoked" and list(statuses.values())[-1] == "invited"
        # A pupil who joins is named as missing from the sheet; codes only for them, from the page.
        uma = uid("pupil")
        await roster(portal, pupil(r.school_a, uma, "Uma Upton", [r.a1], None))
        assert (
            "1 pupil has no working QR code and is not on the QR sheet" in (await browser.get(f"/classes/{r.a1}")).text
        )
        made = await browser.post(f"/classes/{r.a1}/codes", data={"csrf_token": token, "only_missing": "yes"})
        assert made.status_code == 303
        after = (await browser.get(f"/classes/{r.a1}")).text
        assert "New QR codes created for 1 pupil" in after and "not on the QR sheet" not in after
    finally:
        await browser.aclose()


async def test_trust_settings_are_the_defaults_of_schools_that_set_nothing_themselves(portal: Portal) -> None:
    r = portal.roster
    path = f"/trusts/{r.trust1}/settings"
    got = await portal.get("trust1", path)
    assert got.status_code == 200, got.text
    assert got.json()["trust_id"] == r.trust1 and got.json()["printed_code_days"] == 30
    for who in ("admin_a", "teacher_a", "trust2", "parent"):
        assert_error(await portal.get(who, path), 404, "not_found")
        assert_error(await portal.put(who, path, json={"printed_code_days": 60}), 404, "not_found")

    own = await portal.put("admin_a", f"/schools/{r.school_a}/settings", json={"invitation_days": 7})
    assert own.status_code == 200, own.text
    body = assert_error(
        await portal.put("trust1", path, json={"printed_code_days": 0, "invitation_days": 21}), 422, "validation_error"
    )
    assert [e["field"] for e in body["errors"]] == ["printed_code_days"]
    assert (await portal.get("trust1", path)).json()["invitation_days"] == 14

    changed = await portal.put("trust1", path, json={"printed_code_days": 60, "invitation_days": 21})
    assert changed.status_code == 200, changed.text
    assert (changed.json()["printed_code_days"], changed.json()["invitation_days"]) == (60, 21)
    oak = (await portal.get("admin_a", f"/schools/{r.school_a}/settings")).json()
    birch = (await portal.get("trust1", f"/schools/{r.school_b}/settings")).json()
    assert (oak["printed_code_days"], oak["invitation_days"]) == (60, 7)
    assert (birch["printed_code_days"], birch["invitation_days"]) == (60, 21)
    cedar = (await portal.get("trust2", f"/schools/{r.school_c}/settings")).json()
    assert (cedar["printed_code_days"], cedar["invitation_days"]) == (30, 14)

    # A school's own value stands when the trust changes again.
    assert (
        await portal.put("admin_a", f"/schools/{r.school_a}/settings", json={"printed_code_days": 45})
    ).status_code == 200
    assert (await portal.put("trust1", path, json={"printed_code_days": 90})).status_code == 200
    oak = (await portal.get("admin_a", f"/schools/{r.school_a}/settings")).json()
    birch = (await portal.get("trust1", f"/schools/{r.school_b}/settings")).json()
    assert (oak["printed_code_days"], birch["printed_code_days"]) == (45, 90)
    # New codes at Birch last the trust's 90 days.
    made = (await portal.post("trust1", f"/classes/{r.b1}/codes")).json()["codes"]
    days = {(datetime.fromisoformat(c["expires_at"]) - datetime.now(UTC)).days for c in made}
    assert days == {89}


async def test_the_uptake_page_draws_its_charts_and_links_the_csv(portal: Portal) -> None:
    r = portal.roster
    browser = await signed_in_browser(portal, "trust1@school.example")
    try:
        page = await browser.get("/uptake")
        assert page.status_code == 200, page.text
        assert page.text.count("<svg") == 2 and "Oak Primary" in page.text and "Birch School" in page.text
        assert f'href="/uptake?school_id={r.school_b}"' in page.text
        assert 'href="/api/v1/uptake?format=csv"' in page.text
        assert "script" not in page.text.split("<svg", 1)[1]
        school = await browser.get("/uptake", params={"school_id": r.school_b})
        assert f'href="/classes/{r.b1}"' in school.text and "Birch 1" in school.text
        assert (await browser.get("/uptake", params={"school_id": r.school_c})).status_code == 404
        sheet = await browser.get("/api/v1/uptake", params={"format": "csv"})
        assert sheet.status_code == 200 and sheet.text.startswith("school_id,name,pupils,")
    finally:
        await browser.aclose()


async def test_the_invitations_page_takes_a_pasted_or_uploaded_list(portal: Portal) -> None:
    r = portal.roster
    eve, dan = r.pupils[r.a2]["Eve"], r.pupils[r.a2]["Dan"]
    tag = uid("list")
    browser = await signed_in_browser(portal, "teacher_a@school.example")
    try:
        form = await browser.get(f"/classes/{r.a2}/invitations")
        assert form.status_code == 200 and "Paste the list" in form.text
        token = CSRF.search(form.text).group(1)
        pasted = f"email,pupil_id\neve.{tag}@example.org,{eve}\nnot-an-address,{dan}\n"
        sent = await browser.post(
            f"/classes/{r.a2}/invitations", data={"csrf_token": token, "list": pasted}, files={"file": ("", b"")}
        )
        assert sent.status_code == 200, sent.text
        assert "1 invitation sent." in sent.text and "not an email address" in sent.text
        assert f"eve.{tag}@example.org" in (await invitation_emails(portal, r.a2, eve))

        upload = f"{dan},dan.{tag}@example.org\n{dan},dan.{tag}@example.org\n".encode()
        sent = await browser.post(
            f"/classes/{r.a2}/invitations",
            data={"csrf_token": token, "list": ""},
            files={"file": ("list.csv", upload, "text/csv")},
        )
        assert "1 invitation sent." in sent.text and "the same pupil and address again" in sent.text

        too_many = "\n".join(f"{dan},n{i}.{tag}@example.org" for i in range(1001))
        refused = await browser.post(
            f"/classes/{r.a2}/invitations", data={"csrf_token": token, "list": too_many}, files={"file": ("", b"")}
        )
        assert refused.status_code == 400 and "1,001 rows: at most 1,000" in refused.text
        no_token = await browser.post(f"/classes/{r.a2}/invitations", data={"list": pasted}, files={"file": ("", b"")})
        assert no_token.status_code == 403
    finally:
        await browser.aclose()


async def invitation_emails(portal: Portal, class_id: str, pupil_id: str) -> list[str]:
    rows = (await portal.get("teacher_a", f"/classes/{class_id}/pupils")).json()
    return [i["email"] for i in next(r for r in rows if r["pupil_id"] == pupil_id)["invitations"]]


async def test_a_trust_admin_searches_the_classes_of_the_trust(portal: Portal) -> None:
    r = portal.roster
    browser = await signed_in_browser(portal, "trust1@school.example")
    try:
        home = await browser.get("/")
        assert home.status_code == 200 and 'role="search"' in home.text
        assert "Year 3 Robins" in home.text and "Birch 1" in home.text
        found = await browser.get("/", params={"q": "rob"})
        assert "Year 3 Robins" in found.text and "Birch 1" not in found.text
        birch = await browser.get("/", params={"school_id": r.school_b})
        assert "Birch 1" in birch.text and "Year 3 Robins" not in birch.text
        assert "No classes match." in (await browser.get("/", params={"q": "no such class"})).text
    finally:
        await browser.aclose()


async def test_the_school_audit_page_filters_by_date_and_links_the_csv(portal: Portal) -> None:
    r = portal.roster
    browser = await signed_in_browser(portal, "admin_a@school.example")
    try:
        home = await browser.get("/")
        assert f'href="/schools/{r.school_a}/audit"' in home.text
        page = await browser.get(f"/schools/{r.school_a}/audit")
        assert page.status_code == 200, page.text
        assert "Invitation withdrawn" in page.text and f"/api/v1/schools/{r.school_a}/audit?format=csv" in page.text
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        empty = await browser.get(f"/schools/{r.school_a}/audit", params={"from": tomorrow})
        assert "Nothing was recorded in these dates." in empty.text
        assert (await browser.get(f"/schools/{r.school_a}/audit", params={"from": "soon"})).status_code == 422
        assert (await browser.get(f"/schools/{r.school_c}/audit")).status_code == 404
    finally:
        await browser.aclose()


async def test_the_trust_settings_page_saves_the_trusts_defaults(portal: Portal) -> None:
    r = portal.roster
    browser = await signed_in_browser(portal, "trust1@school.example")
    try:
        home = await browser.get("/")
        assert f'href="/trusts/{r.trust1}/settings"' in home.text
        page = await browser.get(f"/trusts/{r.trust1}/settings")
        assert page.status_code == 200 and "Trust settings" in page.text
        token = CSRF.search(page.text).group(1)
        current = (await portal.get("trust1", f"/trusts/{r.trust1}/settings")).json()
        form = {
            "csrf_token": token,
            **{k: str(current[k]) for k in ("max_carers_per_code", "printed_code_days", "aup_text")},
            **{k: current[k] for k in ("homework_url", "files_url", "messages_url")},
            "invitation_days": "30",
            "email_parent_on_removal": "yes",
        }
        saved = await browser.post(f"/trusts/{r.trust1}/settings", data=form)
        assert saved.status_code == 303, saved.text
        assert (await portal.get("trust1", f"/trusts/{r.trust1}/settings")).json()["invitation_days"] == 30
        bad = await browser.post(f"/trusts/{r.trust1}/settings", data={**form, "invitation_days": "900"})
        assert bad.status_code == 422 and "Days an invitation email works must be between 1 and 90" in bad.text
        assert (await browser.get(f"/trusts/{r.trust2}/settings")).status_code == 404
    finally:
        await browser.aclose()


async def test_a_class_of_30_with_a_parent_each_fits_a_laptop_window(portal: Portal) -> None:
    """1366x768 leaves about 650px of page in a browser: every row of the table fits in it."""
    from playwright.async_api import async_playwright

    r = portal.roster
    cls = uid("wide")
    names = [
        f"{first} {last}"
        for first, last in zip(
            [
                "Amelia",
                "Benjamin",
                "Charlotte",
                "Dominic",
                "Eleanor",
                "Frederick",
                "Georgina",
                "Harrison",
                "Isabella",
                "Jonathan",
            ]
            * 3,
            [
                "Richardson",
                "Whitfield",
                "Montgomery",
                "Fairweather",
                "Blackwood",
                "Ashworth",
                "Hargreaves",
                "Pemberton",
                "Thornton",
            ]
            * 4,
            strict=False,
        )
    ]
    pupils = [(uid("pupil"), name) for name in names]
    await roster(
        portal,
        (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=r.school_a, class_id=cls, name="Year 4 Wide")),
        *(pupil(r.school_a, pid, name, [cls], None) for pid, name in pupils),
    )
    assert (await portal.post("admin_a", f"/classes/{cls}/codes")).status_code == 201
    # A parent each, written as linking and identity keep them (30 registrations would only be slower).
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    parents = [(uid("par"), pid, name.split()[1]) for pid, name in pupils]
    data = portal.gateway_settings.data_dir.parent
    with sqlite3.connect(data / "identity" / "identity.db") as db:
        db.executemany(
            "INSERT INTO accounts (id, role, email, email_key, name, created_at, updated_at, last_signed_in_at)"
            " VALUES (?, 'parent', ?, ?, ?, ?, ?, ?)",
            [
                (p, f"{last.lower()}.family.{p[-6:]}@example.org", f"{last.lower()}.family.{p[-6:]}@example.org")
                + (f"Alexandra {last}", now, now, now)
                for p, _, last in parents
            ],
        )
    with sqlite3.connect(data / "linking" / "linking.db") as db:
        db.executemany(
            "INSERT INTO links (id, parent_id, pupil_id, school_id, relationship, status, via, code_id, live_key,"
            " created_at, activated_at) VALUES (?, ?, ?, ?, 'mother', 'linked', 'printed', 'x', ?, ?, ?)",
            [(uid("l")[-32:], p, pid, r.school_a, f"{p}:{pid}", now, now) for p, pid, _ in parents],
        )

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            base = str(portal.http.base_url)
            context = await chromium.new_context(base_url=base, viewport={"width": 1366, "height": 650})
            # Signed in through the form by httpx: the gateway takes forms from its public origin only.
            signed_in = await signed_in_browser(portal, "admin_a@school.example")
            await context.add_cookies(
                [{"name": c.name, "value": c.value or "", "url": base} for c in signed_in.cookies.jar]
            )
            await signed_in.aclose()
            page = await context.new_page()
            await page.goto(f"/classes/{cls}")
            rows = page.locator("table.class-table tbody tr")
            assert await rows.count() == 30
            # Each pupil's row is one line, and all thirty with the table's header fit the window.
            top = await page.locator("table.class-table").evaluate("t => t.getBoundingClientRect().top")
            last = await rows.nth(29).evaluate("r => r.getBoundingClientRect().bottom")
            heights = await rows.evaluate_all("rs => rs.map(r => r.getBoundingClientRect().height)")
            await page.locator("table.class-table").evaluate("t => t.scrollIntoView()")
            await page.screenshot(path="/tmp/trust-rest-class-page.png")
            print(f"class table: rows {min(heights):.1f}-{max(heights):.1f}px, 30 rows and header {last - top:.0f}px")
            assert last - top <= 650
            # Still named in full for a screen reader.
            await page.get_by_role("link", name=f"Remove Alexandra {parents[0][2]}'s access to Amelia").wait_for()
            await page.get_by_role("heading", name=names[29]).wait_for()
            assert await page.get_by_text("Last signed in").count() == 30
        finally:
            await chromium.close()
