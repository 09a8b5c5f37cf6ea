"""Staff routes under `/api/v1`: classes and their pupils, printed codes, QR codes and class
sheets, school settings.

Linking answers them (`contracts.linking`) within the caller's `StaffScope`: a teacher or school
admin sees their school, a trust admin the trust's schools. Anything outside it answers 404
`not_found`, exactly like an id that does not exist, and so does every route for a caller who
is not staff. Parents' names and addresses come from identity, asked in one batch per answer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from litestar import MediaType, Response, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from msgspec import Struct

from contracts import identity
from contracts import linking as contract
from contracts.identity import Principal
from contracts.kit.rpc import RpcError
from gateway.auth import SECURITY, require_role
from gateway.errors import ApiError
from gateway.openapi import error_responses
from gateway.rpc import ask

TAGS = ["staff"]
STAFF_ROLES = ("teacher", "school_admin", "trust_admin")
SETTINGS_ROLES = ("school_admin", "trust_admin")
MAX_ID_LENGTH = 128  # linking's requests refuse longer ids
CONTACTS_BATCH = 1000  # identity's ContactsRequest takes at most this many ids
# A 20,000-character policy JSON-escaped at worst, with room for the other fields; a bigger
# body could not travel to linking over NATS anyway.
SETTINGS_MAX_BODY = 256 * 1024

staff_only = require_role(*STAFF_ROLES)
settings_only = require_role(*SETTINGS_ROLES)


# -- answers ---------------------------------------------------------------------------------


class ClassRow(Struct):
    """One class of `GET /classes`."""

    class_id: str
    name: str
    school_id: str
    school_name: str
    pupil_count: int
    linked_pupil_count: int


class ParentRow(Struct):
    """A parent linked to a pupil; `name` and `email` are null if identity no longer knows them."""

    parent_id: str
    name: str | None
    email: str | None
    relationship: str
    status: Literal["awaiting_verification", "linked"]
    since: datetime


class InvitationRow(Struct):
    """An email invitation to link a pupil."""

    invitation_id: str
    email: str
    status: Literal["invited", "accepted", "expired", "revoked", "bounced"]
    sent_at: datetime
    expires_at: datetime


class PupilRow(Struct):
    """One pupil of `GET /classes/{class_id}/pupils`; `code_expires_at` is null before codes."""

    pupil_id: str
    first_name: str
    last_name: str
    code_expires_at: datetime | None
    parents: list[ParentRow]
    invitations: list[InvitationRow]


class NewCode(Struct):
    """A pupil's new printed code: only its expiry (the code itself is printed, never listed)."""

    pupil_id: str
    expires_at: datetime


class CreatedCodes(Struct):
    """The pupils that got a new printed code."""

    class_id: str | None
    codes: list[NewCode]


class SchoolSettingsAnswer(Struct):
    """A school's settings, defaults filled in."""

    school_id: str
    max_carers_per_code: int
    printed_code_days: int
    invitation_days: int
    aup_text: str
    aup_version: str
    homework_url: str
    files_url: str
    messages_url: str
    email_parent_on_removal: bool
    updated_at: datetime | None


# -- helpers ---------------------------------------------------------------------------------


def staff_scope(principal: Principal) -> contract.StaffScope:
    """What a member of staff may see: their school, or their trust's schools."""
    # Only the field that goes with the role counts, so a stray school_id on a trust admin's
    # account (or the reverse) widens nothing.
    if principal.role == "trust_admin":
        return contract.StaffScope(trust_ids=[principal.trust_id] if principal.trust_id else [])
    return contract.StaffScope(school_ids=[principal.school_id] if principal.school_id else [])


def not_found() -> ApiError:
    """404 `not_found`, the same for a missing id and one of another tenant."""
    return ApiError(404, "not_found", "Nothing was found at this address.")


def checked_id(value: str) -> str:
    """A path id linking can take; a longer one cannot exist, so it is not found."""
    if not value or len(value) > MAX_ID_LENGTH:
        raise not_found()
    return value


async def parent_contacts(state: State, parent_ids: Iterable[str]) -> dict[str, identity.Contact]:
    """Names and addresses of parents, by id, from identity: one request per thousand ids."""
    ids = list(dict.fromkeys(parent_ids))
    if not ids:
        return {}
    replies = await asyncio.gather(
        *(
            ask(state, identity.CONTACTS, identity.ContactsRequest(ids=ids[i : i + CONTACTS_BATCH]))
            for i in range(0, len(ids), CONTACTS_BATCH)
        )
    )
    return {c.id: c for reply in replies for c in reply.contacts}


