"""Staff at scale, under `/api/v1`: withdrawing invitations, inviting many parents at once,
codes for the pupils who lack one, single-pupil cards, uptake, the school's audit.

Like the other staff routes, linking answers within the caller's `StaffScope`: anything outside
it is 404 `not_found`, the same as an id that does not exist.
"""

from __future__ import annotations

from litestar import delete, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from contracts import linking as contract
from gateway.auth import SECURITY, staff_only
from gateway.clients import StaffLinking
from gateway.errors import ApiError, checked_id
from gateway.openapi import error_responses

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


ROUTES = [withdraw_invitation, invite_class_parents]
