"""The linking service over a real NATS, as the linking tests drive it through its RPC subjects.

`running_linking` starts one replica and a nats-server of its own (the `env` fixture of
conftest.py runs one per module and database); the rest builds what a test needs in it: a
school of the test's own with a class and pupils, printed codes, links and invitations.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from helpers import eventually
from natsauth import authed_nats

from contracts import linking as contract
from contracts import notify, platform
from contracts.base import Event
from contracts.kit.rpc import RpcError, call
from contracts.kit.service import migrate
from linking import app as linking_app
from linking.codes import new_key

PUBLIC_URL = "https://portal.example.test"


@dataclass
class Env:
    """A running linking replica, a client connection and what the service published."""

    runtime: object
    nc: nats.NATS
    published: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def js(self):
        return self.nc.jetstream()

    async def ask(self, subject: str, request: object, reply: type, *, timeout: float = 5.0):
        return await call(self.nc, subject, request, timeout=timeout)

    async def fails(self, subject: str, request: object) -> RpcError:
        with pytest.raises(RpcError) as info:
            await call(self.nc, subject, request, timeout=5.0)
        return info.value

    async def publish(self, subject: str, event: Event, *, msg_id: str | None = None) -> None:
        await self.js.publish(
            subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id or event.event_id}
        )

    async def applied(self, events: list[Event]) -> None:
        """Wait until linking has applied every one of `events`."""
        ids = [e.event_id for e in events]

        async def done() -> bool:
            status = await self.ask(
                contract.ROSTER_STATUS, contract.RosterStatusRequest(event_ids=ids), contract.RosterStatusReply
            )
            return not status.missing

        await eventually(done, timeout=15, message="roster events applied")

    def events(self, subject: str) -> list[dict]:
        return [body for s, body in self.published if s == subject]


@asynccontextmanager
async def running_linking(database_url: str, tmp: Path) -> AsyncIterator[Env]:
    """A linking replica on `database_url` with a nats-server of its own, both under `tmp`."""
    server = authed_nats(tmp / "nats")
    settings = linking_app.Settings(
        nats_url=server.url,
        database_url=database_url,
        public_url=PUBLIC_URL,
        data_dir=tmp,
        platform_url="https://platform.example.test",
        # Required outside the default SQLite file (PostgreSQL here).
        linking_code_key=new_key(),
    )
    await asyncio.to_thread(migrate, linking_app, settings)
    runtime = linking_app.build(settings)
    nc = await nats.connect(server.url)
    env = Env(runtime=runtime, nc=nc)

    async def on_event(msg) -> None:
        env.published.append((msg.subject, json.loads(msg.data)))

    await nc.subscribe("linking.>", cb=on_event)
    try:
        async with runtime.running():
            yield env
    finally:
        await nc.close()
        server.stop()


async def watch_email_requests(env: Env) -> Env:
    """Record in `env.requests` what linking asks notify to send, from the first call on."""
    if not hasattr(env, "requests"):
        env.requests = []

        async def on_request(msg) -> None:
            env.requests.append((msg.subject, json.loads(msg.data)))

        await env.nc.subscribe("notify.request.>", cb=on_request)
    return env


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- a school, its codes and its printed sheet ---------------------------------------------------


@dataclass
class School:
    """A school of the test's own, with a trust, in scope for its staff."""

    trust_id: str
    school_id: str
    name: str

    @property
    def scope(self) -> contract.StaffScope:
        return contract.StaffScope(school_ids=[self.school_id])


