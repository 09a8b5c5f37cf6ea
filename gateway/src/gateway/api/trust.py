"""Staff at scale, under `/api/v1`: withdrawing invitations, inviting many parents at once,
codes for the pupils who lack one, single-pupil cards, uptake, the school's audit.

Like the other staff routes, linking answers within the caller's `StaffScope`: anything outside
it is 404 `not_found`, the same as an id that does not exist.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from litestar import MediaType, Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from pydantic import BaseModel, ConfigDict, Field

from contracts import linking as contract
from gateway import paging
from gateway import uptake as figures
from gateway.api.staff import SETTINGS_MAX_BODY
from gateway.auth import SECURITY, admins_only, staff_only
from gateway.clients import Clients, StaffLinking
from gateway.errors import ApiError, checked_id
from gateway.openapi import TEXT, content_types, error_responses

TAGS = ["staff"]
STAFF = [staff_only]
ADMINS = [admins_only]


@delete(
    "/invitations/{invitation_id:str}",
    status_code=204,
    summary="Withdraw an invitation",
    operation_id="withdraw_invitation",
    description="A pending invitation becomes `revoked` and its code stops working at once; withdrawing a revoked "
    "or expired one again changes nothing (204). An accepted invitation: 409 `already_accepted` (remove the "
    "parent instead). Another school's invitation: 404.",
    responses=error_responses(401, 404, 409, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def withdraw_invitation(staff: NamedDependency[StaffLinking], invitation_id: FromPath[str]) -> None:
    """The invitation's code stops working before this answers."""
    await staff.withdraw_invitation(checked_id(invitation_id))


class InvitationRowBody(BaseModel):
    """One invitation of a list: the pupil and the address (each checked row by row)."""

    model_config = ConfigDict(extra="ignore")

    pupil_id: str = Field(max_length=320)
    email: str = Field(max_length=320, examples=["mary@example.org"])


class BulkInviteBody(BaseModel):
    """`{"from_contacts": true}`, or `{"invitations": [{"pupil_id", "email"}, ...]}`."""

    model_config = ConfigDict(extra="ignore")

    from_contacts: bool = False
    invitations: list[InvitationRowBody] | None = None


class BulkInviteResult(BaseModel):
    """How many invitations were sent, and each row skipped with its reason."""

    sent: int
    skipped: list[contract.SkippedInvitation]


# 1,000 rows of the longest fields JSON-escaped, with room to spare; the row count is checked
# apart (413 naming it).
BULK_MAX_BODY = 1024 * 1024


