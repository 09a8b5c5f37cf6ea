"""Staff pages for running it at scale: uptake with charts a head teacher would put in a
governors' report (SVG drawn here, no script) and its CSV download."""

from __future__ import annotations

import csv
import io
from typing import Any
from urllib.parse import quote, urlencode

from litestar import Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Template

from contracts import linking as contract
from contracts.identity import Principal
from contracts.kit.i18n import N_
from contracts.kit.rpc import RpcError
from gateway import paging
from gateway import uptake as figures
from gateway.auth import admins_only, staff_only
from gateway.clients import Clients, StaffLinking
from gateway.errors import checked_id
from gateway.i18n import page_language
from gateway.pages.common import as_api_error, field_errors_from, flash, redirect, render
from gateway.pages.staff_pages import AUDIT_ACTIONS, setting_errors, settings_from_form

STAFF = [staff_only]
ADMINS = [admins_only]
BAR_WIDTH = 360  # px of a full bar


def _share(part: int, whole: int) -> int:
    """A whole percentage (0 of 0 is 0 %)."""
    return round(100 * part / whole) if whole else 0


def chart_rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row's figures with the bar lengths the SVG draws."""
    out = []
    key = "school_id" if found["scope"] == "trust" else "class_id"
    for row in found["rows"]:
        linked = _share(row["pupils_with_linked_parent"], row["pupils"])
        active = _share(row["parents_active_30d"], row["parents_linked"])
        out.append(
            {
                **row,
                "id": row[key],
                "linked_share": linked,
                "active_share": active,
                "linked_px": BAR_WIDTH * linked // 100,
                "active_px": BAR_WIDTH * active // 100,
            }
        )
    return out


@get("/uptake", include_in_schema=False, guards=STAFF, operation_id="page_uptake")
async def uptake_page(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    school_id: FromQuery[str | None] = None,
) -> Template:
    """The caller's uptake (a trust admin: a row per school, each opening the school's classes)."""
    sid = None if school_id is None else checked_id(school_id)
    found = await figures.uptake(clients.identity, staff, school_id=sid, class_id=None)
    csv_href = "/api/v1/uptake?format=csv" + (f"&school_id={sid}" if sid else "")
    return render(
        request,
        "pages/uptake.html",
        principal=principal,
        found=found,
        rows=chart_rows(found),
        linked_share=_share(found["pupils_with_linked_parent"], found["pupils"]),
        active_share=_share(found["parents_active_30d"], found["parents_linked"]),
        bar_width=BAR_WIDTH,
        csv_href=csv_href,
        school_id=sid,
    )


# -- inviting from a list -------------------------------------------------------------------------

LIST_MAX_BYTES = 1024 * 1024
REASONS = {
    "invalid_email": N_("not an email address"),
    "unknown_pupil": N_("no such pupil at this school"),
    "duplicate": N_("the same pupil and address again"),
    "already_invited": N_("already invited, waiting for an answer"),
    "already_linked": N_("the pupil already has a linked parent"),
    "barred": N_("this address cannot be invited for this pupil"),
    "too_many_invitations": N_("the pupil has 10 invitations waiting already"),
}


def parse_list(text: str) -> list[tuple[str, str]]:
    """`pupil_id,email` rows, with or without a header naming those columns (in any order)."""
    rows = [r for r in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if any(c.strip() for c in r)]
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    if "pupil_id" in head and "email" in head:
        p, e = head.index("pupil_id"), head.index("email")
        rows = rows[1:]
    else:
        p, e = 0, 1
    return [(r[p].strip() if p < len(r) else "", r[e].strip() if e < len(r) else "") for r in rows]


async def _class_name(staff: StaffLinking, class_id: str) -> Any:
    return await staff.class_pupils(checked_id(class_id))


@get("/classes/{class_id:str}/invitations", include_in_schema=False, guards=STAFF, operation_id="page_invitations")
async def invitations_page(
    request: Request, staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal], class_id: str
) -> Template:
    """Paste or upload a list of pupils and addresses to invite."""
    klass = await _class_name(staff, class_id)
    return render(request, "pages/invitations.html", principal=principal, klass=klass, result=None, problem=None)


