"""Safeguarding bars, for school admins (and the trust's admins): bar an address from a pupil,
list the bars in force, lift one.

Linking holds no parents' addresses, so adding a bar is composed here: linking names the
pupil's parents, identity gives their addresses, and linking is told which of them have the
barred one and ends their links (it stays the one that decides). Anyone who linked in between
is named back by linking and checked in another round.
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
from gateway.rpc import ask
from gateway.staff_routes import checked_id, parent_contacts, settings_only, staff_scope

TAGS = ["staff"]
_ADMIN = {"guards": [settings_only], "tags": TAGS, "security": SECURITY}
# The second round checks whoever linked while the first ran. Once the first round's bar is
# committed the address can link no more, so anyone linking later is someone else.
ROUNDS = 2


class BarBody(BaseModel):
    """The address to bar and why."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=254, examples=["someone@example.org"])
    reason: str = Field(min_length=1, max_length=1000, examples=["Court order"])


def _same_address(a: str, b: str) -> bool:
    return a.strip().lower() == b.strip().lower()


async def _holders(state: State, parent_ids: list[str], email: str) -> list[str]:
    contacts = await parent_contacts(state, parent_ids)
    return [pid for pid in parent_ids if pid in contacts and _same_address(contacts[pid].email, email)]


@post(
    "/pupils/{pupil_id:str}/bars",
    status_code=201,
    summary="Bar an address from a pupil",
    description="That address can no longer be linked to this pupil, through any code; the links of accounts with "
    "it end at once and open invitations to it are revoked. Barring an address already barred answers the same bar.",
    responses=error_responses(401, 404, 422, 503),
    **_ADMIN,
)
async def add_bar(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str], data: JSONBody[BarBody]) -> dict[str, Any]:
    """201 `{bar_id}`."""
    scope = staff_scope(principal)
    pupil_id = checked_id(pupil_id)
    parents = await ask(
        state, contract.PUPIL_PARENTS, contract.PupilParentsRequest(scope=scope, actor_id=principal.account_id, pupil_id=pupil_id)
    )
    checked = list(parents.parent_ids)
    holders = await _holders(state, checked, data.email)
    links = get_links_cache(state)
    for _ in range(ROUNDS):
        reply = await ask(
            state,
            contract.ADD_BAR,
            contract.AddBarRequest(
                scope=scope,
                actor_id=principal.account_id,
                pupil_id=pupil_id,
                email=data.email,
                reason=data.reason,
                parent_ids=holders,
                checked_parent_ids=checked,
            ),
        )
        for parent_id in reply.removed_parent_ids:
            links.forget(parent_id)
        if not reply.unchecked_parent_ids:
            break
        checked = [*checked, *reply.unchecked_parent_ids]
        holders = await _holders(state, reply.unchecked_parent_ids, data.email)
    return {"bar_id": reply.bar_id}


@get("/pupils/{pupil_id:str}/bars", summary="A pupil's safeguarding bars", responses=error_responses(401, 404, 503), **_ADMIN)
async def list_bars(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str]) -> list[dict[str, Any]]:
    """The bars in force: `bar_id, email, reason, at`, oldest first."""
    reply = await ask(
        state,
        contract.BARS,
        contract.BarsRequest(scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id)),
    )
    return [{"bar_id": b.bar_id, "email": b.email, "reason": b.reason, "at": b.at.isoformat()} for b in reply.bars]


@delete("/pupils/{pupil_id:str}/bars/{bar_id:str}", status_code=204, summary="Lift a bar", responses=error_responses(401, 404, 503), **_ADMIN)
async def lift_bar(state: State, principal: NamedDependency[Principal], pupil_id: FromPath[str], bar_id: FromPath[str]) -> None:
    """The address may be linked again (with a code it has not lost by the bar); recorded in the audit trail."""
    await ask(
        state,
        contract.LIFT_BAR,
        contract.LiftBarRequest(scope=staff_scope(principal), actor_id=principal.account_id, pupil_id=checked_id(pupil_id), bar_id=checked_id(bar_id)),
    )


ROUTES = [add_bar, list_bars, lift_bar]
