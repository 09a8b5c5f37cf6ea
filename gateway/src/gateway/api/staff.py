"""Staff routes under `/api/v1`: classes and their pupils, printed codes, QR codes and class
sheets, school settings.

Linking answers them within the caller's `StaffScope` (the `staff` dependency,
`gateway.clients.StaffLinking`): a teacher or school admin sees their school, a trust admin the
trust's schools. Anything outside it answers 404 `not_found`, exactly like an id that does not
exist, and so does every route for a caller who is not staff. Parents' names and addresses are
identity's, asked for in one batch per answer (`gateway.flows.pupil_rows`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from typing import Any, Literal

from litestar import MediaType, Request, Response, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from pydantic import BaseModel, ConfigDict

from contracts import identity
from contracts import linking as contract
from contracts.identity import Principal
from gateway import flows, paging
from gateway.auth import SECURITY, admins_only, staff_only
from gateway.caches.sessions import get_auth
from gateway.clients import Clients, StaffLinking
from gateway.errors import ApiError, checked_id, not_found
from gateway.models import CreatedCodes, NewCode, PupilRow
from gateway.openapi import BINARY, TEXT, content_types, error_responses

TAGS = ["staff"]
# A 20,000-character policy JSON-escaped at worst, with room for the other fields; a bigger
# body could not travel to linking over NATS anyway.
SETTINGS_MAX_BODY = 256 * 1024
PDF = "application/pdf"
SVG = "image/svg+xml"
PNG = "image/png"


# -- documents ---------------------------------------------------------------------------------


def _safe_filename(name: str, default: str) -> str:
    # Linking already cleans it; a header is no place to trust another part with.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or default


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def sheet_csp(page: str) -> str:
    """A Content-Security-Policy letting the sheet's own print CSS and Print button work, nothing else."""
    # The gateway's default policy forbids inline style and script, which would leave the
    # sheet unstyled for printing; allowing exactly the blocks linking wrote (by hash) keeps
    # anything else out. Names in the page are escaped, so they cannot add blocks or handlers.
    styles = re.findall(r"<style[^>]*>(.*?)</style>", page, re.S)
    handlers = re.findall(r'\son[a-z]+="([^"]*)"', page)
    style_src = " ".join(dict.fromkeys(map(_csp_hash, styles))) or "'none'"
    script_src = (
        "'unsafe-hashes' " + " ".join(dict.fromkeys(_csp_hash(html.unescape(h)) for h in handlers))
        if handlers
        else "'none'"
    )
    return (
        f"default-src 'none'; object-src 'none'; style-src {style_src}; script-src {script_src}; img-src data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def document_response(
    doc: contract.Document, media_type: str, *, attachment: bool = False, csp: str | None = None
) -> Response[bytes]:
    """A rendered document as the response body, never kept by a browser or proxy."""
    # no-store: these pages carry children's names and live codes.
    headers = {"Cache-Control": "no-store"}
    disposition = "attachment" if attachment else "inline"
    headers["Content-Disposition"] = f'{disposition}; filename="{_safe_filename(doc.filename, "document")}"'
    if csp is not None:
        headers["Content-Security-Policy"] = csp
    return Response(content=doc.body(), media_type=media_type, headers=headers)


# -- routes ---------------------------------------------------------------------------------

STAFF = [staff_only]
ADMINS = [admins_only]


class CodesBody(BaseModel):
    """Optional: which pupils of the class get a new code."""

    model_config = ConfigDict(extra="ignore")

    only_missing: bool = False


