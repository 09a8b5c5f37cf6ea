"""Staff pages: their classes, a class's Parents tab (status badges, invitations, invite by
email, remove with confirmation, create and print QR codes) and, for school admins, a pupil's
audit trail, safeguarding bars and the school's settings.

Every page asks linking within the caller's scope through the same staff client as the API
(the `staff` dependency) and shows the API's own models, so what a page shows is exactly what
the API would answer the same caller.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.response import Template

from contracts import linking as contract
from contracts.base import utcnow
from contracts.identity import Principal
from contracts.kit.i18n import N_
from contracts.kit.rpc import RpcError
from gateway import flows, paging
from gateway.auth import admins_only, staff_only
from gateway.caches.links import get_links_cache
from gateway.caches.sessions import get_auth
from gateway.clients import Clients, StaffLinking
from gateway.errors import checked_id, not_found
from gateway.i18n import page_language, translate
from gateway.models import AuditRow, Bar, PupilRow
from gateway.pages.common import FieldErrors, as_api_error, field_errors_from, flash, redirect, render

STAFF = [staff_only]
ADMINS = [admins_only]
INVITATION_STATES_SHOWN = ("invited", "expired", "bounced")
SETTING_INTS = ("max_carers_per_code", "printed_code_days", "invitation_days")
SETTING_URLS = ("homework_url", "files_url", "messages_url")
SETTING_LABELS = {
    "max_carers_per_code": N_("Parents or carers per printed QR code"),
    "printed_code_days": N_("Days a printed QR code works"),
    "invitation_days": N_("Days an invitation email works"),
    "aup_text": N_("The policy text"),
    "homework_url": N_("The homework link"),
    "files_url": N_("The files link"),
    "messages_url": N_("The messages link"),
    "email_parent_on_removal": N_("Emailing a parent on removal"),
    "language": N_("The language of the QR sheet and invitations"),
}

# What linking says of a setting it refuses (linking.school_settings), as the page says it in
# its language, naming the setting; a problem not listed is shown in linking's English words.
_SETTING_PROBLEMS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"must be a whole number"), N_("%(setting)s must be a whole number")),
    (
        re.compile(r"must be between (?P<low>\d+) and (?P<high>\d+)"),
        N_("%(setting)s must be between %(low)s and %(high)s"),
    ),
    (re.compile(r"must be true or false"), N_("%(setting)s must be yes or no")),
    (re.compile(r"must be one of .*"), N_("%(setting)s must be one of the choices given")),
    (re.compile(r"must be a non-empty text"), N_("%(setting)s cannot be empty")),
    (re.compile(r"must be at most (?P<count>\d+) characters"), N_("%(setting)s must be at most %(count)s characters")),
    (re.compile(r"must be a URL"), N_("%(setting)s must be a web address")),
    (re.compile(r"must start with https:// or http://"), N_("%(setting)s must start with https:// or http://")),
    (re.compile(r"must not contain spaces"), N_("%(setting)s must not contain spaces")),
    (re.compile(r"has an unbalanced \{ or \}"), N_("%(setting)s has a { without its } or a } without its {")),
    (
        re.compile(r"must contain \{pupil_id\} and no other placeholder"),
        N_("%(setting)s must contain {pupil_id} and no other placeholder"),
    ),
]


def setting_errors(errors: FieldErrors, lang: str) -> FieldErrors:
    """Linking's words for each refused setting, as a sentence naming the setting in `lang`."""
    out = FieldErrors()
    for field, given in errors.items():
        # field_errors_from writes each with a capital first.
        problem = given[:1].lower() + given[1:]
        setting = translate(SETTING_LABELS.get(field, field), lang)
        for pattern, sentence in _SETTING_PROBLEMS:
            found = pattern.fullmatch(problem.strip().rstrip("."))
            if found:
                out[field] = translate(sentence, lang) % {"setting": setting, **found.groupdict()}
                break
        else:
            out[field] = f"{setting} {problem}"
    return out


def display_name(row: Any) -> str:
    """A parent's name as staff see it; identity may have forgotten a deleted account."""
    return row.name or row.email or "A parent whose account was deleted"


