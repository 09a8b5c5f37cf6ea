"""Staff at scale, under `/api/v1`: withdrawing invitations, inviting many parents at once,
codes for the pupils who lack one, single-pupil cards, uptake, the school's audit.

Like the other staff routes, linking answers within the caller's `StaffScope`: anything outside
it is 404 `not_found`, the same as an id that does not exist.
"""

from __future__ import annotations

from litestar import delete
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.auth import SECURITY, staff_only
from gateway.clients import StaffLinking
from gateway.errors import checked_id
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


ROUTES = [withdraw_invitation]