@get(
    "/classes",
    summary="The caller's classes",
    operation_id="list_classes",
    description="`school_id` narrows to one school of the caller's, `q` to the classes whose name holds it (any "
    "case). `limit` (default 100, at most 500) and `cursor`: the next page's address is in the `Link` header "
    '(`rel="next"`, RFC 8288); none after the last page.',
    responses=error_responses(401, 404, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def list_classes(
    request: Request,
    staff: NamedDependency[StaffLinking],
    school_id: FromQuery[str | None] = None,
    q: FromQuery[str | None] = None,
    limit: FromQuery[int | None] = None,
    cursor: FromQuery[str | None] = None,
) -> Response[list[contract.ClassSummary]]:
    """Every class of the caller's school (a trust admin: the trust's schools) with its pupil
    counts, by school then class name, a page at a time (`Link: <…>; rel="next"`)."""
    if q is not None and len(q) > 200:
        raise ApiError(422, "validation_error", "q: at most 200 characters.", extra={"errors": []})
    reply = await staff.classes_page(
        school_id=None if school_id is None else checked_id(school_id),
        q=q.strip() if q and q.strip() else None,
        limit=paging.limit_of(limit),
        offset=paging.position_of(cursor),
    )
    return Response(content=reply.classes, headers=paging.next_link(request, reply.next_offset))


@get(
    "/classes/{class_id:str}/pupils",
    summary="A class's pupils with their parents and invitations",
    operation_id="list_class_pupils",
    responses=error_responses(401, 404, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def class_pupils(
    clients: NamedDependency[Clients], staff: NamedDependency[StaffLinking], class_id: FromPath[str]
) -> list[PupilRow]:
    """Each pupil with the expiry of their printed code, their parents (names from identity) and invitations."""
    return await flows.pupil_rows(clients.identity, await staff.class_pupils(checked_id(class_id)))


@post(
    "/classes/{class_id:str}/codes",
    status_code=201,
    summary="Create QR codes for a class",
    operation_id="create_class_codes",
    description='The body is optional: `{"only_missing": true}` makes codes only for the pupils without a live '
    "printed code, and every other pupil's printed code keeps working.",
    request_max_body_size=1024,
    responses=error_responses(401, 403, 404, 413, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def create_class_codes(
    staff: NamedDependency[StaffLinking], class_id: FromPath[str], data: JSONBody[CodesBody | None] = None
) -> CreatedCodes:
    """Every pupil of the class gets a new printed code; their earlier codes stop working at once.
    With `{"only_missing": true}`, only the pupils without a live printed code get one (a pupil
    who joined mid-year, one whose code expired); the others' printed codes keep working, a pupil
    in two classes keeping the card the other class printed."""
    only_missing = data.only_missing if data is not None else False
    return CreatedCodes.of(await staff.create_class_codes(checked_id(class_id), only_missing=only_missing))


@post(
    "/pupils/{pupil_id:str}/code",
    status_code=201,
    summary="A new printed code for one pupil",
    operation_id="create_pupil_code",
    responses=error_responses(401, 403, 404, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def create_pupil_code(staff: NamedDependency[StaffLinking], pupil_id: FromPath[str]) -> NewCode:
    """The pupil gets a new printed code; the earlier one stops working at once."""
    reply = await staff.create_pupil_code(checked_id(pupil_id))
    if not reply.codes:
        raise not_found()
    return NewCode(reply.codes[0].pupil_id, reply.codes[0].expires_at)


def sheet_response(doc: Any, format: str) -> Response[bytes]:  # noqa: A002 - the query parameter's name
    """A sheet of cards as asked for: an A4 PDF attachment, or the HTML page with print CSS."""
    if format == "pdf":
        return document_response(doc, PDF, attachment=True)
    return document_response(doc, MediaType.HTML, csp=sheet_csp(doc.text or ""))


@get(
    "/classes/{class_id:str}/qr-sheet",
    summary="The class's printable QR code sheet",
    operation_id="get_class_qr_sheet",
    description="An HTML page with print CSS, one cut-out card per pupil; `?format=pdf` answers the same as an "
    "A4 PDF (`application/pdf`, as an attachment). 404 `no_code` before QR codes were created.",
    media_type=MediaType.HTML,
    operation_class=content_types(200, {MediaType.HTML.value: TEXT, PDF: BINARY}),
    responses=error_responses(401, 404, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def class_sheet(
    staff: NamedDependency[StaffLinking],
    class_id: FromPath[str],
    format: FromQuery[Literal["html", "pdf"]] = "html",  # noqa: A002 - the query parameter's name
) -> Response[bytes]:
    """One card per pupil with their name, class, school, QR code, typed code and its expiry."""
    return sheet_response(await staff.class_sheet(checked_id(class_id), format), format)


@get(
    "/pupils/{pupil_id:str}/qr-sheet",
    summary="One pupil's printable QR card",
    operation_id="get_pupil_qr_sheet",
    description="The pupil's one cut-out card (name, class, school, QR code, typed code and its expiry) as an HTML "
    "page with print CSS; `?format=pdf` answers an A4 PDF (`application/pdf`, as an attachment). 404 `no_code` "
    "before the pupil has a printed code.",
    media_type=MediaType.HTML,
    operation_class=content_types(200, {MediaType.HTML.value: TEXT, PDF: BINARY}),
    responses=error_responses(401, 404, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def pupil_sheet(
    staff: NamedDependency[StaffLinking],
    pupil_id: FromPath[str],
    format: FromQuery[Literal["html", "pdf"]] = "html",  # noqa: A002 - the query parameter's name
) -> Response[bytes]:
    """The card printed for a lost one, or for a pupil who joined after the class's sheet."""
    return sheet_response(await staff.pupil_sheet(checked_id(pupil_id), format), format)


@get(
    "/pupils/{pupil_id:str}/qr.svg",
    summary="A pupil's printed code as an SVG QR code",
    operation_id="get_pupil_qr_svg",
    description="The QR code holds `PORTAL_PUBLIC_URL/link/<CODE>`. 404 `no_code` before QR codes were created.",
    media_type=SVG,
    operation_class=content_types(200, {SVG: TEXT}),
    responses=error_responses(401, 404, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def pupil_qr_svg(staff: NamedDependency[StaffLinking], pupil_id: FromPath[str]) -> Response[bytes]:
    """The pupil's live printed code as an SVG image."""
    return document_response(await staff.pupil_qr(checked_id(pupil_id), "svg"), SVG)


@get(
    "/pupils/{pupil_id:str}/qr.png",
    summary="A pupil's printed code as a PNG QR code",
    operation_id="get_pupil_qr_png",
    description="The QR code holds `PORTAL_PUBLIC_URL/link/<CODE>`. 404 `no_code` before QR codes were created.",
    media_type=PNG,
    operation_class=content_types(200, {PNG: BINARY}),
    responses=error_responses(401, 404, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def pupil_qr_png(staff: NamedDependency[StaffLinking], pupil_id: FromPath[str]) -> Response[bytes]:
    """The pupil's live printed code as a PNG image."""
    return document_response(await staff.pupil_qr(checked_id(pupil_id), "png"), PNG)


@get(
    "/schools/{school_id:str}/settings",
    summary="A school's settings",
    operation_id="get_school_settings",
    description="School admins of the school and trust admins of its trust; anyone else: 404.",
    responses=error_responses(401, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def get_school_settings(
    staff: NamedDependency[StaffLinking], school_id: FromPath[str]
) -> contract.SchoolSettings:
    """Carers per printed code, code and invitation lifetimes, the acceptable-use policy, link templates."""
    return await staff.school_settings(checked_id(school_id))


@put(
    "/schools/{school_id:str}/settings",
    summary="Change a school's settings",
    operation_id="update_school_settings",
    description=(
        "The fields given change, the others stay (read-only fields echoed from a GET are ignored). Limits: "
        + ", ".join(f"`{k}` {lo}-{hi}" for k, (lo, hi) in contract.SETTINGS_LIMITS.items())
        + f"; `aup_text` up to {contract.AUP_MAX_CHARS} characters; the `*_url` templates are http(s) URLs "
        "containing `{pupil_id}`. A bad field: 422 `validation_error` naming each one, and nothing changes."
    ),
    request_max_body_size=SETTINGS_MAX_BODY,
    responses=error_responses(401, 403, 404, 413, 422, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def put_school_settings(
    staff: NamedDependency[StaffLinking], school_id: FromPath[str], data: JSONBody[dict[str, Any]]
) -> contract.SchoolSettings:
    """Validated by linking (a refusal names each field: `gateway.errors.RPC_ERRORS_BY_REQUEST`);
    answers the settings as they now are."""
    return await staff.update_school_settings(checked_id(school_id), data)


# -- staff accounts --------------------------------------------------------------------------------


@get(
    "/staff",
    summary="The members of staff an admin may disable",
    operation_id="list_staff",
    description="A school admin: the staff of their school; a trust admin: the staff of the trust's schools and "
    "its trust admins. Disabled ones included (`disabled`). Anyone else: 404.",
    responses=error_responses(401, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def list_staff(
    clients: NamedDependency[Clients], staff: NamedDependency[StaffLinking], principal: NamedDependency[Principal]
) -> list[identity.StaffMember]:
    """Each member of staff with their role, school or trust, and whether they are disabled."""
    return (await flows.staff_of_scope(clients, staff, principal)).staff


async def _set_access(
    request: Request, clients: Clients, staff: StaffLinking, principal: Principal, account_id: str, disabled: bool
) -> identity.StaffMember:
    return await flows.set_staff_access(
        clients, get_auth(request.app.state), staff, principal, checked_id(account_id), disabled=disabled
    )


@post(
    "/staff/{account_id:str}/disable",
    status_code=200,
    summary="Disable a member of staff",
    operation_id="disable_staff",
    description="Every session of theirs ends, on every gateway replica by the time this answers, and signing "
    "in fails as with a wrong password (401 `invalid_credentials`); no password reset email is sent to them. "
    "Their password is kept for `enable`. Staff outside the caller's scope (see `GET /staff`) and unknown ids: "
    "404. The caller's own account: 403 `forbidden`.",
    responses=error_responses(401, 403, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def disable_staff(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    account_id: FromPath[str],
) -> identity.StaffMember:
    """The member of staff as they now are (`disabled` true)."""
    return await _set_access(request, clients, staff, principal, account_id, True)


@post(
    "/staff/{account_id:str}/enable",
    status_code=200,
    summary="Enable a disabled member of staff again",
    operation_id="enable_staff",
    description="They sign in with their old password again. The same scope as `disable`: anyone else, 404; "
    "the caller's own account, 403 `forbidden`.",
    responses=error_responses(401, 403, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def enable_staff(
    request: Request,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    principal: NamedDependency[Principal],
    account_id: FromPath[str],
) -> identity.StaffMember:
    """The member of staff as they now are (`disabled` false)."""
    return await _set_access(request, clients, staff, principal, account_id, False)


ROUTES = [
    list_classes,
    class_pupils,
    create_class_codes,
    create_pupil_code,
    class_sheet,
    pupil_sheet,
    pupil_qr_svg,
    pupil_qr_png,
    get_school_settings,
    put_school_settings,
    list_staff,
    disable_staff,
    enable_staff,
]