async def staff_home(request: Request, staff: StaffLinking, principal: Principal) -> Template:
    """The classes the member of staff may see, by school, with how many pupils have a linked parent.
    A trust admin searches them by name and school, a page of 100 at a time."""
    query = request.query_params
    q = (query.get("q") or "").strip()[:200] or None
    school_id = (query.get("school_id") or "").strip()[:128] or None
    offset = int(query["cursor"]) if (query.get("cursor") or "").isdigit() and len(query["cursor"]) < 10 else 0
    search = principal.role == "trust_admin" or q is not None or school_id is not None
    next_href = None
    if search:
        page = await staff.classes_page(school_id=school_id, q=q, limit=paging.DEFAULT_LIMIT, offset=offset)
        classes = page.classes
        if page.next_offset is not None:
            params = {k: v for k, v in (("q", q), ("school_id", school_id)) if v}
            next_href = "/?" + urlencode({**params, "cursor": page.next_offset})
    else:
        classes = await staff.classes()
    schools: dict[str, dict[str, Any]] = {}
    for row in classes:
        school = schools.setdefault(row.school_id, {"school_id": row.school_id, "name": row.school_name, "classes": []})
        school["classes"].append(row)
    if principal.role == "school_admin" and principal.school_id and principal.school_id not in schools:
        schools[principal.school_id] = {"school_id": principal.school_id, "name": "Your school", "classes": []}
    return render(
        request,
        "pages/staff_home.html",
        principal=principal,
        schools=list(schools.values()),
        search=search,
        all_schools=await staff.schools() if principal.role == "trust_admin" else [],
        q=q or "",
        school_id=school_id or "",
        next_href=next_href,
    )


async def _class(
    clients: Clients, staff: StaffLinking, class_id: str
) -> tuple[contract.ClassPupilsReply, list[PupilRow]]:
    reply = await staff.class_pupils(checked_id(class_id))
    return reply, await flows.pupil_rows(clients.identity, reply)


def _pupil(rows: list[PupilRow], pupil_id: str) -> PupilRow:
    found = next((p for p in rows if p.pupil_id == pupil_id), None)
    if found is None:
        raise not_found()
    return found


@get("/classes/{class_id:str}", include_in_schema=False, guards=STAFF, operation_id="page_class")
async def class_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
) -> Template:
    """The class's Parents tab: every pupil with their parents, invitations and actions."""
    reply, pupils = await _class(clients, staff, class_id)
    now = utcnow()
    # A printed code past its expiry is no code at all: the sheet would have nothing to print.
    live = {p.pupil_id for p in pupils if p.code_expires_at and p.code_expires_at > now}
    return render(
        request,
        "pages/class.html",
        principal=principal,
        klass=reply,
        pupils=pupils,
        has_codes=bool(live),
        live_codes=live,
        missing_codes=len(pupils) - len(live),
        shown_invitations=INVITATION_STATES_SHOWN,
        display_name=display_name,
        names={
            "pupil": {p.pupil_id: p.first_name for p in pupils},
            "invitation": {i.invitation_id: i.email for p in pupils for i in p.invitations},
        },
    )


# -- inviting ------------------------------------------------------------------------------------


@get(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/invite",
    include_in_schema=False,
    guards=STAFF,
    operation_id="page_invite",
)
async def invite_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
) -> Template:
    """ "Invite parent": the address the invitation email goes to."""
    reply, pupils = await _class(clients, staff, class_id)
    return render(
        request,
        "pages/invite.html",
        principal=principal,
        klass=reply,
        pupil=_pupil(pupils, pupil_id),
        values={},
        errors={},
    )


@post(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/invite",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    operation_id="page_invite_submit",
)
async def invite_submit(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
) -> Response[Any]:
    """Send the invitation email; an earlier open one to the same address stops working."""
    form = await request.form()
    email = str(form.get("email") or "").strip()[:254]
    reply, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)

    def again(errors: FieldErrors, status: int) -> Template:
        return render(
            request,
            "pages/invite.html",
            principal=principal,
            klass=reply,
            pupil=pupil,
            values={"email": email},
            errors=errors,
            status=status,
        )

    if "@" not in email or len(email) < 3:
        return again(FieldErrors(email="Enter an email address like name@example.org"), 400)
    try:
        invitation = await staff.invite(checked_id(pupil_id), email)
    except RpcError as exc:
        if as_api_error(exc).status_code == 422:
            errors, _ = field_errors_from(exc, "email")
            return again(FieldErrors(email=next(iter(errors.values()))), 422)
        raise
    notice = flash(request, "invitation_sent", pupil=pupil.pupil_id, invitation=invitation.invitation_id)
    return redirect(f"/classes/{class_id}", cookies=[notice])


