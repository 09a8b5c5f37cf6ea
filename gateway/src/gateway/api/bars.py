"""Safeguarding bars, for school admins (and the trust's admins): bar an address from a pupil,
list the bars in force, lift one. Adding a bar is the flow `gateway.flows.add_bar` (linking
and identity together)."""

from __future__ import annotations

from litestar import delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from gateway import flows
from gateway.auth import SECURITY, admins_only
from gateway.caches.links import get_links_cache
from gateway.clients import Clients, StaffLinking
from gateway.errors import checked_id
from gateway.models import Bar, BarCreated
from gateway.openapi import error_responses

TAGS = ["staff"]
ADMINS = [admins_only]


class BarBody(BaseModel):
    """The address to bar and why."""

    model_config = ConfigDict(extra="ignore")

    email: str = Field(min_length=3, max_length=254, examples=["someone@example.org"])
    reason: str = Field(min_length=1, max_length=1000, examples=["Court order"])


@post(
    "/pupils/{pupil_id:str}/bars",
    status_code=201,
    summary="Bar an address from a pupil",
    operation_id="add_bar",
    description="That address can no longer be linked to this pupil, through any code; the links of accounts with "
    "it end at once and open invitations to it are revoked. Barring an address already barred answers the same bar.",
    responses=error_responses(401, 404, 422, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def add_bar(
    state: State,
    clients: NamedDependency[Clients],
    staff: NamedDependency[StaffLinking],
    pupil_id: FromPath[str],
    data: JSONBody[BarBody],
) -> BarCreated:
    """201 `{bar_id}`."""
    bar_id = await flows.add_bar(
        staff, clients.identity, get_links_cache(state), checked_id(pupil_id), data.email, data.reason
    )
    return BarCreated(bar_id=bar_id)


@get(
    "/pupils/{pupil_id:str}/bars",
    summary="A pupil's safeguarding bars",
    operation_id="list_bars",
    responses=error_responses(401, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def list_bars(staff: NamedDependency[StaffLinking], pupil_id: FromPath[str]) -> list[Bar]:
    """The bars in force: `bar_id, email, reason, at`, oldest first."""
    return [Bar.of(b) for b in await staff.bars(checked_id(pupil_id))]


@delete(
    "/pupils/{pupil_id:str}/bars/{bar_id:str}",
    status_code=204,
    summary="Lift a bar",
    operation_id="lift_bar",
    responses=error_responses(401, 404, 503),
    guards=ADMINS,
    tags=TAGS,
    security=SECURITY,
)
async def lift_bar(staff: NamedDependency[StaffLinking], pupil_id: FromPath[str], bar_id: FromPath[str]) -> None:
    """The address may be linked again (with a code it has not lost by the bar); recorded in the audit trail."""
    await staff.lift_bar(checked_id(pupil_id), checked_id(bar_id))


ROUTES = [add_bar, list_bars, lift_bar]
