"""The staff and link-code routes of docs/http-api.md through the gateway: classes, pupils, codes,
class sheets and QR codes, school settings and the policy, each in its staff member's scope. A
real NATS, the real identity and linking services and a real gateway under uvicorn (the `portal`
fixture of conftest.py), asked with httpx. QR codes are read back with zbarimg (the PDF
rendered with pdftoppm first)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from gateway_portal import PUBLIC_URL, Portal, assert_error, auth, cards, login
from helpers import eventually

from contracts import identity
from contracts import linking as contract
from gateway import flows
from gateway.clients import IdentityClient
from gateway.clients.nats import NatsTransport

CODE = re.compile(r"[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}")


def zbar(paths: list[Path]) -> list[str]:
    out = subprocess.run(["zbarimg", "--raw", "-q", *map(str, paths)], capture_output=True, text=True, timeout=60)
    return [line for line in out.stdout.splitlines() if line]


# -- scope -----------------------------------------------------------------------------------


async def test_staff_see_their_school_and_a_trust_admin_the_trust(portal: Portal) -> None:
    r = portal.roster
    response = await portal.get("teacher_a", "/classes")
    assert response.status_code == 200, response.text
    assert response.json() == [
        {
            "class_id": r.a1,
            "name": "Year 3 Robins",
            "school_id": r.school_a,
            "school_name": "Oak Primary",
            "pupil_count": 3,
            "linked_pupil_count": 0,
        },
        {
            "class_id": r.a2,
            "name": "Year 4 Owls",
            "school_id": r.school_a,
            "school_name": "Oak Primary",
            "pupil_count": 2,
            "linked_pupil_count": 0,
        },
    ]
    assert response.headers["cache-control"] == "no-store"

    pupils = (await portal.get("teacher_a", f"/classes/{r.a1}/pupils")).json()
    assert [(p["first_name"], p["last_name"]) for p in pupils] == [
        ("Amy", "Adams"),
        ("Ben", "Brown"),
        ("Cara", "Clark"),
    ]
    assert pupils[0]["pupil_id"] == r.pupils[r.a1]["Amy"]
    assert all(p["parents"] == [] and p["invitations"] == [] and "code_expires_at" in p for p in pupils)

    b_pupil = r.pupils[r.b1]["Fay"]
    for path in (
        f"/classes/{r.b1}/pupils",
        f"/pupils/{b_pupil}/qr.png",
        f"/pupils/{b_pupil}/qr.svg",
        f"/classes/{r.b1}/qr-sheet",
        f"/schools/{r.school_b}/settings",
        "/classes/no-such-class/pupils",
        f"/classes/{'x' * 300}/pupils",
    ):
        assert_error(await portal.get("teacher_a", path), 404, "not_found")
    assert_error(await portal.post("teacher_a", f"/classes/{r.b1}/codes"), 404, "not_found")
    assert_error(await portal.post("teacher_a", f"/pupils/{b_pupil}/code"), 404, "not_found")

    trust1 = (await portal.get("trust1", "/classes")).json()
    assert [(c["school_name"], c["class_id"]) for c in trust1] == [
        ("Birch School", r.b1),
        ("Oak Primary", r.a1),
        ("Oak Primary", r.a2),
    ]
    assert len((await portal.get("trust1", f"/classes/{r.b1}/pupils")).json()) == 2
    assert_error(await portal.get("trust1", f"/classes/{r.c1}/pupils"), 404, "not_found")
    assert_error(await portal.get("trust1", f"/pupils/{r.pupils[r.c1]['Hal']}/qr.png"), 404, "not_found")
    assert_error(await portal.get("trust1", f"/schools/{r.school_c}/settings"), 404, "not_found")
    assert [c["class_id"] for c in (await portal.get("trust2", "/classes")).json()] == [r.c1]


async def test_parents_get_404_and_anonymous_callers_401(portal: Portal) -> None:
    r = portal.roster
    pupil = r.pupils[r.a1]["Amy"]
    gets = [
        "/classes",
        f"/classes/{r.a1}/pupils",
        f"/classes/{r.a1}/qr-sheet",
        f"/pupils/{pupil}/qr.png",
        f"/schools/{r.school_a}/settings",
    ]
    for path in gets:
        assert_error(await portal.get("parent", path), 404, "not_found")
        assert_error(await portal.get(None, path), 401, "unauthorized")
    for path in (f"/classes/{r.a1}/codes", f"/pupils/{pupil}/code"):
        assert_error(await portal.post("parent", path), 404, "not_found")
        assert_error(await portal.post(None, path), 401, "unauthorized")
    assert_error(
        await portal.put("parent", f"/schools/{r.school_a}/settings", json={"invitation_days": 3}), 404, "not_found"
    )
    assert_error(await portal.http.get("/api/v1/classes", headers=auth("not-a-session")), 401, "unauthorized")


# -- codes, sheets, QR codes -----------------------------------------------------------------


async def test_codes_make_a_sheet_a_pdf_and_qr_codes_that_decode(portal: Portal, tmp_path: Path) -> None:
    r = portal.roster
    amy = r.pupils[r.a1]["Amy"]
    assert_error(await portal.get("teacher_a", f"/classes/{r.a1}/qr-sheet"), 404, "no_code")
    assert_error(await portal.get("teacher_a", f"/pupils/{amy}/qr.png"), 404, "no_code")

    created = await portal.post("teacher_a", f"/classes/{r.a1}/codes")
    assert created.status_code == 201, created.text
    assert created.json()["class_id"] == r.a1
    assert {c["pupil_id"] for c in created.json()["codes"]} == set(r.pupils[r.a1].values())
    pupils = (await portal.get("teacher_a", f"/classes/{r.a1}/pupils")).json()
    assert all(datetime.fromisoformat(p["code_expires_at"]) > datetime.now(UTC) for p in pupils)

    sheet = await portal.get("teacher_a", f"/classes/{r.a1}/qr-sheet")
    assert sheet.status_code == 200, sheet.text
    assert sheet.headers["content-type"].startswith("text/html")
    assert sheet.headers["cache-control"] == "no-store"
    # The print CSS is allowed by its hash, and nothing else inline.
    csp = sheet.headers["content-security-policy"]
    (style,) = re.findall(r"<style>(.*?)</style>", sheet.text, re.S)
    assert f"style-src 'sha256-{base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()}'" in csp
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp
    printed = cards(sheet.text)
    assert set(printed) == {"Amy Adams", "Ben Brown", "Cara Clark"}
    assert sheet.text.count('<section class="card"') == 3
    assert all(CODE.fullmatch(code) for code in printed.values())
    urls = {name: f"{PUBLIC_URL}/link/{code}" for name, code in printed.items()}

    pdf = await portal.get("teacher_a", f"/classes/{r.a1}/qr-sheet", params={"format": "pdf"})
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert re.fullmatch(r'attachment; filename="[A-Za-z0-9._-]+\.pdf"', pdf.headers["content-disposition"])
    assert pdf.headers["cache-control"] == "no-store"
    (tmp_path / "sheet.pdf").write_bytes(pdf.content)
    subprocess.run(
        ["pdftoppm", "-r", "150", "-png", str(tmp_path / "sheet.pdf"), str(tmp_path / "page")], check=True, timeout=60
    )
    assert sorted(zbar(sorted(tmp_path.glob("page*.png")))) == sorted(urls.values())

    png = await portal.get("teacher_a", f"/pupils/{amy}/qr.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.headers["cache-control"] == "no-store"
    (tmp_path / "amy.png").write_bytes(png.content)
    assert zbar([tmp_path / "amy.png"]) == [urls["Amy Adams"]]
    svg = await portal.get("teacher_a", f"/pupils/{amy}/qr.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<?xml") and "<svg" in svg.text

    assert_error(
        await portal.get("teacher_a", f"/classes/{r.a1}/qr-sheet", params={"format": "doc"}), 422, "validation_error"
    )


async def test_a_new_pupil_code_kills_the_old_one(portal: Portal) -> None:
    r = portal.roster
    dan = r.pupils[r.a2]["Dan"]
    assert (await portal.post("admin_a", f"/classes/{r.a2}/codes")).status_code == 201
    old = cards((await portal.get("admin_a", f"/classes/{r.a2}/qr-sheet")).text)

    preview = await portal.get(None, f"/link-codes/{old['Dan Dale']}")
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["first_name"], body["school_name"], body["class_name"]) == ("Dan", "Oak Primary", "Year 4 Owls")
    assert body["aup"]["version"] and body["aup"]["text"]
    assert "last_name" not in body

    regenerated = await portal.post("admin_a", f"/pupils/{dan}/code")
    assert regenerated.status_code == 201, regenerated.text
    assert regenerated.json()["pupil_id"] == dan
    new = cards((await portal.get("admin_a", f"/classes/{r.a2}/qr-sheet")).text)
    assert new["Dan Dale"] != old["Dan Dale"] and new["Eve Evans"] == old["Eve Evans"]

    assert_error(await portal.get(None, f"/link-codes/{old['Dan Dale']}"), 404, "invalid_code")
    typed = new["Dan Dale"].replace("-", " ").lower()
    for who in (None, "parent"):
        fresh = await portal.get(who, f"/link-codes/{typed}")
        assert fresh.status_code == 200, fresh.text
        assert {k: fresh.json()[k] for k in ("first_name", "school_name", "class_name")} == {
            "first_name": "Dan",
            "school_name": "Oak Primary",
            "class_name": "Year 4 Owls",
        }
    for bad in ("NOPE", "2345-6789-ABCD", "x" * 400):
        assert_error(await portal.get(None, f"/link-codes/{bad}"), 404, "invalid_code")


# -- settings and the policy -------------------------------------------------------------------


async def test_school_settings_for_school_and_trust_admins_only(portal: Portal) -> None:
    r = portal.roster
    path = f"/schools/{r.school_a}/settings"
    before = (await portal.get("admin_a", path)).json()
    assert (before["max_carers_per_code"], before["printed_code_days"], before["invitation_days"]) == (4, 30, 14)
    assert set(before) >= {
        "max_carers_per_code",
        "printed_code_days",
        "invitation_days",
        "aup_text",
        "homework_url",
        "files_url",
        "messages_url",
        "email_parent_on_removal",
    }

    assert_error(await portal.get("teacher_a", path), 404, "not_found")
    assert_error(await portal.put("teacher_a", path, json={"invitation_days": 3}), 404, "not_found")
    assert_error(
        await portal.put("admin_a", f"/schools/{r.school_b}/settings", json={"invitation_days": 3}), 404, "not_found"
    )

    change = {
        "max_carers_per_code": 6,
        "invitation_days": 7,
        "homework_url": "https://lp.example/hw/{pupil_id}",
        "email_parent_on_removal": False,
    }
    put = await portal.put("admin_a", path, json=change)
    assert put.status_code == 200, put.text
    assert {k: put.json()[k] for k in change} == change
    assert {k: (await portal.get("admin_a", path)).json()[k] for k in change} == change

    bad = await portal.put("admin_a", path, json={"max_carers_per_code": 0, "homework_url": "ftp://x", "colour": "red"})
    body = assert_error(bad, 422, "validation_error")
    assert {e["field"] for e in body["errors"]} == {"max_carers_per_code", "homework_url", "colour"}
    assert "max_carers_per_code" in body["detail"] and "homework_url" in body["detail"]
    assert_error(await portal.put("admin_a", path, json=[1, 2]), 422, "validation_error")
    assert_error(
        await portal.http.put(
            f"/api/v1{path}",
            content=b"{",
            headers={**auth(portal.tokens["admin_a"]), "content-type": "application/json"},
        ),
        400,
        "bad_request",
    )
    assert {k: (await portal.get("admin_a", path)).json()[k] for k in change} == change, "nothing changed"

    # A trust admin manages every school of the trust, and no other trust's.
    trust_put = await portal.put("trust1", f"/schools/{r.school_b}/settings", json={"printed_code_days": 60})
    assert trust_put.status_code == 200 and trust_put.json()["printed_code_days"] == 60
    assert_error(await portal.get("trust2", path), 404, "not_found")


async def test_default_aup_needs_no_login(portal: Portal) -> None:
    response = await portal.get(None, "/aup")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["version"], str) and body["version"]
    assert "acceptable use" in body["text"]


# -- parents' names, from identity -------------------------------------------------------------


async def test_parents_names_are_composed_from_identity_in_one_request(portal: Portal) -> None:
    # No parent is linked in this module: the composition the route uses is fed a reply here.
    since = datetime.now(UTC)
    reply = contract.ClassPupilsReply(
        class_id="c",
        name="Class",
        school_id="s",
        school_name="School",
        pupils=[
            contract.PupilView(
                pupil_id=f"p{i}",
                first_name="A",
                last_name="B",
                code_expires_at=None,
                parents=[
                    contract.ParentLinkView(
                        parent_id=portal.parent_id, relationship="mother", status="linked", since=since
                    ),
                    contract.ParentLinkView(
                        parent_id="gone", relationship="father", status="awaiting_verification", since=since
                    ),
                ],
            )
            for i in range(2)
        ],
    )
    asked: list[dict] = []

    async def on_contacts(msg) -> None:
        asked.append(json.loads(msg.data))

    sub = await portal.nc.subscribe(identity.CONTACTS.subject, cb=on_contacts)
    await portal.nc.flush()
    identity_client = IdentityClient(NatsTransport(portal.gateway_settings, portal.nc))
    rows = await flows.pupil_rows(identity_client, reply)
    await eventually(lambda: asked, timeout=5, message="contacts request seen")
    await sub.unsubscribe()
    assert len(asked) == 1 and sorted(asked[0]["ids"]) == sorted([portal.parent_id, "gone"])
    for row in rows:
        mother, unknown = row.parents
        assert (mother.name, mother.email.endswith("@example.org"), mother.status) == ("Mary Parent", True, "linked")
        assert (unknown.parent_id, unknown.name, unknown.email) == ("gone", None, None)
    assert await identity_client.contacts([]) == {}


async def test_the_routes_are_documented(portal: Portal) -> None:
    doc = (await portal.http.get("/schema/openapi.json")).json()
    staff = [
        "/classes",
        "/classes/{class_id}/pupils",
        "/classes/{class_id}/codes",
        "/pupils/{pupil_id}/code",
        "/classes/{class_id}/qr-sheet",
        "/pupils/{pupil_id}/qr.svg",
        "/pupils/{pupil_id}/qr.png",
        "/schools/{school_id}/settings",
    ]
    for path in staff:
        for method, operation in doc["paths"][f"/api/v1{path}"].items():
            assert operation["security"] and "404" in operation["responses"], (method, path)
    assert "404" in doc["paths"]["/api/v1/link-codes/{code}"]["get"]["responses"]
    assert "/api/v1/aup" in doc["paths"]


async def test_many_first_requests_at_once_each_get_their_own_account(portal: Portal) -> None:
    # Sessions this gateway has never seen, arriving together (a school morning): identity is
    # asked about many tokens per request, and each caller must still be answered as themselves.
    staff = ["teacher_a", "admin_a", "trust1", "trust2"]
    tokens = {
        token: f"{who}@school.example"
        for who in staff
        for token in await asyncio.gather(*(login(portal.http, f"{who}@school.example") for _ in range(6)))
    }
    ended = await login(portal.http, "admin_a@school.example")
    assert (await portal.http.post("/api/v1/auth/logout", headers=auth(ended))).status_code == 204
    asked: list[int] = []

    async def count(msg) -> None:
        asked.append(len(json.loads(msg.data)["tokens"]))

    sub = await portal.nc.subscribe(identity.SESSIONS.subject, cb=count)
    await portal.nc.flush()
    callers = [*tokens, ended, "not-a-session-token", *tokens]
    answers = await asyncio.gather(*(portal.http.get("/api/v1/me", headers=auth(t)) for t in callers))
    await sub.unsubscribe()
    for token, answer in zip(callers, answers, strict=True):
        if token in tokens:
            assert answer.status_code == 200 and answer.json()["email"] == tokens[token], "each caller as themselves"
        else:
            assert_error(answer, 401, "unauthorized")
    assert sum(asked) >= len(tokens), "every new token was asked about, in requests for many"