# -- removing access -----------------------------------------------------------------------------


@get(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/parents/{parent_id:str}/remove",
    include_in_schema=False,
    guards=STAFF,
    operation_id="page_remove_parent",
)
async def remove_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
    parent_id: str,
) -> Template:
    """Asks before removing, naming the parent and the pupil, and offers "from all their children"."""
    reply, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)
    parent = next((p for p in pupil.parents if p.parent_id == parent_id), None)
    if parent is None:
        raise not_found()
    others = await staff.parent_pupils(checked_id(parent_id))
    return render(
        request,
        "pages/remove.html",
        principal=principal,
        klass=reply,
        pupil=pupil,
        parent=parent,
        parent_name=display_name(parent),
        all_pupils=others,
    )


@post(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/parents/{parent_id:str}/remove",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    operation_id="page_remove_parent_submit",
)
async def remove_submit(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    class_id: str,
    pupil_id: str,
    parent_id: str,
) -> Response[Any]:
    """That parent loses this pupil only, on every replica before the answer."""
    _, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)
    form = await request.form()
    # The audit row keeps why (optional); longer than the API allows is cut, not refused.
    reason = str(form.get("reason") or "").replace("\r\n", "\n").strip()[:500]
    async with get_links_cache(state).removals() as removed:
        await staff.remove_parent(checked_id(pupil_id), checked_id(parent_id), reason)
        removed.expect(parent_id, pupil_id)
    return redirect(f"/classes/{class_id}", cookies=[flash(request, "parent_removed", pupil=pupil.pupil_id)])


@post(
    "/classes/{class_id:str}/parents/{parent_id:str}/remove-all",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    operation_id="page_remove_parent_everywhere",
)
async def remove_all_submit(
    state: State, request: Request, staff: NamedDependency[StaffLinking], class_id: str, parent_id: str
) -> Response[Any]:
    """The parent loses every child of the caller's school (trust) at once, on every replica
    before the answer."""
    async with get_links_cache(state).removals() as removed:
        for pupil_id in await staff.remove_parent_everywhere(checked_id(parent_id)):
            removed.expect(parent_id, pupil_id)
    return redirect(f"/classes/{class_id}", cookies=[flash(request, "parent_removed_everywhere")])


# -- QR codes ------------------------------------------------------------------------------------


@get("/classes/{class_id:str}/codes", include_in_schema=False, guards=STAFF, operation_id="page_codes")
async def codes_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
) -> Template:
    """ "Create QR codes", with the warning that codes printed before stop working."""
    reply, pupils = await _class(clients, staff, class_id)
    has_codes = any(p.code_expires_at for p in pupils)
    return render(request, "pages/codes.html", principal=principal, klass=reply, pupils=pupils, has_codes=has_codes)


@post(
    "/classes/{class_id:str}/codes",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    operation_id="page_codes_submit",
)
async def codes_submit(request: Request, staff: NamedDependency[StaffLinking], class_id: str) -> Response[Any]:
    """Every pupil of the class gets a new printed code (`only_missing`: those without one)."""
    form = await request.form()
    only_missing = form.get("only_missing") == "yes"
    created = await staff.create_class_codes(checked_id(class_id), only_missing=only_missing)
    return redirect(f"/classes/{class_id}", cookies=[flash(request, "codes_created", count=len(created.codes))])


@post(
    "/classes/{class_id:str}/invitations/{invitation_id:str}/withdraw",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    operation_id="page_withdraw_invitation",
)
async def withdraw_submit(
    request: Request, staff: NamedDependency[StaffLinking], class_id: str, invitation_id: str
) -> Response[Any]:
    """The invitation's code stops working; an accepted one answers as the API does (409)."""
    await staff.withdraw_invitation(checked_id(invitation_id))
    return redirect(f"/classes/{class_id}", cookies=[flash(request, "invitation_withdrawn", invitation=invitation_id)])