@post(
    "/classes/{class_id:str}/invitations",
    include_in_schema=False,
    guards=STAFF,
    status_code=200,
    request_max_body_size=LIST_MAX_BYTES + 64 * 1024,
    operation_id="page_invitations_submit",
)
async def invitations_submit(
    request: Request, staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal], class_id: str
) -> Template:
    """Send them; the page shows how many went and each row skipped with its reason."""
    klass = await _class_name(staff, class_id)
    form = await request.form()
    text = str(form.get("list") or "")
    upload = form.get("file")
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read(LIST_MAX_BYTES + 1)
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return render(
                request,
                "pages/invitations.html",
                principal=principal,
                klass=klass,
                result=None,
                problem=N_('The file is not UTF-8 text: save it as "CSV UTF-8".'),
                status=400,
            )
    rows = parse_list(text)
    problem: str | None = None
    if not rows:
        problem = N_("Paste or upload at least one row: pupil_id,email.")
    elif len(rows) > contract.MAX_BULK_INVITATIONS:
        problem = f"{len(rows):,} rows: at most {contract.MAX_BULK_INVITATIONS:,} at once. Split the list."
    if problem:
        return render(
            request,
            "pages/invitations.html",
            principal=principal,
            klass=klass,
            result=None,
            problem=problem,
            status=400,
        )
    reply = await staff.bulk_invite(
        klass.class_id,
        from_contacts=False,
        rows=[contract.InvitationRow(pupil_id=p[:320], email=e[:320]) for p, e in rows],
    )
    return render(
        request, "pages/invitations.html", principal=principal, klass=klass, result=reply, reasons=REASONS, problem=None
    )


# -- a school's audit ------------------------------------------------------------------------------


@get("/schools/{school_id:str}/audit", include_in_schema=False, guards=ADMINS, operation_id="page_school_audit")
async def school_audit_page(
    request: Request,
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    school_id: str,
) -> Template:
    """The school's audit rows between two dates, 100 a page, and the same as CSV."""
    from gateway.api.trust import _when  # the API's reading of dates and times, to the letter

    query = request.query_params
    start_text, end_text = (query.get("from") or "")[:40], (query.get("to") or "")[:40]
    start, end = _when("from", start_text, end=False), _when("to", end_text, end=True)
    cursor = query.get("cursor") or ""
    after = int(cursor) if cursor.isdigit() and len(cursor) < 18 else 0
    sid = checked_id(school_id)
    page = await staff.school_audit(sid, from_at=start, to_at=end, after_id=after, limit=paging.DEFAULT_LIMIT)
    dates = {k: v for k, v in (("from", start_text), ("to", end_text)) if v}
    next_href = (
        f"/schools/{quote(sid)}/audit?" + urlencode({**dates, "cursor": page.next_after})
        if page.next_after is not None
        else None
    )
    return render(
        request,
        "pages/school_audit.html",
        principal=principal,
        school_id=sid,
        entries=page.entries,
        actions=AUDIT_ACTIONS,
        start=start_text,
        end=end_text,
        next_href=next_href,
        csv_href=f"/api/v1/schools/{quote(sid)}/audit?" + urlencode({**dates, "format": "csv"}),
    )


# -- trust settings --------------------------------------------------------------------------------

TRUST_LEDE = N_("Every school of the trust takes these values for each setting it has not changed itself.")


@get("/trusts/{trust_id:str}/settings", include_in_schema=False, guards=ADMINS, operation_id="page_trust_settings")
async def trust_settings_page(
    request: Request, staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal], trust_id: str
) -> Template:
    """The trust's defaults, in the school settings' form."""
    answer = await staff.trust_settings(checked_id(trust_id))
    return render(
        request,
        "pages/settings.html",
        principal=principal,
        school_id="",
        form_action=f"/trusts/{quote(trust_id)}/settings",
        heading=N_("Trust settings"),
        lede=TRUST_LEDE,
        values=answer.model_dump(),
        errors={},
    )


@post(
    "/trusts/{trust_id:str}/settings",
    include_in_schema=False,
    guards=ADMINS,
    status_code=200,
    operation_id="page_trust_settings_submit",
)
async def trust_settings_submit(
    request: Request, staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal], trust_id: str
) -> Response[Any]:
    """Save the trust's defaults; linking checks them as a school's."""
    data = settings_from_form(await request.form())
    try:
        await staff.update_trust_settings(checked_id(trust_id), data)
    except RpcError as exc:
        if as_api_error(exc).status_code != 422:
            raise
        errors, detail = field_errors_from(exc)
        errors = setting_errors(errors, page_language(request, principal))
        return render(
            request,
            "pages/settings.html",
            principal=principal,
            school_id="",
            form_action=f"/trusts/{quote(trust_id)}/settings",
            heading=N_("Trust settings"),
            lede=TRUST_LEDE,
            values=data,
            errors=errors,
            message=None if errors else detail,
            status=422,
        )
    return redirect(f"/trusts/{quote(trust_id)}/settings", cookies=[flash(request, "settings_saved")])


ROUTES = [
    uptake_page,
    invitations_page,
    invitations_submit,
    school_audit_page,
    trust_settings_page,
    trust_settings_submit,
]
