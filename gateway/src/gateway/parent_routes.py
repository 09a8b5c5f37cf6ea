"""Parents' routes: their children (`/me/children`), adding one by code, unlinking one, and
each child's overview (`/me/overview`, `/me/children/{id}/overview`).

The overview is the product's hottest path: the caller comes from the session cache, their
children from the links cache (`gateway.caches.links`), and the numbers from the overview cache
(`gateway.caches.overview`) or else one request to overview for every child missing there, whose
JSON is passed through. When overview is slow or away the answer is partial (the last numbers
this replica saw, or none), never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody
from pydantic import BaseModel, ConfigDict, Field

from contracts import linking
from contracts.identity import Principal
from contracts.kit.logs import get_logger
from contracts.kit.rpc import RpcError
from contracts.overview import GET as OVERVIEW_GET
from contracts.overview import OverviewRequest
from gateway.caches import overview as overview_cache
from gateway.auth import SECURITY, authenticate, client_ip, require_role
from gateway.errors import ApiError
from gateway.caches.links import get_links_cache
from gateway.openapi import error_responses
from gateway.caches.overview import OverviewCache, Refresher, split_children
from gateway.rpc import ask, ask_raw

log = get_logger("gateway.parent_routes")

TAGS = ["parents"]
PARENTS_ONLY = [require_role("parent")]
JSON = "application/json"
_PREFIX = b'{"children":['


class AddChildBody(BaseModel):
    """A code from an invitation email or a printed QR card, typed; the relationship."""

    model_config = ConfigDict(extra="ignore")

    code: str = Field(min_length=1, max_length=64, examples=["ABCD-EFGH-JKLM"])
    relationship: linking.Relationship
    accept_aup: bool = Field(default=False, description="Needed when this school's policy is not yet accepted")


def child_json(view: linking.ChildView) -> dict[str, Any]:
    """A child as the API answers it, to its parent or to staff."""
    return {
        "pupil_id": view.pupil_id,
        "first_name": view.first_name,
        "last_name": view.last_name,
        "school_id": view.school_id,
        "school_name": view.school_name,
        "class_name": view.class_name,
        "relationship": view.relationship,
        "status": view.status,
        "since": view.since.isoformat(),
    }


@get("/me/children", tags=TAGS, summary="My children", security=SECURITY, guards=PARENTS_ONLY, responses=error_responses(401, 404, 503))
async def my_children(state: State, principal: NamedDependency[Principal]) -> list[dict[str, Any]]:
    """Every child linked to the signed-in parent, awaiting verification or linked."""
    reply = await ask(state, linking.PARENT_CHILDREN, linking.ParentRequest(parent_id=principal.account_id))
    return [child_json(c) for c in reply.children]


@post(
    "/me/children",
    tags=TAGS,
    summary="Add a child by code",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 409, 422, 429, 503),
)
async def add_child(
    state: State, request: Request, principal: NamedDependency[Principal], data: JSONBody[AddChildBody]
) -> Response[dict[str, Any]]:
    """201 with the new link; 200 when this child was already linked to this parent."""
    reply = await ask(
        state,
        linking.REDEEM,
        linking.RedeemRequest(
            code=data.code,
            parent_id=principal.account_id,
            relationship=data.relationship,
            verified=True,
            accept_aup=data.accept_aup,
            email=principal.email,
            client_ip=client_ip(request),
        ),
    )
    get_links_cache(state).forget(principal.account_id)
    return Response(child_json(reply.child), status_code=201 if reply.created else 200)


@delete(
    "/me/children/{pupil_id:str}",
    tags=TAGS,
    summary="Unlink a child",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 503),
)
async def unlink_child(state: State, principal: NamedDependency[Principal], pupil_id: str) -> None:
    """The parent stops seeing this child (the school can invite them again)."""
    await ask(state, linking.UNLINK, linking.UnlinkRequest(parent_id=principal.account_id, pupil_id=pupil_id))
    get_links_cache(state).forget(principal.account_id)


async def _overview(state: State, parent_id: str, pupil_ids: tuple[str, ...]) -> bytes:
    """`{"children": [...]}` for these pupils: from memory, else asked of overview for the
    pupils missing there; partial when overview is slow or away."""
    cache: OverviewCache = state[overview_cache.STATE_KEY]
    parts: dict[str, bytes] = {}
    missing = []
    aged = []
    for pid in pupil_ids:
        hit, ask_again = cache.lookup(pid)
        if hit is None:
            missing.append(pid)
        else:
            parts[pid] = hit
            if ask_again:
                aged.append(pid)
    if aged:
        _refresh_later(state, cache, aged)
    if missing:
        mark = cache.mark()
        try:
            data = await ask_raw(state, OVERVIEW_GET, OverviewRequest(pupil_ids=missing), timeout=state.settings.overview_timeout)
        except RpcError as exc:
            log.warning("overview_partial", parent_id=parent_id, error=exc.code)
            return _partial(cache, pupil_ids, parts)
        fetched = split_children(data)
        cache.put(fetched, mark)
        parts.update(fetched)
        if any(pid not in parts for pid in pupil_ids):
            return _partial(cache, pupil_ids, parts)
    return b'{"children":[' + b",".join(parts[pid] for pid in pupil_ids) + b"]}"


REFRESHER_KEY = "overview_refresher"


def _refresh_later(state: State, cache: OverviewCache, pupil_ids: list[str]) -> None:
    """Ask overview for these pupils again without keeping the parent waiting."""
    refresher: Refresher | None = state.get(REFRESHER_KEY)
    if refresher is None:

        async def fetch(batch: list[str]) -> bytes:
            return await ask_raw(state, OVERVIEW_GET, OverviewRequest(pupil_ids=batch), timeout=state.settings.overview_timeout)

        refresher = state[REFRESHER_KEY] = Refresher(cache, fetch)
    refresher.add(pupil_ids)


def _partial(cache: OverviewCache, pupil_ids: tuple[str, ...], parts: dict[str, bytes]) -> bytes:
    """Each child fresh where there is an answer, else its last known numbers (or none) marked
    `partial`."""
    children = []
    for pid in pupil_ids:
        if pid in parts:
            children.append(json.loads(parts[pid]))
            continue
        known = cache.last_known(pid)
        child = json.loads(known) if known else {
            "pupil_id": pid,
            "outstanding_homework": None,
            "unread_messages": None,
            "stars_this_week": None,
            "next_due": [],
            "links": None,
            "as_of": None,
        }
        children.append({**child, "partial": True})
    return json.dumps({"children": children, "partial": True}).encode()


async def parent_caller(request: Request) -> Principal:
    """The signed-in parent (401 without a session, 404 for anyone else)."""
    # Resolved here rather than by a guard and an injected dependency: on the hottest route
    # Litestar's machinery for those cost about a tenth of the throughput (make bench).
    principal = await authenticate(request)
    assert principal is not None
    if principal.role != "parent":
        raise ApiError(404, "not_found", "Nothing was found at this address.")
    return principal


@get(
    "/me/overview",
    tags=TAGS,
    summary="Every child's overview",
    security=SECURITY,
    responses=error_responses(401, 404, 503),
)
async def my_overview(request: Request) -> Response[bytes]:
    """`{children: [overview, …]}` for every linked child, in one request to overview at most."""
    principal = await parent_caller(request)
    state = request.app.state
    pupil_ids = await get_links_cache(state).active(state, principal.account_id)
    return Response(await _overview(state, principal.account_id, pupil_ids), media_type=JSON)


async def child_overview_json(state: State, principal: Principal, pupil_id: str) -> bytes:
    """One child's overview as JSON; 404 unless the child is linked to this parent now."""
    pupil_ids = await get_links_cache(state).active(state, principal.account_id)
    if pupil_id not in pupil_ids:
        raise ApiError(404, "not_found", "No such child.")
    data = await _overview(state, principal.account_id, (pupil_id,))
    if data.startswith(_PREFIX):
        # One pupil asked, one object answered: the child is everything between the brackets.
        return data[len(_PREFIX) : data.rindex(b"]")]
    return json.dumps(json.loads(data)["children"][0]).encode()


@get(
    "/me/children/{pupil_id:str}/overview",
    tags=TAGS,
    summary="One child's overview",
    security=SECURITY,
    responses=error_responses(401, 404, 503),
)
async def child_overview(request: Request, pupil_id: str) -> Response[bytes]:
    """Outstanding homework, unread messages, this week's stars and the links, for one child."""
    principal = await parent_caller(request)
    return Response(await child_overview_json(request.app.state, principal, pupil_id), media_type=JSON)


ROUTES = [my_children, add_child, unlink_child, my_overview, child_overview]