@post(
    "/classes/{class_id:str}/invite-contacts",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    operation_id="page_invite_contacts",
)
async def invite_contacts_submit(
    request: Request, staff: NamedDependency[StaffLinking], class_id: str
) -> Response[Any]:
    """Every roster contact of the class's pupils without a linked parent is invited."""
    await staff.bulk_invite(checked_id(class_id), from_contacts=True, rows=[])
    return redirect(f"/classes/{class_id}", cookies=[flash(request, "invitations_sent")])


# -- school admins ---------------------------------------------------------------------------------

AUDIT_ACTIONS = {
    "invitation_sent": N_("Invitation sent"),
    "invitation_withdrawn": N_("Invitation withdrawn"),
    "link_created": N_("Linked (awaiting email confirmation)"),
    "link_activated": N_("Link active"),
    "link_removed": N_("Access removed"),
    "bar_added": N_("Address barred"),
    "bar_lifted": N_("Bar lifted"),
    "code_regenerated": N_("New QR code"),
}


@get(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/audit",
    include_in_schema=False,
    guards=ADMINS,
    operation_id="page_audit",
)
async def audit_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
) -> Template:
    """A pupil's audit trail, names filled in where identity still knows them."""
    reply, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)
    entries = [AuditRow.of(e) for e in await staff.audit(checked_id(pupil_id))]
    # Linking names actors "staff:<id>", "parent:<id>" or "system"; identity knows the ids.
    actors = {e.actor: e.actor.partition(":")[2] for e in entries if ":" in e.actor}
    ids = set(actors.values()) | {e.parent_id for e in entries if e.parent_id}
    try:
        contacts = await clients.identity.contacts(ids)
    except RpcError:
        contacts = {}  # the trail still shows, with ids for names

    def name(account_id: str | None, fallback: str) -> str:
        return contacts[account_id].name if account_id in contacts else fallback

    rows = [
        {
            **msgspec.structs.asdict(e),
            "action_text": AUDIT_ACTIONS.get(e.action, e.action),
            "actor_name": name(actors.get(e.actor), "Parent Portal" if e.actor == "system" else e.actor),
            "parent_name": name(e.parent_id, "a parent whose account was deleted") if e.parent_id else "",
        }
        for e in reversed(entries)
    ]
    return render(request, "pages/audit.html", principal=principal, klass=reply, pupil=pupil, rows=rows)


def _bars_path(class_id: str, pupil_id: str) -> str:
    return f"/classes/{class_id}/pupils/{pupil_id}/bars"


async def _bars(staff: StaffLinking, pupil_id: str) -> list[Bar]:
    return [Bar.of(b) for b in await staff.bars(checked_id(pupil_id))]


@get(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/bars",
    include_in_schema=False,
    guards=ADMINS,
    operation_id="page_bars",
)
async def bars_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
) -> Template:
    """A pupil's safeguarding bars, each with "Lift the bar", and the form to bar an address."""
    reply, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)
    bars = await _bars(staff, pupil_id)
    return render(
        request,
        "pages/bars.html",
        principal=principal,
        klass=reply,
        pupil=pupil,
        bars=bars,
        values={},
        errors={},
        names={"pupil": {pupil.pupil_id: pupil.first_name}, "bar": {b.bar_id: b.email for b in bars}},
    )


