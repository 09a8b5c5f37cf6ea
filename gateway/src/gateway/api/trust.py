"""Staff at scale, under `/api/v1`: withdrawing invitations, inviting many parents at once,
codes for the pupils who lack one, single-pupil cards, uptake, the school's audit.

Like the other staff routes, linking answers within the caller's `StaffScope`: anything outside
it is 404 `not_found`, the same as an id that does not exist.
"""

from __future__ import annotations

from typing import Any, Literal

from litestar import MediaType, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import FromPath, FromQuery, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from contracts import linking as contract
from gateway import uptake as figures
from gateway.auth import SECURITY, staff_only
from gateway.clients import Clients, StaffLinking
from gateway.errors import ApiError, checked_id
from gateway.openapi import TEXT, content_types, error_responses

TAGS = ["staff"]
STAFF = [staff_only]


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


ROUTES = [withdraw_invitation, invite_class_parents, get_uptake]
