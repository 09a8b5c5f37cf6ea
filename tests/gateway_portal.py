"""Identity, linking and a gateway under uvicorn over a real NATS, as the tests of the staff and
link-code routes and of bars and guessing limits ask them through HTTP (the `portal` fixture of
conftest.py runs one per module): a roster of two trusts, staff of each kind and a verified
parent, all signed in.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import nats
from gateway_harness import running_gateway
from helpers import eventually
from natsauth import authed_nats

from contracts import identity, notify, platform
from contracts import linking as contract
from contracts.base import Event
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from gateway.settings import GatewaySettings
from identity import app as identity_app
from linking import app as linking_app

PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
CHEAP_ARGON2 = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Roster:
    """Trust 1 with schools A and B, trust 2 with school C; each class's pupils by first name."""

    trust1: str = field(default_factory=lambda: uid("trust1"))
    trust2: str = field(default_factory=lambda: uid("trust2"))
    school_a: str = field(default_factory=lambda: uid("oak"))
    school_b: str = field(default_factory=lambda: uid("birch"))
    school_c: str = field(default_factory=lambda: uid("cedar"))
    a1: str = field(default_factory=lambda: uid("a1"))
    a2: str = field(default_factory=lambda: uid("a2"))
    b1: str = field(default_factory=lambda: uid("b1"))
    c1: str = field(default_factory=lambda: uid("c1"))
    pupils: dict[str, dict[str, str]] = field(default_factory=dict)

    def events(self) -> list[tuple[str, Event]]:
        schools = [
            (self.trust1, self.school_a, "Oak Primary"),
            (self.trust1, self.school_b, "Birch School"),
            (self.trust2, self.school_c, "Cedar Academy"),
        ]
        classes = [
            (self.school_a, self.a1, "Year 3 Robins", ["Amy Adams", "Ben Brown", "Cara Clark"]),
            (self.school_a, self.a2, "Year 4 Owls", ["Dan Dale", "Eve Evans"]),
            (self.school_b, self.b1, "Birch 1", ["Fay Ford", "Gus Green"]),
            (self.school_c, self.c1, "Cedar 1", ["Hal Hill"]),
        ]
        out: list[tuple[str, Event]] = [
            (
                platform.SCHOOL_UPSERTED,
                platform.SchoolUpserted(trust_id=t, school_id=s, name=n, timezone="Europe/London"),
            )
            for t, s, n in schools
        ]
        for school_id, class_id, name, pupils in classes:
            out.append(
                (platform.CLASS_UPSERTED, platform.ClassUpserted(school_id=school_id, class_id=class_id, name=name))
            )
            for full in pupils:
                first, last = full.split()
                pupil_id = uid("pupil")
                self.pupils.setdefault(class_id, {})[first] = pupil_id
                out.append(
                    (
                        platform.PUPIL_UPSERTED,
                        platform.PupilUpserted(
                            school_id=school_id,
                            pupil_id=pupil_id,
                            first_name=first,
                            last_name=last,
                            class_ids=[class_id],
                        ),
                    )
                )
        return out


@dataclass
class Portal:
    http: httpx.AsyncClient
    nc: nats.NATS
    roster: Roster
    gateway_settings: GatewaySettings
    tokens: dict[str, str]  # who -> bearer token
    parent_id: str

    async def get(self, who: str | None, path: str, **kw) -> httpx.Response:
        return await self.http.get(f"/api/v1{path}", headers=auth(self.tokens.get(who or "")), **kw)

    async def post(self, who: str | None, path: str, **kw) -> httpx.Response:
        return await self.http.post(f"/api/v1{path}", headers=auth(self.tokens.get(who or "")), **kw)

    async def put(self, who: str | None, path: str, **kw) -> httpx.Response:
        return await self.http.put(f"/api/v1{path}", headers=auth(self.tokens.get(who or "")), **kw)


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"].strip()
    return body


async def login(http: httpx.AsyncClient, email: str) -> str:
    response = await http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


