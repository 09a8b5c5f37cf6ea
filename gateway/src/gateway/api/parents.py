"""Parents' routes: their children (`/me/children`), adding one by code, unlinking one, and
each child's overview (`/me/overview`, `/me/children/{id}/overview`).

The overview is the product's hottest path: the caller comes from the session cache, their
children from the links cache (`gateway.caches.links`), and the numbers from the overview cache
or else one request to overview for every child missing there, whose JSON is passed through
(`gateway.caches.overview.OverviewReader`). When overview is slow or away the answer is partial
(the last numbers this replica saw, or none), never a 500.
"""

from __future__ import annotations

from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, Field

from contracts import linking
from contracts.identity import Principal
from gateway import flows
from gateway.auth import SECURITY, authenticate, client_ip, parents_only
from gateway.caches.links import get_links_cache
from gateway.caches.overview import get_overview_reader
from gateway.clients import Clients
from gateway.errors import not_found
from gateway.models import Child, ChildOverview, Overview
from gateway.openapi import error_responses
from gateway.responses import JsonBytes

TAGS = ["parents"]
PARENTS_ONLY = [parents_only]


class AddChildBody(BaseModel):
    """A code from an invitation email or a printed QR card, typed; the relationship."""

    model_config = ConfigDict(extra="ignore")

    code: str = Field(min_length=1, max_length=64, examples=["ABCD-EFGH-JKLM"])
    relationship: linking.Relationship
    accept_aup: bool = Field(default=False, description="Needed when this school's policy is not yet accepted")


@get(
    "/me/children",
    tags=TAGS,
    summary="My children",
    operation_id="list_my_children",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 503),
)
async def my_children(clients: NamedDependency[Clients], principal: NamedDependency[Principal]) -> list[Child]:
    """Every child linked to the signed-in parent, awaiting verification or linked."""
    return [Child.of(c) for c in await clients.linking.children(principal.account_id)]


@post(
    "/me/children",
    tags=TAGS,
    summary="Add a child by code",
    operation_id="add_my_child",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses={
        200: ResponseSpec(Child, description="This child was already linked to this parent.", generate_examples=False),
        **error_responses(401, 404, 409, 422, 429, 503),
    },
)
async def add_child(
    state: State,
    request: Request,
    clients: NamedDependency[Clients],
    principal: NamedDependency[Principal],
    data: JSONBody[AddChildBody],
) -> Response[Child]:
    """201 with the new link; 200 when this child was already linked to this parent."""
    reply = await clients.linking.redeem(
        linking.RedeemRequest(
            code=data.code,
            parent_id=principal.account_id,
            relationship=data.relationship,
            verified=True,
            accept_aup=data.accept_aup,
            email=principal.email,
            client_ip=client_ip(request),
        )
    )
    get_links_cache(state).forget(principal.account_id)
    assert reply.child is not None  # a redemption that is not a dry run names its link
    return Response(Child.of(reply.child), status_code=201 if reply.created else 200)


@delete(
    "/me/children/{pupil_id:str}",
    tags=TAGS,
    summary="Unlink a child",
    operation_id="unlink_my_child",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 503),
)
async def unlink_child(
    state: State, clients: NamedDependency[Clients], principal: NamedDependency[Principal], pupil_id: str
) -> None:
    """The parent stops seeing this child (the school can invite them again)."""
    await clients.linking.unlink(principal.account_id, pupil_id)
    get_links_cache(state).forget(principal.account_id)


async def parent_caller(request: Request) -> Principal:
    """The signed-in parent (401 without a session, 404 for anyone else)."""
    # Resolved here rather than by a guard and an injected dependency: on the hottest route
    # Litestar's machinery for those cost about a tenth of the throughput (make bench).
    principal = await authenticate(request)
    assert principal is not None
    if principal.role != "parent":
        raise not_found()
    return principal


# The overview routes pass cached JSON through as bytes (no model is built per request); the
# models document what those bytes are.
@get(
    "/me/overview",
    tags=TAGS,
    summary="Every child's overview",
    operation_id="get_my_overview",
    security=SECURITY,
    responses={
        200: ResponseSpec(Overview, description="Every linked child's overview.", generate_examples=False),
        **error_responses(401, 404, 503),
    },
)
async def my_overview(request: Request) -> Response[bytes]:
    """`{children: [overview, …]}` for every linked child, in one request to overview at most."""
    principal = await parent_caller(request)
    state = request.app.state
    data = await flows.parent_overview(get_links_cache(state), get_overview_reader(state), principal.account_id)
    return JsonBytes(data)


@get(
    "/me/children/{pupil_id:str}/overview",
    tags=TAGS,
    summary="One child's overview",
    operation_id="get_my_child_overview",
    security=SECURITY,
    responses={
        200: ResponseSpec(ChildOverview, description="The child's overview.", generate_examples=False),
        **error_responses(401, 404, 503),
    },
)
async def child_overview(request: Request, pupil_id: str) -> Response[bytes]:
    """Outstanding homework, unread messages, this week's stars and the links, for one child."""
    principal = await parent_caller(request)
    state = request.app.state
    data = await flows.child_overview(
        get_links_cache(state), get_overview_reader(state), principal.account_id, pupil_id
    )
    if data is None:
        raise not_found("No such child.")
    return JsonBytes(data)


ROUTES = [my_children, add_child, unlink_child, my_overview, child_overview]
