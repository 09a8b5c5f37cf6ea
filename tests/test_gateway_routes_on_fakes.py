"""The gateway's routes on fake services: `create_app(settings, clients=...)` over a
`FakeTransport`, driven through httpx, no NATS. What a client sees: the answers, the status
codes and headers a service's errors turn into, and what the gateway asked of each service."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from contracts import identity, linking, overview
from contracts.identity import Principal
from contracts.kit.rpc import RawReply, RpcFailure, invalid
from gateway.app import create_app
from gateway.clients import Clients
from gateway.clients.fake import FakeTransport
from gateway.settings import GatewaySettings

SINCE = datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
PARENT = Principal(
    account_id="par-1", session_id="s-1", role="parent", email="mary@example.org", name="Mary", expires_in=3600
)
TEACHER = Principal(
    account_id="tea-1",
    session_id="s-2",
    role="teacher",
    email="t@oak.example",
    name="Tom",
    school_id="oak",
    expires_in=3600,
)
TRUST_ADMIN = Principal(
    account_id="tru-1",
    session_id="s-3",
    role="trust_admin",
    email="a@trust.example",
    name="Ann",
    trust_id="t1",
    expires_in=3600,
)
SESSIONS = {"tok-parent": PARENT, "tok-teacher": TEACHER, "tok-trust": TRUST_ADMIN}


def child(pupil_id: str, first_name: str) -> linking.ChildView:
    return linking.ChildView(
        pupil_id=pupil_id,
        first_name=first_name,
        last_name="Smith",
        school_id="oak",
        school_name="Oak School",
        class_name="Year 3",
        relationship="mother",
        status="linked",
        since=SINCE,
    )


async def session(req: identity.SessionRequest) -> Principal:
    if req.token not in SESSIONS:
        raise RpcFailure(identity.E_INVALID_SESSION, "No such session.")
    return SESSIONS[req.token]


async def children(req: linking.ParentRequest) -> linking.ChildrenReply:
    return linking.ChildrenReply(
        children=[child("p-amy", "Amy"), child("p-ben", "Ben")] if req.parent_id == PARENT.account_id else []
    )


@dataclass
class Gateway:
    http: httpx.AsyncClient
    fake: FakeTransport

    async def get(self, path: str, token: str | None = None) -> httpx.Response:
        return await self.http.get(path, headers=bearer(token))


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    fake = FakeTransport({identity.SESSION: session, linking.PARENT_CHILDREN: children})
    settings = GatewaySettings(data_dir=tmp_path, revocation_wait_seconds=0, links_cache_seconds=0)
    app = create_app(settings, clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as http:
        yield Gateway(http, fake)


def error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


# -- answers ----------------------------------------------------------------------------------


async def test_a_parent_sees_their_children(gw: Gateway) -> None:
    response = await gw.get("/api/v1/me/children", "tok-parent")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    amy, ben = response.json()
    assert amy == {
        "pupil_id": "p-amy",
        "first_name": "Amy",
        "last_name": "Smith",
        "school_id": "oak",
        "school_name": "Oak School",
        "class_name": "Year 3",
        "relationship": "mother",
        "status": "linked",
        "since": "2026-11-30T09:15:00+00:00",
    }
    assert ben["pupil_id"] == "p-ben"
    # Linking was asked for the caller, and for nobody else.
    assert [r.parent_id for r in gw.fake.asked(linking.PARENT_CHILDREN)] == [PARENT.account_id]


async def test_only_parents_have_children_and_only_signed_in(gw: Gateway) -> None:
    error(await gw.get("/api/v1/me/children"), 401, "unauthorized")
    error(await gw.get("/api/v1/me/children", "tok-unknown"), 401, "unauthorized")
    error(await gw.get("/api/v1/me/children", "tok-teacher"), 404, "not_found")
    assert gw.fake.asked(linking.PARENT_CHILDREN) == []


async def test_staff_requests_carry_the_callers_scope(gw: Gateway) -> None:
    async def classes(req: linking.ClassesRequest) -> linking.ClassesReply:
        summary = linking.ClassSummary(
            class_id="oak-y3",
            name="Year 3",
            school_id="oak",
            school_name="Oak School",
            pupil_count=28,
            linked_pupil_count=20,
        )
        return linking.ClassesReply(classes=[summary])

    gw.fake.on(linking.CLASSES, classes)
    teacher = await gw.get("/api/v1/classes", "tok-teacher")
    assert teacher.status_code == 200 and teacher.json()[0]["linked_pupil_count"] == 20
    assert (await gw.get("/api/v1/classes", "tok-trust")).status_code == 200
    error(await gw.get("/api/v1/classes", "tok-parent"), 404, "not_found")
    asked = gw.fake.asked(linking.CLASSES)
    assert [(r.scope.school_ids, r.scope.trust_ids, r.actor_id) for r in asked] == [
        (["oak"], [], TEACHER.account_id),
        ([], ["t1"], TRUST_ADMIN.account_id),
    ]


async def test_the_overview_passes_overviews_json_through_and_is_partial_without_it(gw: Gateway) -> None:
    linked = ["p-amy"]

    async def active(req: linking.ParentRequest) -> linking.ActivePupilsReply:
        return linking.ActivePupilsReply(pupil_ids=linked)

    served = b'{"children":[{"pupil_id":"p-amy","outstanding_homework":2,"unread_messages":1,"stars_this_week":3}]}'

    async def overviews(req: overview.OverviewRequest) -> RawReply:
        return RawReply(served)

    gw.fake.on(linking.ACTIVE_PUPILS, active)
    gw.fake.on(overview.GET, overviews)
    response = await gw.get("/api/v1/me/overview", "tok-parent")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.content == served
    one = await gw.get("/api/v1/me/children/p-amy/overview", "tok-parent")
    assert one.json() == json.loads(served)["children"][0]
    error(await gw.get("/api/v1/me/children/p-zoe/overview", "tok-parent"), 404, "not_found")

    gw.fake.off(overview.GET)  # overview away: the answer is partial, never an error
    linked.append("p-ben")
    response = await gw.get("/api/v1/me/overview", "tok-parent")
    assert response.status_code == 200
    partial = response.json()
    amy, ben = partial["children"]
    assert partial["partial"] is True
    assert (amy["pupil_id"], amy["partial"], amy["stars_this_week"]) == ("p-amy", True, 3), (
        "the last numbers this replica saw"
    )
    assert (ben["pupil_id"], ben["partial"], ben["stars_this_week"], ben["links"]) == ("p-ben", True, None, None)


# -- services' errors -------------------------------------------------------------------------


async def test_too_many_attempts_is_429_with_the_services_retry_after(gw: Gateway) -> None:
    async def login(req: identity.LoginRequest) -> identity.LoginReply:
        raise RpcFailure(identity.E_TOO_MANY, "Too many sign-in attempts: wait a quarter of an hour.", retry_after=840)

    gw.fake.on(identity.LOGIN, login)
    response = await gw.http.post("/api/v1/auth/login", json={"email": "mary@example.org", "password": "x" * 12})
    body = error(response, 429, "too_many_attempts")
    assert response.headers["retry-after"] == "840"
    assert body["detail"] == "Too many sign-in attempts: wait a quarter of an hour."
    assert gw.fake.asked(identity.LOGIN)[0].client_ip == "127.0.0.1"


async def test_a_validation_error_names_the_fields(gw: Gateway) -> None:
    async def update(req: linking.UpdateSchoolSettingsRequest) -> linking.SchoolSettings:
        raise invalid(max_carers_per_code="must be between 1 and 20", homework_url="must contain {pupil_id}")

    gw.fake.on(linking.UPDATE_SCHOOL_SETTINGS, update)
    response = await gw.http.put(
        "/api/v1/schools/oak/settings",
        json={"max_carers_per_code": 99, "homework_url": "x"},
        headers=bearer("tok-trust"),
    )
    body = error(response, 422, "validation_error")
    assert [e["field"] for e in body["errors"]] == ["max_carers_per_code", "homework_url"]
    assert body["errors"][0]["message"] == "must be between 1 and 20"
    assert body["detail"].startswith("Some settings are invalid: ")
    [asked] = gw.fake.asked(linking.UPDATE_SCHOOL_SETTINGS)
    assert asked.settings == {"max_carers_per_code": 99, "homework_url": "x"} and asked.school_id == "oak"


async def test_a_service_away_is_503(gw: Gateway) -> None:
    gw.fake.off(linking.PARENT_CHILDREN)
    response = await gw.get("/api/v1/me/children", "tok-parent")
    error(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == "5"
    gw.fake.off(identity.SESSION)  # nobody can say who is calling either
    error(await gw.get("/api/v1/me/children", "tok-parent"), 503, "service_unavailable")


async def test_a_code_the_gateway_does_not_know_is_500(gw: Gateway) -> None:
    async def surprising(req: linking.ParentRequest) -> linking.ChildrenReply:
        raise RpcFailure("brand_new_error", "Something the gateway was never told about.")

    gw.fake.on(linking.PARENT_CHILDREN, surprising)
    response = await gw.get("/api/v1/me/children", "tok-parent")
    error(response, 500, "internal_error")
    assert "never told" not in response.text


# -- flows ------------------------------------------------------------------------------------


async def test_registering_with_a_code_checks_first_and_links_only_a_new_account(gw: Gateway) -> None:
    created = {"now": True}

    async def ok(req: object) -> identity.Accepted:
        return identity.Accepted()

    async def redeem(req: linking.RedeemRequest) -> linking.RedeemReply:
        aup = linking.AupReply(version="oak-2", text="Be kind.")
        return linking.RedeemReply(
            created=not req.dry_run, child=None if req.dry_run else child("p-amy", "Amy"), aup=aup
        )

    async def register(req: identity.RegisterRequest) -> identity.RegisterReply:
        return identity.RegisterReply(parent_id="par-new", created=created["now"], verified=False)

    gw.fake.on(identity.CHECK_PASSWORD, ok)
    gw.fake.on(linking.REDEEM, redeem)
    gw.fake.on(identity.REGISTER, register)
    body = {
        "email": "new@example.org",
        "password": "a long passphrase",
        "name": "New Parent",
        "accept_aup": True,
        "code": "ABCD-EFGH",
        "relationship": "father",
    }
    assert (await gw.http.post("/api/v1/auth/register", json=body)).status_code == 202
    dry, real = gw.fake.asked(linking.REDEEM)
    assert (dry.dry_run, dry.parent_id) == (True, None)
    assert (real.dry_run, real.parent_id, real.verified, real.relationship) == (False, "par-new", False, "father")
    assert gw.fake.asked(identity.REGISTER)[0].aup_version == "oak-2", "the school's policy version is the one accepted"

    created["now"] = False  # an address that already has an account: nothing is linked to it
    assert (await gw.http.post("/api/v1/auth/register", json=body)).status_code == 202
    assert [r.dry_run for r in gw.fake.asked(linking.REDEEM)] == [True, False, True]


async def test_adding_a_bar_names_the_parents_holding_the_address_and_checks_latecomers(gw: Gateway) -> None:
    contacts = {
        "par-a": identity.Contact(id="par-a", email="Barred@Example.org ", name="A"),
        "par-b": identity.Contact(id="par-b", email="b@example.org", name="B"),
        "par-c": identity.Contact(id="par-c", email="barred@example.org", name="C"),
    }

    async def pupil_parents(req: linking.PupilParentsRequest) -> linking.PupilParentsReply:
        return linking.PupilParentsReply(parent_ids=["par-a", "par-b"])

    async def look_up(req: identity.ContactsRequest) -> identity.ContactsReply:
        return identity.ContactsReply(contacts=[contacts[i] for i in req.ids if i in contacts])

    async def add_bar(req: linking.AddBarRequest) -> linking.AddBarReply:
        # par-c linked while the gateway was looking: linking names them back once.
        late = [] if "par-c" in req.checked_parent_ids else ["par-c"]
        return linking.AddBarReply(
            bar_id="bar-1", created=True, removed_parent_ids=req.parent_ids, unchecked_parent_ids=late
        )

    gw.fake.on(linking.PUPIL_PARENTS, pupil_parents)
    gw.fake.on(identity.CONTACTS, look_up)
    gw.fake.on(linking.ADD_BAR, add_bar)
    response = await gw.http.post(
        "/api/v1/pupils/p-amy/bars",
        json={"email": "barred@example.org", "reason": "Court order"},
        headers=bearer("tok-trust"),
    )
    assert response.status_code == 201, response.text
    assert response.json() == {"bar_id": "bar-1"}
    first, second = gw.fake.asked(linking.ADD_BAR)
    assert (first.parent_ids, first.checked_parent_ids) == (["par-a"], ["par-a", "par-b"])
    assert (second.parent_ids, second.checked_parent_ids) == (["par-c"], ["par-a", "par-b", "par-c"])
    error(
        await gw.http.post(
            "/api/v1/pupils/p-amy/bars", json={"email": "x@example.org", "reason": "r"}, headers=bearer("tok-teacher")
        ),
        404,
        "not_found",
    )


async def test_first_visits_arriving_together_are_asked_together_and_never_mixed(tmp_path: Path) -> None:
    # Thirty parents' first overviews at once, while the services are slow to answer: what each
    # replica asks arrives in a few requests for many, and each parent sees only their own.
    parents = {f"tok-{i}": f"par-{i}" for i in range(30)}
    answering = asyncio.Event()

    async def session(req: identity.SessionRequest) -> Principal:
        await answering.wait()
        return PARENT.model_copy(update={"account_id": parents[req.token], "session_id": f"s-{req.token}"})

    async def active(req: linking.ParentRequest) -> linking.ActivePupilsReply:
        await answering.wait()
        return linking.ActivePupilsReply(pupil_ids=[f"{req.parent_id}-a", f"{req.parent_id}-b"])

    async def overviews(req: overview.OverviewRequest) -> RawReply:
        await answering.wait()
        children = [{"pupil_id": pid, "outstanding_homework": len(pid)} for pid in req.pupil_ids]
        return RawReply(json.dumps({"children": children}).encode())

    fake = FakeTransport({identity.SESSION: session, linking.ACTIVE_PUPILS: active, overview.GET: overviews})
    settings = GatewaySettings(data_dir=tmp_path, revocation_wait_seconds=0)
    app = create_app(settings, clients=Clients.over(fake))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://portal.test") as http:
        visits = [asyncio.create_task(http.get("/api/v1/me/overview", headers=bearer(t))) for t in parents]
        await asyncio.sleep(0.2)  # every visit is waiting for identity by now
        answering.set()
        answers = await asyncio.gather(*visits)
    for token, answer in zip(parents, answers, strict=True):
        assert answer.status_code == 200, answer.text
        pid = parents[token]
        assert [c["pupil_id"] for c in answer.json()["children"]] == [f"{pid}-a", f"{pid}-b"], "their own children"
    for rpc in (identity.SESSIONS, linking.ACTIVE_PUPILS_MANY, overview.GET):
        assert len(fake.asked(rpc)) < 10, f"{rpc.subject}: asked in a few requests for many, not once a parent"
