"""Parents' routes: their children (`/me/children`), adding one by code, unlinking one, and
each child's overview (`/me/overview`, `/me/children/{id}/overview`).

The overview is the product's hottest path: the caller comes from the session cache, their
children from the links cache (`gateway.links_cache`), and the numbers from one request to
overview for every child at once, whose JSON is passed through as it arrives. When overview is
slow or away the answer is partial (the last numbers this replica saw, or none), never a 500.
"""

from __future__ import annotations

import json
from collections import OrderedDict
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
from gateway.auth import SECURITY, client_ip, require_role
from gateway.errors import ApiError
from gateway.links_cache import get_links_cache
from gateway.openapi import error_responses
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
    reply = await ask(state, linking.PARENT_CHILDREN, linking.ParentRequest(parent_id=principal.account_id), linking.ChildrenReply)
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
        linking.RedeemReply,
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
    await ask(state, linking.UNLINK, linking.UnlinkRequest(parent_id=principal.account_id, pupil_id=pupil_id), linking.Done)
    get_links_cache(state).forget(principal.account_id)


class LastKnown:
    """The last overview answer each parent got from this replica, for partial answers."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def put(self, key: str, data: bytes) -> None:
        self._entries[key] = data
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, key: str) -> bytes | None:
        return self._entries.get(key)


LAST_KNOWN_KEY = "overview_last_known"


async def _overview(state: State, parent_id: str, pupil_ids: tuple[str, ...]) -> bytes:
    """`{"children": [...]}` for these pupils: overview's own JSON, or a partial answer."""
    if not pupil_ids:
        return b'{"children":[]}'
    last: LastKnown = state[LAST_KNOWN_KEY]
    try:
        data = await ask_raw(
            state, OVERVIEW_GET, OverviewRequest(pupil_ids=list(pupil_ids)), timeout=state.settings.overview_timeout
        )
    except RpcError as exc:
        log.warning("overview_partial", parent_id=parent_id, error=exc.code)
        return _partial(last.get(parent_id), pupil_ids)
    last.put(parent_id, data)
    return data


def _partial(known: bytes | None, pupil_ids: tuple[str, ...]) -> bytes:
    by_pupil: dict[str, dict[str, Any]] = {}
    if known:
        for child in json.loads(known)["children"]:
            by_pupil[child["pupil_id"]] = child
    children = []
    for pid in pupil_ids:
        child = by_pupil.get(pid) or {
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


@get(
    "/me/overview",
    tags=TAGS,
    summary="Every child's overview",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 503),
)
async def my_overview(state: State, principal: NamedDependency[Principal]) -> Response[bytes]:
    """`{children: [overview, …]}` for every linked child, in one request to overview."""
    pupil_ids = await get_links_cache(state).active(state, principal.account_id)
    return Response(await _overview(state, principal.account_id, pupil_ids), media_type=JSON)


@get(
    "/me/children/{pupil_id:str}/overview",
    tags=TAGS,
    summary="One child's overview",
    security=SECURITY,
    guards=PARENTS_ONLY,
    responses=error_responses(401, 404, 503),
)
async def child_overview(state: State, principal: NamedDependency[Principal], pupil_id: str) -> Response[bytes]:
    """Outstanding homework, unread messages, this week's stars and the links, for one child."""
    pupil_ids = await get_links_cache(state).active(state, principal.account_id)
    if pupil_id not in pupil_ids:
        raise ApiError(404, "not_found", "No such child.")
    data = await _overview(state, principal.account_id, (pupil_id,))
    if data.startswith(_PREFIX):
        # Overview's own reply for one pupil: the child object is everything between the
        # wrapper's brackets (one pupil asked, one object answered).
        return Response(data[len(_PREFIX) : data.rindex(b"]")], media_type=JSON)
    return Response(json.dumps(json.loads(data)["children"][0]).encode(), media_type=JSON)


ROUTES = [my_children, add_child, unlink_child, my_overview, child_overview]