async def pupil_rows(state: State, reply: contract.ClassPupilsReply) -> list[PupilRow]:
    """A class's pupils as the API answers them, parents' names and addresses filled in."""
    contacts = await parent_contacts(state, (p.parent_id for pupil in reply.pupils for p in pupil.parents))
    rows = []
    for pupil in reply.pupils:
        parents = []
        for link in pupil.parents:
            contact = contacts.get(link.parent_id)
            parents.append(
                ParentRow(
                    parent_id=link.parent_id,
                    name=contact.name if contact else None,
                    email=contact.email if contact else None,
                    relationship=link.relationship,
                    status=link.status,
                    since=link.since,
                )
            )
        invitations = [
            InvitationRow(
                invitation_id=i.invitation_id, email=i.email, status=i.status, sent_at=i.sent_at, expires_at=i.expires_at
            )
            for i in pupil.invitations
        ]
        rows.append(
            PupilRow(
                pupil_id=pupil.pupil_id,
                first_name=pupil.first_name,
                last_name=pupil.last_name,
                code_expires_at=pupil.code_expires_at,
                parents=parents,
                invitations=invitations,
            )
        )
    return rows


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
        "'unsafe-hashes' " + " ".join(dict.fromkeys(_csp_hash(html.unescape(h)) for h in handlers)) if handlers else "'none'"
    )
    return (
        f"default-src 'none'; style-src {style_src}; script-src {script_src}; img-src data:; "
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


def _invalid_settings(exc: RpcError) -> ApiError:
    errors = [f.model_dump() for f in exc.fields]
    detail = f"Some settings are invalid: {exc.detail}." if exc.detail else "Some settings are invalid."
    return ApiError(422, "validation_error", detail, extra={"errors": errors})


def _settings_answer(s: contract.SchoolSettings) -> SchoolSettingsAnswer:
    return SchoolSettingsAnswer(
        school_id=s.school_id,
        max_carers_per_code=s.max_carers_per_code,
        printed_code_days=s.printed_code_days,
        invitation_days=s.invitation_days,
        aup_text=s.aup_text,
        aup_version=s.aup_version,
        homework_url=s.homework_url,
        files_url=s.files_url,
        messages_url=s.messages_url,
        email_parent_on_removal=s.email_parent_on_removal,
        updated_at=s.updated_at,
    )


# -- routes ---------------------------------------------------------------------------------

_STAFF = {"guards": [staff_only], "tags": TAGS, "security": SECURITY}


@get("/classes", summary="The caller's classes", responses=error_responses(401, 404, 503), **_STAFF)
async def list_classes(state: State, principal: NamedDependency[Principal]) -> list[ClassRow]:
    """Every class of the caller's school (a trust admin: the trust's schools) with its pupil counts."""
    reply = await ask(
        state,
        contract.CLASSES,
        contract.ClassesRequest(scope=staff_scope(principal), actor_id=principal.account_id),
    )
    return [
        ClassRow(
            class_id=c.class_id,
            name=c.name,
            school_id=c.school_id,
            school_name=c.school_name,
            pupil_count=c.pupil_count,
            linked_pupil_count=c.linked_pupil_count,
        )
        for c in reply.classes
    ]


@get(
    "/classes/{class_id:str}/pupils",
    summary="A class's pupils with their parents and invitations",
    responses=error_responses(401, 404, 503),
    **_STAFF,
)
async def class_pupils(state: State, principal: NamedDependency[Principal], class_id: FromPath[str]) -> list[PupilRow]:
    """Each pupil with the expiry of their printed code, their parents (names from identity) and invitations."""
    reply = await ask(
        state,
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=staff_scope(principal), actor_id=principal.account_id, class_id=checked_id(class_id)),
    )
    return await pupil_rows(state, reply)


@post(
    "/classes/{class_id:str}/codes",
    status_code=201,
    summary="Create QR codes for a class",
    responses=error_responses(401, 403, 404, 503),
    **_STAFF,
)
async def create_class_codes(state: State, principal: NamedDependency[Principal], class_id: FromPath[str]) -> CreatedCodes:
    """Every pupil of the class gets a new printed code; their earlier codes stop working at once."""
    reply = await ask(
        state,
        contract.CREATE_CODES,
        contract.CreateCodesRequest(scope=staff_scope(principal), actor_id=principal.account_id, class_id=checked_id(class_id)),
    )
    return CreatedCodes(class_id=reply.class_id, codes=[NewCode(c.pupil_id, c.expires_at) for c in reply.codes])


@post(
    "/pupils/{pupil_id:str}/code",
    status_code=201,
    summary="A new printed code for one pupil",
    responses=error_responses(401, 403, 404, 503),
    **_STAFF,
)
async def create_pupil_code(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str]) -> NewCode:
    """The pupil gets a new printed code; the earlier one stops working at once."""
    reply = await ask(
        state,
        contract.CREATE_CODES,
        contract.CreateCodesRequest(scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id)),
    )
    if not reply.codes:
        raise not_found()
    return NewCode(reply.codes[0].pupil_id, reply.codes[0].expires_at)


