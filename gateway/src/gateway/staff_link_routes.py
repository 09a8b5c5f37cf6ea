"""Staff managing parents' access: inviting by email, removing a parent from one pupil or from
all of them at once, a parent's pupils, and a pupil's audit trail.

A removal takes effect at once on this replica (its links cache forgets the parent before the
answer) and on every other as soon as linking's `linking.link.removed.v1` reaches it.
"""

from __future__ import annotations

from typing import Any

from litestar import delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from contracts import linking as contract
from contracts.identity import Principal
from gateway.auth import SECURITY
from gateway.caches.links import get_links_cache
from gateway.openapi import error_responses
from gateway.parent_routes import child_json
from gateway.rpc import ask
from gateway.staff_routes import checked_id, settings_only, staff_only, staff_scope

TAGS = ["staff"]
_STAFF = {"guards": [staff_only], "tags": TAGS, "security": SECURITY}
# The audit trail is for school admins (and the trust's admins), as the settings are.
_ADMIN = {"guards": [settings_only], "tags": TAGS, "security": SECURITY}


class InviteBody(BaseModel):
    """Whom to invite."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=254, examples=["mary@example.org"])


def _invitation(view: contract.InvitationView) -> dict[str, Any]:
    return {
        "invitation_id": view.invitation_id,
        "email": view.email,
        "status": view.status,
        "sent_at": view.sent_at.isoformat(),
        "expires_at": view.expires_at.isoformat(),
    }


@post("/pupils/{pupil_id:str}/invitations", status_code=201, summary="Invite a parent by email", responses=error_responses(401, 404, 422, 503), **_STAFF)
async def invite_parent(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str], data: JSONBody[InviteBody]) -> dict[str, Any]:
    """The invitation email goes out with its own single-use code; an earlier open invitation
    to the same address for this pupil stops working."""
    view = await ask(
        state,
        contract.INVITE,
        contract.InviteRequest(scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id), email=data.email),
    )
    return _invitation(view)


@delete("/pupils/{pupil_id:str}/parents/{parent_id:str}", status_code=204, summary="Remove a parent's access to one pupil", responses=error_responses(401, 404, 503), **_STAFF)
async def remove_parent(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str], parent_id: FromPath[str]) -> None:
    """That parent loses this pupil, and only this pupil."""
    await ask(
        state,
        contract.REMOVE_PARENT,
        contract.RemoveParentRequest(
            scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id), parent_id=checked_id(parent_id)
        ),
    )
    get_links_cache(state).forget(parent_id)


@get("/parents/{parent_id:str}/pupils", summary="A parent's pupils at the caller's schools", responses=error_responses(401, 404, 503), **_STAFF)
async def parent_pupils(state: State, principal: NamedDependency[Principal], parent_id: FromPath[str]) -> list[dict[str, Any]]:
    """Every pupil of the caller's school (trust) this parent is linked to."""
    reply = await ask(
        state,
        contract.PARENT_PUPILS,
        contract.StaffParentRequest(scope=staff_scope(principal), actor_id=principal.account_id, parent_id=checked_id(parent_id)),
    )
    return [child_json(p) for p in reply.pupils]


@delete("/parents/{parent_id:str}/pupils", status_code=204, summary="Remove a parent from all their pupils here", responses=error_responses(401, 404, 503), **_STAFF)
async def remove_parent_everywhere(state: State, principal: NamedDependency[Principal], parent_id: FromPath[str]) -> None:
    """The parent loses every pupil of the caller's school (trust) at once, one audit row each."""
    await ask(
        state,
        contract.REMOVE_PARENT_EVERYWHERE,
        contract.StaffParentRequest(scope=staff_scope(principal), actor_id=principal.account_id, parent_id=checked_id(parent_id)),
    )
    get_links_cache(state).forget(parent_id)


@get("/pupils/{pupil_id:str}/audit", summary="A pupil's audit trail", responses=error_responses(401, 404, 503), **_ADMIN)
async def pupil_audit(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str]) -> list[dict[str, Any]]:
    """Every invitation, redemption, activation, removal, bar and code regeneration, oldest first."""
    reply = await ask(
        state,
        contract.AUDIT,
        contract.AuditRequest(scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id)),
    )
    return [
        {"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "parent_id": e.parent_id, "reason": e.reason}
        for e in reply.entries
    ]


ROUTES = [invite_parent, remove_parent, parent_pupils, remove_parent_everywhere, pupil_audit]