@post(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/bars",
    include_in_schema=False,
    guards=ADMINS,
    status_code=200,
    operation_id="page_bar_submit",
)
async def bar_submit(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
) -> Response[Any]:
    """Bar the address: it can no longer be linked to the pupil, and links it holds end."""
    form = await request.form()
    email = str(form.get("email") or "").strip()
    reason = str(form.get("reason") or "").replace("\r\n", "\n").strip()
    reply, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)

    async def again(errors: FieldErrors, status: int, message: str | None = None) -> Template:
        bars = await _bars(staff, pupil_id)
        return render(
            request,
            "pages/bars.html",
            principal=principal,
            klass=reply,
            pupil=pupil,
            bars=bars,
            values={"email": email, "reason": reason},
            errors=errors,
            message=message,
            status=status,
        )

    errors = FieldErrors()
    if "@" not in email or not 3 <= len(email) <= 254:
        errors["email"] = "Enter the email address to bar, like name@example.org"
    if not reason:
        errors["reason"] = f"Enter why this address is barred from {pupil.first_name}"
    elif len(reason) > 1000:
        errors["reason"] = "Keep the reason to 1000 characters or fewer"
    if errors:
        return await again(errors, 400)
    try:
        bar_id = await flows.add_bar(
            staff, clients.identity, get_links_cache(state), checked_id(pupil_id), email, reason
        )
    except RpcError as exc:
        if as_api_error(exc).status_code != 422:
            raise
        found, detail = field_errors_from(exc)
        return await again(FieldErrors({k: v for k, v in found.items() if k in ("email", "reason")}), 422, detail)
    notice = flash(request, "bar_added", pupil=pupil.pupil_id, bar=bar_id)
    return redirect(_bars_path(class_id, pupil_id), cookies=[notice])


async def _bar(staff: StaffLinking, pupil_id: str, bar_id: str) -> Bar:
    found = next((b for b in await _bars(staff, pupil_id) if b.bar_id == bar_id), None)
    if found is None:
        raise not_found()
    return found


@get(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/bars/{bar_id:str}/lift",
    include_in_schema=False,
    guards=ADMINS,
    operation_id="page_lift_bar",
)
async def lift_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    class_id: str,
    pupil_id: str,
    bar_id: str,
) -> Template:
    """Asks before lifting a bar, naming the address and the pupil."""
    reply, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)
    bar = await _bar(staff, pupil_id, bar_id)
    return render(request, "pages/lift_bar.html", principal=principal, klass=reply, pupil=pupil, bar=bar)


@post(
    "/classes/{class_id:str}/pupils/{pupil_id:str}/bars/{bar_id:str}/lift",
    include_in_schema=False,
    guards=ADMINS,
    status_code=200,
    operation_id="page_lift_bar_submit",
)
async def lift_submit(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    class_id: str,
    pupil_id: str,
    bar_id: str,
) -> Response[Any]:
    """The address may be linked to the pupil again."""
    _, pupils = await _class(clients, staff, class_id)
    pupil = _pupil(pupils, pupil_id)
    await _bar(staff, pupil_id, bar_id)
    await staff.lift_bar(checked_id(pupil_id), checked_id(bar_id))
    return redirect(_bars_path(class_id, pupil_id), cookies=[flash(request, "bar_lifted", pupil=pupil.pupil_id)])


def _settings_values(answer: contract.SchoolSettings) -> dict[str, Any]:
    return {
        "max_carers_per_code": answer.max_carers_per_code,
        "printed_code_days": answer.printed_code_days,
        "invitation_days": answer.invitation_days,
        "aup_text": answer.aup_text,
        "homework_url": answer.homework_url,
        "files_url": answer.files_url,
        "messages_url": answer.messages_url,
        "email_parent_on_removal": answer.email_parent_on_removal,
        "language": answer.language,
    }


@get("/schools/{school_id:str}/settings", include_in_schema=False, guards=ADMINS, operation_id="page_school_settings")
async def settings_page(
    request: Request, staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal], school_id: str
) -> Template:
    """The school's settings: carers per code, expiries, the acceptable-use policy, links."""
    answer = await staff.school_settings(checked_id(school_id))
    return render(
        request,
        "pages/settings.html",
        principal=principal,
        school_id=school_id,
        values=_settings_values(answer),
        errors={},
    )


def settings_from_form(form: Any) -> dict[str, Any]:
    """A settings form (a school's or the trust's) as linking takes it."""
    data: dict[str, Any] = {}
    for name in SETTING_INTS:
        raw = str(form.get(name) or "").strip()
        # A number goes as a number; anything else as typed, for linking to name the field.
        # ASCII digits only: str.isdigit() is true of "²", which int() refuses.
        data[name] = int(raw) if raw.isascii() and raw.isdigit() else raw
    for name in (*SETTING_URLS, "aup_text"):
        data[name] = str(form.get(name) or "").replace("\r\n", "\n")
    data["email_parent_on_removal"] = form.get("email_parent_on_removal") == "yes"
    if "language" in form:
        # As chosen; linking refuses any other value and the form names the field.
        data["language"] = str(form.get("language") or "")
    return data