@post(
    "/classes/{class_id:str}/invitations",
    status_code=201,
    summary="Invite many parents of a class",
    operation_id="invite_class_parents",
    description='`{"invitations": [{"pupil_id", "email"}]}` sends one invitation per row (at most '
    f'{contract.MAX_BULK_INVITATIONS:,} rows, else 413); `{{"from_contacts": true}}` invites every roster '
    "contact of every pupil of the class who has no linked parent and no pending invitation to that address. "
    "A row that cannot be sent is skipped with its reason (`invalid_email`, `unknown_pupil` for an unknown "
    "pupil or one of another school, `duplicate`, `already_invited`, `barred`, `too_many_invitations`); the "
    "others are sent.",
    request_max_body_size=BULK_MAX_BODY,
    responses=error_responses(401, 404, 413, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def invite_class_parents(
    staff: NamedDependency[StaffLinking], class_id: FromPath[str], data: JSONBody[BulkInviteBody]
) -> BulkInviteResult:
    """201 `{sent, skipped: [{pupil_id, email, reason}]}`."""
    rows = data.invitations or []
    if len(rows) > contract.MAX_BULK_INVITATIONS:
        raise ApiError(
            413,
            "payload_too_large",
            f"{len(rows):,} invitations in one request: at most {contract.MAX_BULK_INVITATIONS:,}; split the list",
        )
    if data.from_contacts == (data.invitations is not None):
        raise ApiError(
            422,
            "validation_error",
            "Give either invitations (a list of pupil_id and email) or from_contacts: true.",
            extra={"errors": [{"field": "invitations", "message": "give invitations or from_contacts, not both"}]},
        )
    reply = await staff.bulk_invite(
        checked_id(class_id),
        from_contacts=data.from_contacts,
        rows=[contract.InvitationRow(pupil_id=r.pupil_id, email=r.email) for r in rows],
    )
    return BulkInviteResult(sent=reply.sent, skipped=reply.skipped)


CSV = "text/csv"
_COUNT = Schema(type=OpenAPIType.INTEGER, minimum=0)
UPTAKE_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    required=["scope", *figures.COUNTS, "rows"],
    properties={
        "scope": Schema(type=OpenAPIType.STRING, enum=["trust", "school", "class"]),
        **dict.fromkeys(figures.COUNTS, _COUNT),
        "rows": Schema(
            type=OpenAPIType.ARRAY,
            description="A school (`school_id`, trust scope) or class (`class_id`, school scope): `name` and the counts",
            items=Schema(type=OpenAPIType.OBJECT, properties={"name": Schema(type=OpenAPIType.STRING)}),
        ),
    },
)


def csv_response(text: str, filename: str) -> Response[bytes]:
    """A CSV download (`text/csv`, first line the columns), never kept by a browser or proxy."""
    return Response(
        content=text.encode(),
        media_type=f"{CSV}; charset=utf-8",
        headers={"Cache-Control": "no-store", "Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _optional_id(value: str | None) -> str | None:
    return None if value is None else checked_id(value)


@get(
    "/uptake",
    summary="Uptake figures",
    operation_id="get_uptake",
    description="Pupils, pupils with a linked parent, pending and bounced invitations, linked parents, those seen "
    f"in the last {figures.ACTIVE_DAYS} days and those who never signed in: of the caller's whole scope (a trust "
    "admin's trust, with a row per school; a school's staff, their school with a row per class), or of "
    "`?school_id=` (a row per class) or `?class_id=`. `?format=csv` answers the rows and a total line as "
    "`text/csv`, the first line naming the columns. Outside the scope: 404.",
    operation_class=content_types(200, {MediaType.JSON.value: UPTAKE_SCHEMA, CSV: TEXT}),
    responses=error_responses(401, 404, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def get_uptake(
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    school_id: FromQuery[str | None] = None,
    class_id: FromQuery[str | None] = None,
    format: FromQuery[Literal["json", "csv"]] = "json",  # noqa: A002 - the query parameter's name
) -> Response[Any]:
    """`{scope, pupils, …, rows: [...]}`, or the same as CSV."""
    if school_id is not None and class_id is not None:
        raise ApiError(422, "validation_error", "Give school_id or class_id, not both.", extra={"errors": []})
    found = await figures.uptake(
        clients.identity, staff, school_id=_optional_id(school_id), class_id=_optional_id(class_id)
    )
    if format == "csv":
        return csv_response(figures.as_csv(found), "uptake.csv")
    return Response(content=found, media_type=MediaType.JSON, headers={"Cache-Control": "no-store"})


def _when(field: str, value: str | None, *, end: bool) -> datetime | None:
    """A date (the whole day: `to` ends after it) or an ISO 8601 time (UTC unless it says)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
            return day + timedelta(days=1) if end else day
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            422,
            "validation_error",
            f"Some fields are missing or invalid: {field}: a date (2026-12-01) or a time (2026-12-01T09:00:00Z).",
            extra={"errors": [{"field": field, "message": "a date or an ISO 8601 time"}]},
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


AUDIT_COLUMNS = ("at", "pupil_id", "actor", "action", "parent_id", "reason")
CSV_MAX_ROWS = 50_000


def _audit_row(e: contract.SchoolAuditEntry) -> dict[str, Any]:
    return {
        "at": e.at.isoformat(),
        "pupil_id": e.pupil_id,
        "actor": e.actor,
        "action": e.action,
        "parent_id": e.parent_id,
        "reason": e.reason,
    }


@get(
    "/schools/{school_id:str}/audit",
    summary="A school's audit trail",
    operation_id="get_school_audit",
    description="Every audit row of the school's pupils (as `GET /pupils/{id}/audit`, with `pupil_id`), oldest "
    "first; `from` and `to` are dates (the whole day) or ISO 8601 times, `from` inclusive, `to` exclusive for a "
    "time and inclusive for a date. `limit` (default 100, at most 500) and `cursor`: the next page's address is "
    'in the `Link` header (`rel="next"`). `?format=csv` answers up to 50,000 rows as `text/csv` (the first '
    "line naming the columns; a `Link` header when more remain). School admins of the school and trust admins "
    "of its trust; anyone else: 404.",
    operation_class=content_types(
        200,
        {
            MediaType.JSON.value: Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
            CSV: TEXT,
        },
    ),
    responses=error_responses(401, 404, 422, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def school_audit(
    request: Request,
    staff: NamedDependency[StaffLinking],
    school_id: FromPath[str],
    from_: Annotated[str | None, Parameter(query="from")] = None,
    to: FromQuery[str | None] = None,
    limit: FromQuery[int | None] = None,
    cursor: FromQuery[str | None] = None,
    format: FromQuery[Literal["json", "csv"]] = "json",  # noqa: A002 - the query parameter's name
) -> Response[Any]:
    """A page of `[{at, pupil_id, actor, action, parent_id, reason}]`, or CSV."""
    start, end = _when("from", from_, end=False), _when("to", to, end=True)
    if start and end and start >= end:
        raise ApiError(422, "validation_error", "from must come before to.", extra={"errors": []})
    after = paging.position_of(cursor)
    sid = checked_id(school_id)
    if format == "csv":
        rows: list[dict[str, Any]] = []
        next_after: int | None = after
        while next_after is not None and len(rows) < CSV_MAX_ROWS:
            page = await staff.school_audit(sid, from_at=start, to_at=end, after_id=next_after, limit=paging.MAX_LIMIT)
            rows.extend(_audit_row(e) for e in page.entries)
            next_after = page.next_after
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(AUDIT_COLUMNS)
        for row in rows:
            writer.writerow([figures.cell(row[c] or "") for c in AUDIT_COLUMNS])
        response = csv_response(out.getvalue(), "audit.csv")
        response.headers.update(paging.next_link(request, next_after))
        return response
    page = await staff.school_audit(sid, from_at=start, to_at=end, after_id=after, limit=paging.limit_of(limit))
    return Response(
        content=[_audit_row(e) for e in page.entries],
        media_type=MediaType.JSON,
        headers={"Cache-Control": "no-store", **paging.next_link(request, page.next_after)},
    )


@get(
    "/trusts/{trust_id:str}/settings",
    summary="A trust's defaults for its schools' settings",
    operation_id="get_trust_settings",
    description="The school settings' keys as the trust's defaults (the deployment's where the trust set none). "
    "A school takes the trust's value for each key it has not set itself. The trust's admins; anyone else: 404.",
    responses=error_responses(401, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def get_trust_settings(staff: NamedDependency[StaffLinking], trust_id: FromPath[str]) -> contract.TrustSettings:
    """The trust's defaults."""
    return await staff.trust_settings(checked_id(trust_id))


@put(
    "/trusts/{trust_id:str}/settings",
    summary="Change a trust's defaults for its schools",
    operation_id="update_trust_settings",
    description="The fields given change, the others stay; validated as a school's settings (422 naming each bad "
    "field, and nothing changes). Every school of the trust that has not set a changed key itself takes the new "
    "value at once. The trust's admins; anyone else: 404.",
    request_max_body_size=SETTINGS_MAX_BODY,
    responses=error_responses(401, 404, 413, 422, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def put_trust_settings(
    staff: NamedDependency[StaffLinking], trust_id: FromPath[str], data: JSONBody[dict[str, Any]]
) -> contract.TrustSettings:
    """The trust's defaults as they now are."""
    return await staff.update_trust_settings(checked_id(trust_id), data)


ROUTES = [withdraw_invitation, invite_class_parents, get_uptake, school_audit, get_trust_settings, put_trust_settings]