async def verified_parent(http: httpx.AsyncClient, nc: nats.NATS) -> str:
    """A parent registered through the gateway and verified with the link of identity's email request."""
    email = f"parent-{uuid.uuid4().hex[:8]}@example.org"
    urls: list[str] = []

    async def on_request(msg) -> None:
        body = json.loads(msg.data)
        if body.get("to") == email:
            urls.append(body["verify_url"])

    # A plain subscriber sees what the work-queue stream keeps for notify.
    sub = await nc.subscribe(notify.request_subject("verification"), cb=on_request)
    await nc.flush()
    body = {"email": email, "password": PASSWORD, "name": "Mary Parent", "accept_aup": True}
    assert (await http.post("/api/v1/auth/register", json=body)).status_code == 202
    await eventually(lambda: urls, timeout=10, message="verification email request")
    await sub.unsubscribe()
    token = parse_qs(urlsplit(urls[0]).query)["token"][0]
    assert (await http.post("/api/v1/auth/verify", json={"token": token})).status_code == 200
    return email


@asynccontextmanager
async def running_portal(tmp: Path) -> AsyncIterator[Portal]:
    """Identity, linking and a gateway over a nats-server of their own, under `tmp`: the roster
    applied, the staff of `Portal.tokens` and a verified parent signed in."""
    server = authed_nats(tmp / "nats")
    try:
        async with AsyncExitStack() as stack:
            id_settings = identity_app.Settings(
                nats_url=server.url, data_dir=tmp / "identity", public_url=PUBLIC_URL, **CHEAP_ARGON2
            )
            link_settings = linking_app.Settings(nats_url=server.url, data_dir=tmp / "linking", public_url=PUBLIC_URL)
            # One after the other: alembic's context is process-wide.
            await asyncio.to_thread(migrate, identity_app, id_settings)
            await asyncio.to_thread(migrate, linking_app, link_settings)
            await stack.enter_async_context(identity_app.build(id_settings).running())
            await stack.enter_async_context(linking_app.build(link_settings).running())
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)

            roster = Roster()
            events = roster.events()
            js = nc.jetstream()
            for subject, event in events:
                await js.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id})

            async def applied() -> bool:
                status = await call(
                    nc, contract.ROSTER_STATUS, contract.RosterStatusRequest(event_ids=[e.event_id for _, e in events])
                )
                return not status.missing

            await eventually(applied, timeout=15, message="roster applied")

            staff = {
                "teacher_a": ("teacher", roster.school_a, None),
                "admin_a": ("school_admin", roster.school_a, None),
                "trust1": ("trust_admin", None, roster.trust1),
                "trust2": ("trust_admin", None, roster.trust2),
            }
            for who, (role, school_id, trust_id) in staff.items():
                await call(
                    nc,
                    identity.CREATE_STAFF,
                    identity.CreateStaffRequest(
                        email=f"{who}@school.example",
                        name=who,
                        role=role,
                        school_id=school_id,
                        trust_id=trust_id,
                        password=PASSWORD,
                    ),
                    timeout=10,
                )

            gw_settings = GatewaySettings(nats_url=server.url, data_dir=tmp / "gateway", public_url=PUBLIC_URL)
            http = (await stack.enter_async_context(running_gateway(gw_settings, timeout=20))).http
            parent_email = await verified_parent(http, nc)
            tokens = dict(
                zip(
                    [*staff, "parent"],
                    await asyncio.gather(
                        *(login(http, f"{who}@school.example") for who in staff), login(http, parent_email)
                    ),
                    strict=True,
                )
            )
            parent_id = (await http.get("/api/v1/me", headers=auth(tokens["parent"]))).json()["id"]
            yield Portal(http, nc, roster, gw_settings, tokens, parent_id)
    finally:
        server.stop(kill=True)


def cards(page: str) -> dict[str, str]:
    """The sheet's cards: pupil's full name -> the code printed on the card."""
    found = re.findall(r'<section class="card" aria-label="([^"]+)">.*?class="code">([^<]+)<', page, re.S)
    return dict(found)