@post(
    "/schools/{school_id:str}/settings",
    include_in_schema=False,
    guards=ADMINS,
    status_code=200,
    operation_id="page_school_settings_submit",
)
async def settings_submit(
    request: Request, staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal], school_id: str
) -> Response[Any]:
    """Save the settings; linking checks them and names each field it refuses."""
    data = settings_from_form(await request.form())
    try:
        await staff.update_school_settings(checked_id(school_id), data)
    except RpcError as exc:
        if as_api_error(exc).status_code != 422:
            raise
        errors, detail = field_errors_from(exc)
        # Linking says "must be between 1 and 20"; the page names the setting too.
        errors = setting_errors(errors, page_language(request, principal))
        return render(
            request,
            "pages/settings.html",
            principal=principal,
            school_id=school_id,
            values=data,
            errors=errors,
            message=None if errors else detail,
            status=422,
        )
    return redirect(f"/schools/{school_id}/settings", cookies=[flash(request, "settings_saved")])


# -- staff accounts ------------------------------------------------------------------------------

ROLE_LABELS = {"teacher": N_("Teacher"), "school_admin": N_("School admin"), "trust_admin": N_("Trust admin")}


@get("/staff", include_in_schema=False, guards=ADMINS, operation_id="page_staff")
async def staff_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
) -> Template:
    """The members of staff of the admin's school (trust), each with "Disable" or "Enable"."""
    found = await flows.staff_of_scope(clients, staff, principal)
    groups: dict[str, dict[str, Any]] = {}
    for m in found.staff:
        if m.role == "trust_admin":
            key, title = "trust", N_("Trust admins")
        else:
            key = f"school:{m.school_id}"
            title = found.schools.get(m.school_id or "", N_("Your school"))
        groups.setdefault(key, {"title": title, "members": []})["members"].append(m)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0] != "trust", kv[1]["title"]))
    return render(
        request,
        "pages/staff.html",
        principal=principal,
        groups=[g for _, g in ordered],
        roles=ROLE_LABELS,
        names={"staff": {m.account_id: m.name for m in found.staff}},
    )


async def _staff_access_submit(
    state: State,
    request: Request,
    clients: Clients,
    staff: StaffLinking,
    principal: Principal,
    account_id: str,
    disabled: bool,
) -> Response[Any]:
    member = await flows.set_staff_access(
        clients, get_auth(state), staff, principal, checked_id(account_id), disabled=disabled
    )
    notice = flash(request, "staff_disabled" if disabled else "staff_enabled", staff=member.account_id)
    return redirect("/staff", cookies=[notice])


@post(
    "/staff/{account_id:str}/disable",
    include_in_schema=False,
    guards=ADMINS,
    status_code=200,
    operation_id="page_staff_disable",
)
async def staff_disable_submit(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    account_id: str,
) -> Response[Any]:
    """They are signed out on every replica before the answer, and cannot sign in."""
    return await _staff_access_submit(state, request, clients, staff, principal, account_id, True)


@post(
    "/staff/{account_id:str}/enable",
    include_in_schema=False,
    guards=ADMINS,
    status_code=200,
    operation_id="page_staff_enable",
)
async def staff_enable_submit(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    account_id: str,
) -> Response[Any]:
    """They may sign in again with their old password."""
    return await _staff_access_submit(state, request, clients, staff, principal, account_id, False)


ROUTES = [
    class_page,
    invite_page,
    invite_submit,
    remove_page,
    remove_submit,
    remove_all_submit,
    codes_page,
    codes_submit,
    withdraw_submit,
    invite_contacts_submit,
    audit_page,
    bars_page,
    bar_submit,
    lift_page,
    lift_submit,
    settings_page,
    settings_submit,
    staff_page,
    staff_disable_submit,
    staff_enable_submit,
]