async def make_school(env: Env, *, pupils: int = 3, name: str = "Oak Primary") -> tuple[School, str, list[str]]:
    """A school with one class of `pupils` pupils, applied; returns the school, class id and pupil ids."""
    school = School(uid("trust"), uid("school"), name)
    class_id = uid("class")
    pupil_ids = [uid("pupil") for _ in range(pupils)]
    events: list[tuple[str, Event]] = [
        (
            platform.SCHOOL_UPSERTED,
            platform.SchoolUpserted(
                trust_id=school.trust_id, school_id=school.school_id, name=name, timezone="Europe/London"
            ),
        ),
        (
            platform.CLASS_UPSERTED,
            platform.ClassUpserted(school_id=school.school_id, class_id=class_id, name="Year 3 Robins"),
        ),
    ]
    for i, pid in enumerate(pupil_ids):
        events.append(
            (
                platform.PUPIL_UPSERTED,
                platform.PupilUpserted(
                    school_id=school.school_id,
                    pupil_id=pid,
                    first_name=f"Amy{i:02d}",
                    last_name=f"Smith{i:02d}",
                    class_ids=[class_id],
                ),
            )
        )
    for subject, ev in events:
        await env.publish(subject, ev)
    await env.applied([ev for _, ev in events])
    return school, class_id, pupil_ids


async def create_codes(
    env: Env, school: School, *, class_id: str | None = None, pupil_id: str | None = None
) -> contract.CreateCodesReply:
    return await env.ask(
        contract.CREATE_CODES,
        contract.CreateCodesRequest(scope=school.scope, actor_id="staff-1", class_id=class_id, pupil_id=pupil_id),
        contract.CreateCodesReply,
    )


async def sheet(env: Env, school: School, class_id: str, fmt: str = "html") -> contract.Document:
    return await env.ask(
        contract.CLASS_SHEET,
        contract.ClassSheetRequest(scope=school.scope, class_id=class_id, format=fmt),
        contract.Document,
    )


def codes_in(html: str) -> list[str]:
    return re.findall(r'class="code">([0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4})<', html)


async def printed_codes(env: Env, school: School, class_id: str) -> list[str]:
    """Create the class's codes and read them off its printed sheet, in the sheet's order."""
    await create_codes(env, school, class_id=class_id)
    return codes_in((await sheet(env, school, class_id)).text)


async def class_view(env: Env, school: School, class_id: str) -> contract.ClassPupilsReply:
    return await env.ask(
        contract.CLASS_PUPILS,
        contract.ClassPupilsRequest(scope=school.scope, class_id=class_id),
        contract.ClassPupilsReply,
    )


# -- parents, links and invitations --------------------------------------------------------------


def parent() -> str:
    return f"parent-{uuid.uuid4().hex[:8]}"


async def redeem(env: Env, code: str, parent_id: str, *, timeout: float = 5.0, **kw) -> contract.RedeemReply:
    kw.setdefault("relationship", "mother")
    kw.setdefault("accept_aup", True)
    return await env.ask(
        contract.REDEEM,
        contract.RedeemRequest(code=code, parent_id=parent_id, **kw),
        contract.RedeemReply,
        timeout=timeout,
    )


async def refused(env: Env, code: str, parent_id: str, *, timeout: float = 5.0, **kw) -> str:
    """The error code of a redemption that must fail."""
    with pytest.raises(RpcError) as info:
        await redeem(env, code, parent_id, timeout=timeout, **kw)
    return info.value.code


async def children(env: Env, parent_id: str) -> list[contract.ChildView]:
    return (
        await env.ask(contract.PARENT_CHILDREN, contract.ParentRequest(parent_id=parent_id), contract.ChildrenReply)
    ).children


async def email_requests(env: Env, kind: str, after: int = 0) -> list[dict] | None:
    """The email requests of `kind` seen by `watch_email_requests` since the `after`-th, or None."""
    found = [body for s, body in env.requests[after:] if s == notify.request_subject(kind)]
    return found or None


async def invite(env: Env, school: School, pupil_id: str, email: str) -> tuple[contract.InvitationView, dict]:
    """Invite and return the invitation and the email request it sent (needs `watch_email_requests`)."""
    before = len(env.requests)
    view = await env.ask(
        contract.INVITE,
        contract.InviteRequest(scope=school.scope, actor_id="head", pupil_id=pupil_id, email=email),
        contract.InvitationView,
    )
    request = (await eventually(lambda: email_requests(env, "invitation", before), timeout=10))[-1]
    return view, request