@get(
    "/classes/{class_id:str}/qr-sheet",
    summary="The class's printable QR code sheet",
    description="An HTML page with print CSS, one cut-out card per pupil; `?format=pdf` answers the same as an "
    "A4 PDF (`application/pdf`, as an attachment). 404 `no_code` before QR codes were created.",
    media_type=MediaType.HTML,
    responses=error_responses(401, 404, 422, 503),
    **_STAFF,
)
async def class_sheet(
    state: State,
    principal: NamedDependency[Principal],
    class_id: FromPath[str],
    format: FromQuery[Literal["html", "pdf"]] = "html",  # noqa: A002 - the query parameter's name
) -> Response[bytes]:
    """One card per pupil with their name, class, school, QR code, typed code and its expiry."""
    doc = await ask(
        state,
        contract.CLASS_SHEET,
        contract.ClassSheetRequest(
            scope=staff_scope(principal), actor_id=principal.account_id, class_id=checked_id(class_id), format=format
        ),
    )
    if format == "pdf":
        return document_response(doc, "application/pdf", attachment=True)
    return document_response(doc, MediaType.HTML, csp=sheet_csp(doc.text or ""))


async def _pupil_qr(state: State, principal: Principal, pupil_id: str, fmt: Literal["svg", "png"]) -> contract.Document:
    return await ask(
        state,
        contract.PUPIL_QR,
        contract.PupilQrRequest(scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id), format=fmt),
    )


@get(
    "/pupils/{pupil_id:str}/qr.svg",
    summary="A pupil's printed code as an SVG QR code",
    description="The QR code holds `PORTAL_PUBLIC_URL/link/<CODE>`. 404 `no_code` before QR codes were created.",
    media_type="image/svg+xml",
    responses=error_responses(401, 404, 503),
    **_STAFF,
)
async def pupil_qr_svg(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str]) -> Response[bytes]:
    """The pupil's live printed code as an SVG image."""
    return document_response(await _pupil_qr(state, principal, pupil_id, "svg"), "image/svg+xml")


@get(
    "/pupils/{pupil_id:str}/qr.png",
    summary="A pupil's printed code as a PNG QR code",
    description="The QR code holds `PORTAL_PUBLIC_URL/link/<CODE>`. 404 `no_code` before QR codes were created.",
    media_type="image/png",
    responses=error_responses(401, 404, 503),
    **_STAFF,
)
async def pupil_qr_png(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str]) -> Response[bytes]:
    """The pupil's live printed code as a PNG image."""
    return document_response(await _pupil_qr(state, principal, pupil_id, "png"), "image/png")


_ADMIN = {"guards": [settings_only], "tags": TAGS, "security": SECURITY}


@get(
    "/schools/{school_id:str}/settings",
    summary="A school's settings",
    description="School admins of the school and trust admins of its trust; anyone else: 404.",
    responses=error_responses(401, 404, 503),
    **_ADMIN,
)
async def get_school_settings(
    state: State, principal: NamedDependency[Principal], school_id: FromPath[str]
) -> SchoolSettingsAnswer:
    """Carers per printed code, code and invitation lifetimes, the acceptable-use policy, link templates."""
    reply = await ask(
        state,
        contract.GET_SCHOOL_SETTINGS,
        contract.SchoolSettingsRequest(scope=staff_scope(principal), actor_id=principal.account_id, school_id=checked_id(school_id)),
    )
    return _settings_answer(reply)


@put(
    "/schools/{school_id:str}/settings",
    summary="Change a school's settings",
    description=(
        "The fields given change, the others stay (read-only fields echoed from a GET are ignored). Limits: "
        + ", ".join(f"`{k}` {lo}-{hi}" for k, (lo, hi) in contract.SETTINGS_LIMITS.items())
        + f"; `aup_text` up to {contract.AUP_MAX_CHARS} characters; the `*_url` templates are http(s) URLs "
        "containing `{pupil_id}`. A bad field: 422 `validation_error` naming each one, and nothing changes."
    ),
    request_max_body_size=SETTINGS_MAX_BODY,
    responses=error_responses(401, 403, 404, 413, 422, 503),
    **_ADMIN,
)
async def put_school_settings(
    state: State, principal: NamedDependency[Principal], school_id: FromPath[str], data: JSONBody[dict[str, Any]]
) -> SchoolSettingsAnswer:
    """Validated by linking; answers the settings as they now are."""
    try:
        reply = await ask(
            state,
            contract.UPDATE_SCHOOL_SETTINGS,
            contract.UpdateSchoolSettingsRequest(
                scope=staff_scope(principal), actor_id=principal.account_id, school_id=checked_id(school_id), settings=data
            ),
        )
    except RpcError as exc:
        if exc.code == contract.E_VALIDATION:
            raise _invalid_settings(exc) from None
        raise
    return _settings_answer(reply)


ROUTES = [
    list_classes,
    class_pupils,
    create_class_codes,
    create_pupil_code,
    class_sheet,
    pupil_qr_svg,
    pupil_qr_png,
    get_school_settings,
    put_school_settings,
]
