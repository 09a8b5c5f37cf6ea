"""The linking service over a real NATS on SQLite and PostgreSQL, as staff use it: the copy of
the roster (whatever the order or repetition of its events), staff views and their scope,
printed codes and their regeneration, QR codes and class sheets (read back with zbarimg), and
school settings.

One linking replica and one nats-server per database for the whole module (the `env` fixture
of conftest.py); every test works in a school of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers import eventually
from linking_env import PUBLIC_URL, Env, codes_in, create_codes, make_school, sheet, uid
from PIL import Image

from contracts import linking as contract
from contracts import platform
from contracts.base import Event
from linking import codes


def at(seconds: float) -> datetime:
    return datetime(2020, 9, 1, 8, 0, tzinfo=UTC) + timedelta(seconds=seconds)


def zbar(paths: list[Path]) -> list[str]:
    out = subprocess.run(["zbarimg", "--raw", "-q", *map(str, paths)], capture_output=True, text=True, timeout=60)
    return [line for line in out.stdout.splitlines() if line]


def svg_to_png(svg: str, path: Path) -> Path:
    """Draw a segno inline SVG (a path of 1-unit horizontal strokes) as a PNG, module by module."""
    size = int(re.search(r'viewBox="0 0 (\d+) (\d+)"', svg).group(1))
    d = re.search(r' d="([^"]+)"', svg).group(1)
    img = Image.new("1", (size, size), 1)
    x = y = 0.0
    for cmd, a, b in re.findall(r"([MmHh])\s*(-?[\d.]+)(?:[ ,](-?[\d.]+))?", d):
        if cmd == "M":
            x, y = float(a), float(b)
        elif cmd == "m":
            x, y = x + float(a), y + float(b)
        else:
            end = float(a) if cmd == "H" else x + float(a)
            for mx in range(int(min(x, end)), int(max(x, end))):
                img.putpixel((mx, int(y)), 0)
            x = end
    img.resize((size * 8, size * 8), Image.NEAREST).save(path)
    return path


# -- roster ------------------------------------------------------------------------------------


async def test_roster_is_applied_and_shown_to_staff(env: Env) -> None:
    school, class_id, pupils = await make_school(env, pupils=3)
    classes = await env.ask(contract.CLASSES, contract.ClassesRequest(scope=school.scope), contract.ClassesReply)
    assert [c.model_dump() for c in classes.classes] == [
        {
            "class_id": class_id,
            "name": "Year 3 Robins",
            "school_id": school.school_id,
            "school_name": "Oak Primary",
            "pupil_count": 3,
            "linked_pupil_count": 0,
        }
    ]
    listed = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    assert [p.pupil_id for p in listed.pupils] == pupils
    assert all(p.code_expires_at is None and p.parents == [] and p.invitations == [] for p in listed.pupils)
    assert (listed.name, listed.school_name) == ("Year 3 Robins", "Oak Primary")
    # A trust admin's scope names the trust; linking expands it.
    by_trust = contract.StaffScope(trust_ids=[school.trust_id])
    schools = await env.ask(contract.SCHOOLS, contract.SchoolsRequest(scope=by_trust), contract.SchoolsReply)
    assert [s.school_id for s in schools.schools] == [school.school_id]
    trust_classes = await env.ask(contract.CLASSES, contract.ClassesRequest(scope=by_trust), contract.ClassesReply)
    assert [c.class_id for c in trust_classes.classes] == [class_id]


async def test_reapplied_and_replayed_events_change_nothing(env: Env) -> None:
    school, class_id, pupils = await make_school(env, pupils=2)
    before = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    first = platform.PupilUpserted(
        school_id=school.school_id,
        pupil_id=pupils[0],
        first_name="Renamed",
        last_name="Later",
        class_ids=[class_id],
        occurred_at=at(0),
    )
    # The same event under another message id gets past the stream's duplicate window, as a
    # retrying publisher's would; the consumer still applies it once.
    await env.publish(platform.PUPIL_UPSERTED, first, msg_id=uuid.uuid4().hex)
    await env.publish(platform.PUPIL_UPSERTED, first, msg_id=uuid.uuid4().hex)
    await env.applied([first])
    # An old event (from before the roster was made) replayed: older than what is there.
    listed = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    assert listed == before, "an older upsert, however often it comes, changes nothing"
    # A re-import: the same facts as new events changes nothing either.
    again = [
        platform.PupilUpserted(
            school_id=school.school_id,
            pupil_id=p.pupil_id,
            first_name=p.first_name,
            last_name=p.last_name,
            class_ids=[class_id],
        )
        for p in before.pupils
    ]
    for ev in again:
        await env.publish(platform.PUPIL_UPSERTED, ev)
    await env.applied(again)
    after = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    assert after == before
    status = await env.ask(
        contract.ROSTER_STATUS,
        contract.RosterStatusRequest(event_ids=[first.event_id, "never-sent"]),
        contract.RosterStatusReply,
    )
    assert (status.applied, status.missing) == (1, ["never-sent"])


async def test_out_of_order_roster_events(env: Env) -> None:
    trust_id, school_id, class_a, class_b = uid("trust"), uid("school"), uid("class"), uid("class")
    pupil, leaver, returner = uid("pupil"), uid("pupil"), uid("pupil")
    scope = contract.StaffScope(school_ids=[school_id])
    events: list[tuple[str, Event]] = [
        # The pupil before its classes and school; a class before its school.
        (
            platform.PUPIL_UPSERTED,
            platform.PupilUpserted(
                school_id=school_id,
                pupil_id=pupil,
                first_name="New",
                last_name="Name",
                class_ids=[class_b],
                occurred_at=at(20),
            ),
        ),
        (
            platform.CLASS_UPSERTED,
            platform.ClassUpserted(school_id=school_id, class_id=class_a, name="Hawks", occurred_at=at(5)),
        ),
        # The newer upsert first, the older one late: the newer stands.
        (
            platform.PUPIL_UPSERTED,
            platform.PupilUpserted(
                school_id=school_id,
                pupil_id=pupil,
                first_name="Old",
                last_name="Name",
                class_ids=[class_a],
                occurred_at=at(10),
            ),
        ),
        (
            platform.CLASS_UPSERTED,
            platform.ClassUpserted(school_id=school_id, class_id=class_b, name="Owls", occurred_at=at(5)),
        ),
        (
            platform.SCHOOL_UPSERTED,
            platform.SchoolUpserted(
                trust_id=trust_id, school_id=school_id, name="Elm Academy", timezone="Europe/London", occurred_at=at(30)
            ),
        ),
        (
            platform.SCHOOL_UPSERTED,
            platform.SchoolUpserted(
                trust_id=trust_id,
                school_id=school_id,
                name="Elm School (old name)",
                timezone="Europe/London",
                occurred_at=at(1),
            ),
        ),
        # Left before we heard of the pupil, then its (older) upsert: still gone.
        (platform.PUPIL_LEFT, platform.PupilLeft(pupil_id=leaver, occurred_at=at(50))),
        (
            platform.PUPIL_UPSERTED,
            platform.PupilUpserted(
                school_id=school_id,
                pupil_id=leaver,
                first_name="Gone",
                last_name="Away",
                class_ids=[class_b],
                occurred_at=at(40),
            ),
        ),
        # Left, then upserted after leaving (re-enrolled): back; the late old `left` changes nothing.
        (
            platform.PUPIL_UPSERTED,
            platform.PupilUpserted(
                school_id=school_id,
                pupil_id=returner,
                first_name="Back",
                last_name="Again",
                class_ids=[class_b],
                occurred_at=at(70),
            ),
        ),
        (platform.PUPIL_LEFT, platform.PupilLeft(pupil_id=returner, occurred_at=at(60))),
        # A member of staff: identity's business, acknowledged unread.
        (
            platform.STAFF_UPSERTED,
            platform.StaffUpserted(
                school_id=school_id, staff_id=uid("staff"), email="t@example.org", name="T", role="teacher"
            ),
        ),
    ]
    for subject, ev in events:
        await env.publish(subject, ev)
    await env.applied([ev for s, ev in events if s != platform.STAFF_UPSERTED])
    classes = await env.ask(contract.CLASSES, contract.ClassesRequest(scope=scope), contract.ClassesReply)
    assert [(c.name, c.school_name, c.pupil_count) for c in classes.classes] == [
        ("Hawks", "Elm Academy", 0),
        ("Owls", "Elm Academy", 2),
    ]
    owls = await env.ask(
        contract.CLASS_PUPILS, contract.ClassPupilsRequest(scope=scope, class_id=class_b), contract.ClassPupilsReply
    )
    assert [(p.first_name, p.last_name) for p in owls.pupils] == [("Back", "Again"), ("New", "Name")]


async def test_a_pupil_who_leaves_loses_their_code_and_their_place(env: Env) -> None:
    school, class_id, pupils = await make_school(env, pupils=2)
    await create_codes(env, school, class_id=class_id)
    code = codes_in((await sheet(env, school, class_id)).text)[0]
    left = platform.PupilLeft(pupil_id=pupils[0])
    await env.publish(platform.PUPIL_LEFT, left)
    await env.applied([left])
    err = await env.fails(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=code))
    assert err.code == "invalid_code"
    listed = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    assert [p.pupil_id for p in listed.pupils] == pupils[1:]
    assert (
        await env.fails(contract.PUPIL_QR, contract.PupilQrRequest(scope=school.scope, pupil_id=pupils[0]))
    ).code == "not_found"


# -- codes ---------------------------------------------------------------------------------------


async def test_codes_preview_and_regeneration_kills_the_old_code(env: Env) -> None:
    school, class_id, pupils = await make_school(env, pupils=3)
    assert (
        await env.fails(contract.CLASS_SHEET, contract.ClassSheetRequest(scope=school.scope, class_id=class_id))
    ).code == "no_code"
    made = await create_codes(env, school, class_id=class_id)
    assert sorted(c.pupil_id for c in made.codes) == sorted(pupils)
    expires = made.codes[0].expires_at
    assert timedelta(days=29, hours=23) < expires - datetime.now(UTC) <= timedelta(days=30)
    listed = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    assert all(p.code_expires_at == expires for p in listed.pupils)

    page = (await sheet(env, school, class_id)).text
    printed = codes_in(page)
    assert len(printed) == 3 and len(set(printed)) == 3
    assert all(set(c.replace("-", "")) <= set(codes.ALPHABET) for c in printed)
    # Amy00's card comes first (sorted by name); typed sloppily, it still works.
    typed = "  " + printed[0].lower().replace("-", " ") + " "
    preview = await env.ask(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=typed), contract.CodePreview)
    assert (preview.first_name, preview.school_name, preview.class_name, preview.kind) == (
        "Amy00",
        "Oak Primary",
        "Year 3 Robins",
        "printed",
    )
    assert preview.aup.version and "acceptable use" in preview.aup.text

    # Printing again prints the same codes.
    assert codes_in((await sheet(env, school, class_id)).text) == printed

    # One pupil's new code: that pupil's old one is dead at once, the others live on.
    again = await create_codes(env, school, pupil_id=pupils[0])
    assert [c.pupil_id for c in again.codes] == [pupils[0]]
    assert (await env.fails(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=printed[0]))).code == "invalid_code"
    await env.ask(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=printed[1]), contract.CodePreview)
    reprinted = codes_in((await sheet(env, school, class_id)).text)
    assert reprinted[0] != printed[0] and reprinted[1:] == printed[1:]
    ok = await env.ask(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=reprinted[0]), contract.CodePreview)
    assert ok.first_name == "Amy00"

    # The whole class again: every earlier code is dead.
    await create_codes(env, school, class_id=class_id)
    for old in reprinted:
        assert (await env.fails(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=old))).code == "invalid_code"

    def regenerated() -> list[dict]:
        return [e for e in env.events(contract.CODES_REGENERATED) if e["school_id"] == school.school_id]

    await eventually(lambda: len(regenerated()) == 3, timeout=10)
    first, single, whole = regenerated()
    assert (first["class_id"], sorted(first["pupil_ids"]), first["revoked_code_ids"]) == (class_id, sorted(pupils), [])
    assert single["pupil_ids"] == [pupils[0]] and len(single["revoked_code_ids"]) == 1
    assert len(whole["revoked_code_ids"]) == 3 and whole["actor_id"] == "staff-1"
    assert not any(c.replace("-", "") in json.dumps(e) or c in json.dumps(e) for e in regenerated() for c in printed), (
        "ids only"
    )


async def test_bad_codes_are_invalid(env: Env) -> None:
    for typed in ["", "ABCD-EFGH-JKLM", "not a code", "0000-0000-0000", "A" * 200]:
        err = await env.fails(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=typed))
        assert err.code == "invalid_code", typed


# -- QR codes ------------------------------------------------------------------------------------


async def test_every_qr_code_decodes_in_png_svg_html_and_pdf(env: Env, tmp_path: Path) -> None:
    school, class_id, pupils = await make_school(env, pupils=30, name="Zoë's Ørsted & Łódź School <Trust>")
    await create_codes(env, school, class_id=class_id)
    html = (await sheet(env, school, class_id)).text
    expected = {f"{PUBLIC_URL}/link/{c}" for c in codes_in(html)}
    assert len(expected) == 30
    assert "Zoë&#39;s Ørsted &amp; Łódź School &lt;Trust&gt;" in html, "names are escaped, not dropped"
    assert "@media print" in html and "@page" in html

    # Each QR code of the HTML page, drawn as it is written.
    svgs = re.findall(r"<svg viewBox=.*?</svg>", html)
    assert len(svgs) == 30
    pngs = [svg_to_png(svg, tmp_path / f"html-{i}.png") for i, svg in enumerate(svgs)]
    assert set(zbar(pngs)) == expected

    # The PDF, rendered as a printer would at 150 dpi.
    pdf = await sheet(env, school, class_id, "pdf")
    assert pdf.content_type == "application/pdf" and pdf.body().startswith(b"%PDF")
    (tmp_path / "sheet.pdf").write_bytes(pdf.body())
    subprocess.run(
        ["pdftoppm", "-r", "150", "-png", str(tmp_path / "sheet.pdf"), str(tmp_path / "page")], check=True, timeout=60
    )
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 3, "ten cards a page"
    found = zbar(pages)
    assert sorted(found) == sorted(expected), "every card's QR code, once"
    text = subprocess.run(
        ["pdftotext", str(tmp_path / "sheet.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert all(c.split("/link/")[1] in text for c in expected), "the typed code is on each card"
    assert "Lódz" in text or "Łódź" in text

    # One pupil's PNG and SVG.
    qr_png = await env.ask(
        contract.PUPIL_QR,
        contract.PupilQrRequest(scope=school.scope, pupil_id=pupils[0], format="png"),
        contract.Document,
    )
    assert qr_png.content_type == "image/png"
    (tmp_path / "one.png").write_bytes(qr_png.body())
    (decoded,) = zbar([tmp_path / "one.png"])
    assert decoded in expected
    qr_svg = await env.ask(
        contract.PUPIL_QR,
        contract.PupilQrRequest(scope=school.scope, pupil_id=pupils[0], format="svg"),
        contract.Document,
    )
    assert qr_svg.content_type == "image/svg+xml" and qr_svg.text.startswith("<?xml")
    inline = re.search(r"<svg.*</svg>", qr_svg.text, re.S).group(0)
    (decoded_svg,) = zbar(
        [svg_to_png(inline.replace('xmlns="http://www.w3.org/2000/svg" ', ""), tmp_path / "one-svg.png")]
    )
    assert decoded_svg == decoded

    # Warm: the renderings are cached, so a sheet costs little.
    started = asyncio.get_running_loop().time()
    for _ in range(5):
        await sheet(env, school, class_id)
    per_sheet = (asyncio.get_running_loop().time() - started) / 5
    print(f"\nclass sheet of 30, HTML, over NATS, warm: {per_sheet * 1000:.1f} ms")
    assert per_sheet < 0.25


# -- scope -----------------------------------------------------------------------------------------


async def test_another_schools_things_are_not_found(env: Env) -> None:
    mine, my_class, my_pupils = await make_school(env, pupils=1)
    theirs, their_class, their_pupils = await make_school(env, pupils=1, name="Birch School")
    await create_codes(env, theirs, class_id=their_class)
    scope = mine.scope
    probes = [
        (contract.CLASS_PUPILS, contract.ClassPupilsRequest(scope=scope, class_id=their_class)),
        (contract.CLASS_SHEET, contract.ClassSheetRequest(scope=scope, class_id=their_class)),
        (contract.CLASS_SHEET, contract.ClassSheetRequest(scope=scope, class_id=their_class, format="pdf")),
        (contract.PUPIL_QR, contract.PupilQrRequest(scope=scope, pupil_id=their_pupils[0])),
        (contract.CREATE_CODES, contract.CreateCodesRequest(scope=scope, class_id=their_class)),
        (contract.CREATE_CODES, contract.CreateCodesRequest(scope=scope, pupil_id=their_pupils[0])),
        (contract.GET_SCHOOL_SETTINGS, contract.SchoolSettingsRequest(scope=scope, school_id=theirs.school_id)),
        (
            contract.UPDATE_SCHOOL_SETTINGS,
            contract.UpdateSchoolSettingsRequest(
                scope=scope, school_id=theirs.school_id, settings={"invitation_days": 3}
            ),
        ),
        (contract.CLASS_PUPILS, contract.ClassPupilsRequest(scope=scope, class_id="no-such-class")),
    ]
    for subject, request in probes:
        assert (await env.fails(subject, request)).code == "not_found", subject
    listed = await env.ask(contract.CLASSES, contract.ClassesRequest(scope=scope), contract.ClassesReply)
    assert [c.class_id for c in listed.classes] == [my_class]
    nothing = await env.ask(
        contract.CLASSES, contract.ClassesRequest(scope=contract.StaffScope()), contract.ClassesReply
    )
    assert nothing.classes == []
    # Their settings were not changed by the refused request.
    theirs_now = await env.ask(
        contract.GET_SCHOOL_SETTINGS,
        contract.SchoolSettingsRequest(scope=theirs.scope, school_id=theirs.school_id),
        contract.SchoolSettings,
    )
    assert theirs_now.invitation_days == 14


# -- settings ------------------------------------------------------------------------------------


async def test_school_settings_defaults_validation_and_change_event(env: Env) -> None:
    school, _, pupils = await make_school(env, pupils=1)
    get = contract.SchoolSettingsRequest(scope=school.scope, school_id=school.school_id)
    current = await env.ask(contract.GET_SCHOOL_SETTINGS, get, contract.SchoolSettings)
    assert (
        current.max_carers_per_code,
        current.printed_code_days,
        current.invitation_days,
        current.email_parent_on_removal,
    ) == (4, 30, 14, True)
    assert current.homework_url == "https://platform.example.test/homework?pupil={pupil_id}"
    default_aup = await env.ask(contract.AUP, contract.AupRequest(), contract.AupReply)
    assert (current.aup_text, current.aup_version) == (default_aup.text, default_aup.version)

    def put(**changes) -> contract.UpdateSchoolSettingsRequest:
        return contract.UpdateSchoolSettingsRequest(
            scope=school.scope, school_id=school.school_id, actor_id="admin-1", settings=changes
        )

    bad = await env.fails(
        contract.UPDATE_SCHOOL_SETTINGS,
        put(
            max_carers_per_code=0,
            printed_code_days="thirty",
            aup_text="  ",
            files_url="ftp://x/{pupil_id}",
            messages_url="https://x/inbox",
            colour="red",
        ),
    )
    assert bad.code == "validation_error"
    for name in ("max_carers_per_code", "printed_code_days", "aup_text", "files_url", "messages_url", "colour"):
        assert name in bad.detail
    assert await env.ask(contract.GET_SCHOOL_SETTINGS, get, contract.SchoolSettings) == current, "nothing changed"

    changed = await env.ask(
        contract.UPDATE_SCHOOL_SETTINGS,
        put(
            max_carers_per_code=2,
            aup_text="Be kind.",
            homework_url="https://hw.example.test/p/{pupil_id}",
            invitation_days=14,
        ),
        contract.SchoolSettings,
    )
    assert (changed.max_carers_per_code, changed.aup_text.strip(), changed.invitation_days) == (2, "Be kind.", 14)
    assert changed.aup_version != current.aup_version
    assert await env.ask(contract.GET_SCHOOL_SETTINGS, get, contract.SchoolSettings) == changed
    school_aup = await env.ask(contract.AUP, contract.AupRequest(school_id=school.school_id), contract.AupReply)
    assert (school_aup.version, school_aup.text.strip()) == (changed.aup_version, "Be kind.")

    # Putting the same values again is no change, and publishes nothing.
    await env.ask(contract.UPDATE_SCHOOL_SETTINGS, put(max_carers_per_code=2), contract.SchoolSettings)

    def mine() -> list[dict]:
        return [e for e in env.events(contract.SCHOOL_SETTINGS_CHANGED) if e["school_id"] == school.school_id]

    await eventually(lambda: len(mine()) == 1, timeout=10)
    await asyncio.sleep(0.3)
    (event,) = mine()
    assert event["changed"] == ["aup_text", "homework_url", "max_carers_per_code"]
    assert (
        event["homework_url"] == "https://hw.example.test/p/{pupil_id}" and event["aup_version"] == changed.aup_version
    )
    assert event["files_url"] == "https://platform.example.test/files?pupil={pupil_id}"
    assert "Be kind" not in json.dumps(event)

    # New codes follow the school's settings.
    await env.ask(contract.UPDATE_SCHOOL_SETTINGS, put(printed_code_days=7), contract.SchoolSettings)
    made = await create_codes(env, school, pupil_id=pupils[0])
    assert timedelta(days=6) < made.codes[0].expires_at - datetime.now(UTC) <= timedelta(days=7)
    assert (await env.fails(contract.AUP, contract.AupRequest(school_id="no-such-school"))).code == "not_found"


async def test_concurrent_regenerations_leave_one_live_code(env: Env) -> None:
    school, class_id, pupils = await make_school(env, pupils=2)
    results = await asyncio.gather(
        *[create_codes(env, school, class_id=class_id) for _ in range(3)],
        *[create_codes(env, school, pupil_id=pupils[0]) for _ in range(3)],
    )
    assert all(r.codes for r in results)
    printed = codes_in((await sheet(env, school, class_id)).text)
    assert len(printed) == 2
    # Whatever the interleaving, each pupil has exactly one working code: the one printed.
    for code in printed:
        await env.ask(contract.PREVIEW_CODE, contract.PreviewCodeRequest(code=code), contract.CodePreview)
    listed = await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )
    assert all(p.code_expires_at is not None for p in listed.pupils)
