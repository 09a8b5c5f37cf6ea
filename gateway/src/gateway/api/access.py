"""Staff managing parents' access: inviting by email, removing a parent from one pupil or from
all of them at once, a parent's pupils, and a pupil's audit trail.

A removal takes effect on every replica before the answer: this replica's links cache forgets
the parent at once, and the answer waits (briefly) until linking's `linking.link.removed.v1` of
each ended link is back, so that every other replica has been sent it too.
"""

from __future__ import annotations

from litestar import delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import SECURITY, admins_only, staff_only
from gateway.caches.links import get_links_cache
from gateway.clients import StaffLinking
from gateway.errors import checked_id
from gateway.models import AuditRow, Child, Invitation
from gateway.openapi import error_responses

TAGS = ["staff"]
STAFF = [staff_only]
# The audit trail is for school admins (and the trust's admins), as the settings are.
ADMINS = [admins_only]


class InviteBody(BaseModel):
    """Whom to invite."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=254, examples=["mary@example.org"])


@post(
    "/pupils/{pupil_id:str}/invitations",
    status_code=201,
    summary="Invite a parent by email",
    operation_id="invite_parent",
    responses=error_responses(401, 404, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def invite_parent(
    staff: NamedDependency[StaffLinking], pupil_id: FromPath[str], data: JSONBody[InviteBody]
) -> Invitation:
    """The invitation email goes out with its own single-use code; an earlier open invitation
    to the same address for this pupil stops working."""
    return Invitation.of(await staff.invite(checked_id(pupil_id), data.email))


class RemoveBody(BaseModel):
    """Why staff removed the parent (optional), kept as the audit row's `reason`."""

    model_config = ConfigDict(extra="ignore")

    reason: str = Field(default="", max_length=500, examples=["court order received"])


# A reason of 500 characters JSON-escaped at worst, with room to spare.
REMOVE_MAX_BODY = 8 * 1024


@delete(
    "/pupils/{pupil_id:str}/parents/{parent_id:str}",
    status_code=204,
    summary="Remove a parent's access to one pupil",
    operation_id="remove_parent",
    description="The body is optional: `{reason}` (up to 500 characters) is kept as the audit row's `reason`.",
    request_max_body_size=REMOVE_MAX_BODY,
    responses=error_responses(401, 404, 413, 422, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def remove_parent(
    state: State,
    staff: NamedDependency[StaffLinking],
    pupil_id: FromPath[str],
    parent_id: FromPath[str],
    data: JSONBody[RemoveBody | None] = None,
) -> None:
    """That parent loses this pupil, and only this pupil."""
    reason = data.reason.strip() if data is not None else ""
    async with get_links_cache(state).removals() as removed:
        await staff.remove_parent(checked_id(pupil_id), checked_id(parent_id), reason)
        removed.expect(parent_id, pupil_id)


@get(
    "/parents/{parent_id:str}/pupils",
    summary="A parent's pupils at the caller's schools",
    operation_id="list_parent_pupils",
    responses=error_responses(401, 404, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def parent_pupils(staff: NamedDependency[StaffLinking], parent_id: FromPath[str]) -> list[Child]:
    """Every pupil of the caller's school (trust) this parent is linked to."""
    return [Child.of(p) for p in await staff.parent_pupils(checked_id(parent_id))]


@delete(
    "/parents/{parent_id:str}/pupils",
    status_code=204,
    summary="Remove a parent from all their pupils here",
    operation_id="remove_parent_everywhere",
    responses=error_responses(401, 404, 503),
    guards=STAFF,
    tags=TAGS,
    security=SECURITY,
)
async def remove_parent_everywhere(
    state: State, staff: NamedDependency[StaffLinking], parent_id: FromPath[str]
) -> None:
    """The parent loses every pupil of the caller's school (trust) at once, one audit row each."""
    async with get_links_cache(state).removals() as removed:
        for pupil_id in await staff.remove_parent_everywhere(checked_id(parent_id)):
            removed.expect(parent_id, pupil_id)


@get(
    "/pupils/{pupil_id:str}/audit",
    summary="A pupil's audit trail",
    operation_id="get_pupil_audit",
    responses=error_responses(401, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def pupil_audit(staff: NamedDependency[StaffLinking], pupil_id: FromPath[str]) -> list[AuditRow]:
    """Every invitation, redemption, activation, removal, bar and code regeneration, oldest first."""
    return [AuditRow.of(e) for e in await staff.audit(checked_id(pupil_id))]


ROUTES = [invite_parent, remove_parent, parent_pupils, remove_parent_everywhere, pupil_audit]
