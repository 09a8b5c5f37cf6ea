"""Welsh: the catalogues are complete and compiled, a parent's pages and emails are in the
language they chose (else their school's, else their browser's), and a Welsh school's QR sheet
and invitation emails are in Welsh and English side by side."""

from __future__ import annotations

import asyncio
import gettext
import html
import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import nats
import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from gateway_portal import Portal
from helpers import eventually
from linking_env import Env, create_codes, invite, make_school, sheet, watch_email_requests
from test_notify import publish, start_notify

from contracts import identity, linking, notify, overview
from contracts.identity import CONTACTS, Contact, ContactsReply, ContactsRequest, Principal
from contracts.kit.rpc import RpcFailure
from gateway.app import create_app
from gateway.auth import COOKIE_NAME
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings
from identity.passwords import WeakPassword, check_policy

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = [ROOT / "gateway/src/gateway", ROOT / "services/notify/src/notify", ROOT / "services/linking/src/linking"]
PLACEHOLDER = re.compile(r"%\((\w+)\)s|\{(\w+)\}")


# -- the catalogues ------------------------------------------------------------------------------


def _extracted(package: Path) -> set[str | tuple[str, str]]:
    """Every message of the package's code and templates, as `make i18n` extracts them."""
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2"), ("**/templates/**.txt", "jinja2")]
    options = {"**/templates/**.html": {"trimmed": "true"}, "**/templates/**.txt": {"trimmed": "true"}}
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "ntranslate": (1, 2)}
    found: set[str | tuple[str, str]] = set()
    for _, _, message, _, _ in extract_from_dir(
        str(package), method_map=method_map, options_map=options, keywords=keywords
    ):
        found.add(message if isinstance(message, str) else tuple(message[:2]))
    return found


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_every_message_has_a_welsh_translation_compiled_as_written(package: Path) -> None:
    po_path = package / "locale/cy/LC_MESSAGES/messages.po"
    with po_path.open("rb") as f:
        catalog = read_po(f)
    assert catalog.num_plurals == 6, "Welsh has six plural forms (CLDR: zero, one, two, few, many, other)"

    translated = {m.id if isinstance(m.id, str) else tuple(m.id): m for m in catalog if m.id}
    missing = _extracted(package) - set(translated)
    assert not missing, f"not in the .po (run make i18n and translate): {sorted(map(str, missing))[:10]}"

    compiled = gettext.GNUTranslations((package / "locale/cy/LC_MESSAGES/messages.mo").open("rb"))
    for key, m in translated.items():
        assert not m.fuzzy, f"fuzzy: {key!r}"
        forms = [m.string] if isinstance(m.string, str) else list(m.string)
        assert all(forms), f"untranslated: {key!r}"
        source = key if isinstance(key, str) else key[0]
        wanted = {a or b for a, b in PLACEHOLDER.findall(source)}
        for form in forms:
            assert {a or b for a, b in PLACEHOLDER.findall(form)} == wanted, f"placeholders differ: {key!r}"
        if isinstance(key, str):
            assert compiled.gettext(key) == m.string, f"the .mo is stale (run make i18n): {key!r}"
        else:
            assert [compiled.ngettext(key[0], key[1], n) for n in (0, 1, 2, 3, 6, 7)] == forms, key


# -- pages, on fake services ---------------------------------------------------------------------

DUE = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
SINCE = datetime(2026, 9, 1, tzinfo=UTC)


def _parent(account_id: str, language: str) -> Principal:
    return Principal(
        account_id=account_id,
        session_id=f"s-{account_id}",
        role="parent",
        email=f"{account_id}@example.org",
        name="Mari Jones",
        expires_in=3600,
        language=language,  # type: ignore[arg-type]
    )


SESSIONS = {
    "tok-cy": _parent("par-cy", "cy"),
    "tok-en": _parent("par-en", "en"),
    "tok-teacher": Principal(
        account_id="teacher-1",
        session_id="s-teacher",
        role="school_admin",
        email="athro@ysgol.example",
        name="Dafydd",
        school_id="ysgol",
        expires_in=3600,
    ),
    "tok-head": Principal(
        account_id="head-1",
        session_id="s-head",
        role="school_admin",
        email="pennaeth@ysgol.example",
        name="Siân",
        school_id="ysgol",
        expires_in=3600,
        language="cy",
    ),
}


async def session(req: identity.SessionRequest) -> Principal:
    if req.token not in SESSIONS:
        raise RpcFailure(identity.E_INVALID_SESSION, "No such session.")
    return SESSIONS[req.token]


async def children(req: linking.ParentRequest) -> linking.ChildrenReply:
    return linking.ChildrenReply(
        children=[
            linking.ChildView(
                pupil_id="p-amy",
                first_name="Amy",
                last_name="Jones",
                school_id="ysgol",
                school_name="Ysgol y Wern",
                class_name="Blwyddyn 3",
                relationship="mother",
                status="linked",
                since=SINCE,
            )
        ]
    )


async def active(req: linking.ParentRequest) -> linking.ActivePupilsReply:
    return linking.ActivePupilsReply(pupil_ids=["p-amy"])


async def homework(req: overview.ChildRequest) -> overview.HomeworkReply:
    return overview.HomeworkReply(
        items=[overview.HomeworkItem(homework_id="h1", title="Ffracsiynau", due_at=DUE, status="overdue")]
    )


async def stars(req: overview.StarsRequest) -> overview.StarsWeek:
    return overview.StarsWeek(
        week_start=date(2026, 11, 30),
        total=2,
        awards=[overview.StarAwardItem(award_id="s1", stars=2, reason="Caredigrwydd", at=DUE)],
    )


async def school_settings(req: linking.SchoolSettingsRequest) -> linking.SchoolSettings:
    return linking.SchoolSettings(
        school_id="ysgol",
        max_carers_per_code=4,
        printed_code_days=30,
        invitation_days=14,
        aup_text="Byddwch yn garedig.",
        aup_version="v1",
        homework_url="https://platform.example/homework?pupil={pupil_id}",
        files_url="https://platform.example/files?pupil={pupil_id}",
        messages_url="https://platform.example/messages?pupil={pupil_id}",
        email_parent_on_removal=True,
        language="cy",
    )


async def preview(req: linking.PreviewCodeRequest) -> linking.CodePreview:
    return linking.CodePreview(
        first_name="Amy",
        school_id="ysgol",
        school_name="Ysgol y Wern",
        class_name="Blwyddyn 3",
        aup=linking.AupReply(version="v1", text="Byddwch yn garedig.", school_id="ysgol"),
        kind="printed",
        expires_at=DUE + timedelta(days=30),
        school_language="cy" if req.code.startswith("CYCY") else "en",
    )


@dataclass
class Browser:
    http: httpx.AsyncClient

    async def page(self, path: str, token: str | None = None, languages: str | None = None) -> httpx.Response:
        headers = {"Accept-Language": languages} if languages else {}
        cookies = {COOKIE_NAME: token} if token else {}
        self.http.cookies.clear()
        answer = await self.http.get(path, headers=headers, cookies=cookies)
        assert answer.status_code == 200, answer.text
        return answer


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    fake = FakeTransport(
        {
            identity.SESSION: session,
            linking.PARENT_CHILDREN: children,
            linking.ACTIVE_PUPILS: active,
            linking.PREVIEW_CODE: preview,
            linking.GET_SCHOOL_SETTINGS: school_settings,
            overview.HOMEWORK: homework,
            overview.STARS: stars,
        }
    )
    settings = GatewaySettings(data_dir=tmp_path, revocation_wait_seconds=0, links_cache_seconds=0)
    app = create_app(settings, clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as http:
        yield Browser(http)


def lang_of(page: httpx.Response) -> str:
    found = re.search(r'<html lang="([a-z]+)"', page.text)
    assert found, page.text[:200]
    return found.group(1)


async def test_a_visitor_whose_browser_prefers_welsh_gets_the_sign_in_page_in_welsh(browser: Browser) -> None:
    page = await browser.page("/login", languages="cy-GB,cy;q=0.9,en;q=0.8")
    assert lang_of(page) == "cy" and page.headers["content-language"] == "cy"
    assert "<h1>Mewngofnodi</h1>" in page.text
    assert "Cyfeiriad e-bost" in page.text and "Cyfrinair" in page.text
    assert "Wedi anghofio eich cyfrinair?" in page.text
    assert "Sign in" not in page.text

    for languages in (None, "en-GB,en;q=0.9,cy;q=0.5", "fr", "cy;q=0"):
        page = await browser.page("/login", languages=languages)
        assert lang_of(page) == "en" and "<h1>Sign in</h1>" in page.text, languages


async def test_a_welsh_speaking_parents_pages_are_in_welsh_with_welsh_dates(browser: Browser) -> None:
    # Their preference beats a browser that asks for English.
    page = await browser.page("/children/p-amy/homework", "tok-cy", languages="en")
    assert lang_of(page) == "cy"
    assert "Gwaith cartref Amy" in page.text
    assert "Yn hwyr" in page.text, "overdue"
    assert "Dydd Gwener 4 Rhagfyr, 09:00" in page.text, "the due date by Babel, in Welsh"
    assert "Allgofnodi" in page.text and "Wedi mewngofnodi fel Mari Jones" in page.text

    page = await browser.page("/children/p-amy/stars", "tok-cy")
    assert "Sêr Amy" in page.text and "2 seren: Caredigrwydd" in page.text
    assert "Dydd Llun 30 Tachwedd 2026" in page.text, "week beginning"

    # Their error pages too.
    missing = await browser.http.get("/children/p-nobody/homework", cookies={COOKIE_NAME: "tok-cy"})
    assert missing.status_code == 404 and lang_of(missing) == "cy"
    assert "Heb ddod o hyd i'r dudalen" in html.unescape(missing.text)
    assert "Nid yw'r plentyn hwnnw'n gysylltiedig â'ch cyfrif." in html.unescape(missing.text)

    # And an English speaker's, even from a browser that prefers Welsh.
    page = await browser.page("/children/p-amy/homework", "tok-en", languages="cy")
    assert lang_of(page) == "en"
    assert "Amy's homework" in page.text and "Friday 4 December, 09:00" in page.text
    page = await browser.page("/children/p-amy/stars", "tok-en")
    assert "2 stars: Caredigrwydd" in page.text and "Monday 30 November 2026" in page.text


async def test_a_welsh_schools_code_shows_its_page_in_welsh_to_a_visitor(browser: Browser) -> None:
    page = await browser.page("/link/CYCY-AAAA-BBBB")
    assert lang_of(page) == "cy"
    assert "Cysylltu Amy, Blwyddyn 3, Ysgol y Wern?" in page.text
    assert "Creu cyfrif a chysylltu Amy" in page.text

    # The visitor's own browser is asked only when the school says nothing.
    assert lang_of(await browser.page("/link/ENEN-AAAA-BBBB")) == "en"
    assert lang_of(await browser.page("/link/ENEN-AAAA-BBBB", languages="cy")) == "en"
    page = await browser.page("/register?code=CYCY-AAAA-BBBB")
    assert lang_of(page) == "cy" and "Creu eich cyfrif" in page.text
    assert "Rwy'n derbyn polisi defnydd derbyniol Ysgol y Wern" in page.text


async def test_a_school_admin_who_chose_welsh_sets_the_schools_language_in_welsh(browser: Browser) -> None:
    page = await browser.page("/schools/ysgol/settings", "tok-head")
    assert lang_of(page) == "cy" and "<h1>Gosodiadau'r ysgol</h1>" in page.text
    assert "Iaith y daflen QR a'r e-byst gwahoddiad" in page.text
    assert re.search(
        r'<option value="cy" selected>Welsh and English side by side \(Cymraeg a Saesneg\)</option>', page.text
    )


@pytest.mark.parametrize("school_language", ["cy", "en"])
async def test_a_parent_registering_with_a_welsh_schools_code_starts_in_welsh(
    tmp_path: Path, school_language: str
) -> None:
    registered: list[identity.RegisterRequest] = []

    async def check_password(req: identity.CheckPasswordRequest) -> identity.Accepted:
        return identity.Accepted()

    async def redeem(req: linking.RedeemRequest) -> linking.RedeemReply:
        aup = linking.AupReply(version="v1", text="Byddwch yn garedig.", school_id="ysgol")
        return linking.RedeemReply(created=not req.dry_run, aup=aup, school_language=school_language)  # type: ignore[arg-type]

    async def register(req: identity.RegisterRequest) -> identity.RegisterReply:
        registered.append(req)
        return identity.RegisterReply(parent_id="par-new", created=True, verified=False)

    fake = FakeTransport({identity.CHECK_PASSWORD: check_password, linking.REDEEM: redeem, identity.REGISTER: register})
    app = create_app(GatewaySettings(data_dir=tmp_path), clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as http:
        answer = await http.post(
            "/api/v1/auth/register",
            json={
                "email": "mari@example.org",
                "password": "tri gair digyswllt hir",
                "name": "Mari Jones",
                "accept_aup": True,
                "code": "CYCY-AAAA-BBBB",
                "relationship": "mother",
            },
        )
    assert answer.status_code == 202, answer.text
    assert [r.language for r in registered] == [school_language]


# -- emails, over a real SMTP server ---------------------------------------------------------------


async def test_welsh_emails_have_a_welsh_subject_body_and_content_language(
    fresh_nats, smtp_server, tmp_path: Path
) -> None:
    runtime = await start_notify(fresh_nats.url, f"sqlite+aiosqlite:///{tmp_path / 'n.db'}", smtp_server.url)
    nc = await nats.connect(fresh_nats.url)

    async def contacts(msg) -> None:
        req = ContactsRequest.model_validate_json(msg.data)
        found = [Contact(id=i, email="mari@example.org", name="Mari Jones", language="cy") for i in req.ids]
        await msg.respond(ContactsReply(contacts=found).model_dump_json().encode())

    await nc.subscribe(CONTACTS.subject, queue="identity", cb=contacts)
    expires = datetime(2026, 12, 17, 17, 0, tzinfo=UTC)
    async with runtime.running():
        js = nc.jetstream()
        # Identity names the language of the account's own emails.
        await publish(
            js,
            notify.PasswordResetEmail(
                to="mari@example.org", reset_url="http://portal.test/r?t=1", expires_at=expires, language="cy"
            ),
        )
        # A request that names only the parent: their language, as identity knows it.
        await publish(
            js,
            notify.LinkActivatedEmail(
                parent_id="par-cy", school_name="Ysgol y Wern", pupil_first_name="Amy", portal_url="http://portal.test/"
            ),
        )
        # A Welsh school's invitation: Welsh, then English.
        await publish(
            js,
            notify.InvitationEmail(
                to="rhiant@example.org",
                school_name="Ysgol y Wern",
                pupil_first_name="Amy",
                link_url="http://portal.test/link/CYCY",
                code="CYCY-AAAA-BBBB",
                expires_at=expires,
                language="cy",
                bilingual=True,
            ),
        )
        await publish(js, notify.PasswordChangedEmail(to="sam@example.org", reset_url="http://portal.test/r"))
        await eventually(lambda: len(smtp_server.messages) == 4, timeout=20)
    await nc.close()

    by_kind = {m.subject.split(" ")[0]: m for m in smtp_server.messages}
    reset = smtp_server.to("mari@example.org")
    assert len(reset) == 2
    (reset_email,) = [m for m in reset if "Ailosod" in m.subject]
    assert reset_email.subject == "Ailosod eich cyfrinair Porth Rhieni"
    assert reset_email.message["Content-Language"] == "cy"
    body = reset_email.part("plain")
    assert "Helo," in body and "I ddewis cyfrinair Porth Rhieni newydd" in body
    assert "17 Rhagfyr 2026 am 17:00 (GMT)" in body, "the date in Welsh"
    assert '<html lang="cy">' in reset_email.part("html")

    (activated,) = [m for m in reset if m is not reset_email]
    assert activated.message["Content-Language"] == "cy"
    assert activated.subject == "Gallwch nawr weld gwaith cartref, negeseuon a sêr Amy"
    assert "Helo Mari Jones," in activated.part("plain")

    (invitation,) = smtp_server.to("rhiant@example.org")
    assert invitation.message["Content-Language"] == "cy, en"
    assert invitation.subject == (
        "Mae Ysgol y Wern yn eich gwahodd i weld gwaith ysgol Amy / Ysgol y Wern invites you to see Amy's schoolwork"
    )
    text = invitation.part("plain")
    welsh, english = text.index("Mae Ysgol y Wern yn eich gwahodd"), text.index("Ysgol y Wern invites you")
    assert welsh < english, "Welsh first"
    assert text.count("CYCY-AAAA-BBBB") == 2
    body_html = invitation.part("html")
    assert '<div lang="cy">' in body_html and '<div lang="en"' in body_html

    (english_only,) = smtp_server.to("sam@example.org")
    assert english_only.message["Content-Language"] == "en"
    assert english_only.subject == "Your Parent Portal password was changed"
    assert by_kind  # every email was read back


# -- a Welsh school: its settings, its QR sheet, its invitations ------------------------------------


async def test_a_welsh_schools_sheet_and_invitations_are_bilingual(env: Env, tmp_path: Path) -> None:
    school, class_id, pupils = await make_school(env, pupils=2, name="Ysgol y Wern")
    await create_codes(env, school, class_id=class_id)
    get = linking.SchoolSettingsRequest(scope=school.scope, school_id=school.school_id)
    assert (await env.ask(linking.GET_SCHOOL_SETTINGS, get, linking.SchoolSettings)).language == "en"
    english = (await sheet(env, school, class_id)).text
    assert '<html lang="en">' in english and "Defnyddiwch erbyn" not in english

    def put(**changes: object) -> linking.UpdateSchoolSettingsRequest:
        return linking.UpdateSchoolSettingsRequest(
            scope=school.scope, school_id=school.school_id, actor_id="head", settings=changes
        )

    for bad in ("fr", "CY", "", 1, None, True):
        refused = await env.fails(linking.UPDATE_SCHOOL_SETTINGS, put(language=bad))
        assert refused.code == "validation_error" and "language" in refused.detail, bad
    assert (await env.ask(linking.GET_SCHOOL_SETTINGS, get, linking.SchoolSettings)).language == "en"

    changed = await env.ask(linking.UPDATE_SCHOOL_SETTINGS, put(language="cy"), linking.SchoolSettings)
    assert changed.language == "cy"

    page = (await sheet(env, school, class_id)).text
    assert '<html lang="cy">' in page
    assert "Codau QR: Year 3 Robins, Ysgol y Wern" in page and "QR codes: Year 3 Robins, Ysgol y Wern" in page
    assert page.index("Codau QR") < page.index("QR codes:"), "Welsh first"
    assert page.count("Defnyddiwch erbyn") == 2 and page.count("Use by") == 2
    assert "Sganiwch y cod QR" in page and "Scan the QR code" in page
    assert re.search(
        r"Defnyddiwch erbyn \d+ (Ionawr|Chwefror|Mawrth|Ebrill|Mai|Mehefin|Gorffennaf|Awst|Medi|Hydref|Tachwedd|Rhagfyr) \d{4}",
        page,
    )

    pdf = await sheet(env, school, class_id, "pdf")
    (tmp_path / "sheet.pdf").write_bytes(pdf.body())
    text = subprocess.run(
        ["pdftotext", str(tmp_path / "sheet.pdf"), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    text = " ".join(text.split())  # lines wrap where the card ends
    assert "Defnyddiwch erbyn" in text and "Use by" in text
    assert "Ychwanegu plentyn" in text and "Add a child" in text

    await watch_email_requests(env)
    _, request = await invite(env, school, pupils[0], "rhiant@example.org")
    assert (request["language"], request["bilingual"]) == ("cy", True)

    # A code of the Welsh school tells the gateway its language (a registering parent starts in Welsh).
    code = re.findall(r'class="code">([0-9A-Z-]{14})<', page)[0]
    seen = await env.ask(linking.PREVIEW_CODE, linking.PreviewCodeRequest(code=code), linking.CodePreview)
    assert seen.school_language == "cy"
    dry = await env.ask(
        linking.REDEEM,
        linking.RedeemRequest(code=code, dry_run=True, accept_aup=True, email="new@example.org"),
        linking.RedeemReply,
    )
    assert dry.school_language == "cy"
    await asyncio.sleep(0)


async def test_a_password_too_easy_to_guess_is_explained_in_welsh(portal: Portal) -> None:
    # identity's own judgement, in English for every client of the API ...
    common = {"email": "cyffredin@example.org", "name": "Mari Jones", "accept_aup": True}
    answer = await portal.http.post("/api/v1/auth/register", json={**common, "password": "password1234"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["detail"] == (
        "This is a very common password. Choose a less common password, for example a few unrelated words."
    )
    # ... and the register page of a visitor who reads Welsh says why, and what to do, in Welsh.
    async with httpx.AsyncClient(base_url=portal.http.base_url, headers={"Accept-Language": "cy"}) as visitor:
        form = await visitor.get("/register")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert form.status_code == 200 and token, form.text[:300]
        for password, reason in [
            ("password1234", "Mae hwn yn gyfrinair cyffredin iawn."),
            ("abcdefghijkl", 'Mae\'n hawdd dyfalu dilyniannau fel "abc" neu "6543".'),
            ("aaaaaaaaaaaa", 'Mae\'n hawdd dyfalu ailadroddiadau fel "aaa".'),
        ]:
            page = await visitor.post(
                "/register", data={**common, "accept_aup": "yes", "password": password, "csrf_token": token[1]}
            )
            assert page.status_code == 422 and lang_of(page) == "cy", page.text[:300]
            text = html.unescape(page.text)
            assert f"{reason} Dewiswch gyfrinair llai cyffredin, er enghraifft ychydig o eiriau digyswllt." in text
            assert "guess" not in text and "Choose a less common" not in text


def test_every_setting_linking_refuses_is_explained_in_welsh_naming_the_setting() -> None:
    from gateway.pages.common import FieldErrors
    from gateway.pages.staff_pages import SETTING_LABELS, setting_errors
    from linking.school_settings import Invalid, validate

    tries = [
        {"printed_code_days": 0, "invitation_days": "soon", "max_carers_per_code": True},
        {"aup_text": " ", "homework_url": "ftp://x/{pupil_id}", "files_url": "https://x/ {pupil_id}"},
        {"messages_url": "https://x/{pupil", "homework_url": "https://x/{child}", "files_url": ""},
        {"email_parent_on_removal": "yes", "language": "fr", "aup_text": "x" * 100_000},
        {"messages_url": "https://x/" + "a" * 3000 + "{pupil_id}"},
    ]
    for changes in tries:
        with pytest.raises(Invalid) as refused:
            validate(changes)
        problems = FieldErrors(refused.value.problems)
        assert set(problems) == set(changes), problems
        welsh = setting_errors(problems, "cy")
        english = setting_errors(problems, "en")
        for field, problem in problems.items():
            # No word of linking's English is left, and the setting is named in Welsh.
            assert problem not in welsh[field] and "must" not in welsh[field], (field, welsh[field])
            assert english[field].startswith(SETTING_LABELS[field] + " "), english[field]
    assert setting_errors(FieldErrors({"printed_code_days": "must be between 1 and 365"}), "cy") == {
        "printed_code_days": "Nifer y dyddiau y mae cod QR wedi'i argraffu yn gweithio: rhowch rif cyfan o 1 i 365"
    }
    assert setting_errors(FieldErrors({"printed_code_days": "must be between 1 and 365"}), "en") == {
        "printed_code_days": "Days a printed QR code works must be between 1 and 365"
    }


def test_a_message_the_catalogue_lacks_stays_as_it_is_sentence_by_sentence() -> None:
    from contracts.kit.i18n import translator
    from gateway.i18n import LOCALE_DIR

    translate = translator(LOCALE_DIR)
    assert translate("This is a very common password. Something new.", "cy") == (
        "Mae hwn yn gyfrinair cyffredin iawn. Something new."
    )
    assert translate("Something new. Mr. Jones", "cy") == "Something new. Mr. Jones"
    assert translate("This is a very common password.", "en") == "This is a very common password."


def test_the_service_sentences_the_pages_translate_are_still_the_ones_sent() -> None:
    from gateway.service_messages import SERVICE_MESSAGES

    sources = "\n".join(
        p.read_text(encoding="utf-8")
        for p in [*ROOT.glob("services/*/src/**/*.py"), ROOT / "gateway/src/gateway/errors.py"]
    )
    # identity's password policy writes its figure in.
    with pytest.raises(WeakPassword) as short:
        check_policy("short")
    sources += "\n" + str(short.value)
    for message in SERVICE_MESSAGES:
        assert message in sources or message[:1].lower() + message[1:] in sources, message
