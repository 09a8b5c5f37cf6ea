"""A steady stream of parents' journeys, staff removals and platform events against the cluster,
recording every attempt the clients make, so that what they saw during each fault can be told.

A client that gets no answer, a 5xx or a 429 tries again after a moment on the other gateway (as
behind a load balancer); each such attempt is a failure seen by the clients. Each request that
was answered as the contract says (2xx) is *accepted*, and must have its effect once the faults
are over; an attempt whose answer was lost may have had its effect, so its retry accepts what the
contract answers a repeat with (an existing link: 200; a used verification token: 400 once the
account is verified; a removal already made: 404).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import nats
from cluster_harness import PASSWORD, Cluster, School, http_client, uid

from contracts import platform
from contracts.base import utcnow

RETRY_FOR = 180.0  # seconds a journey keeps trying one step before it gives up


class JourneyFailed(Exception):
    """An answer the contract does not allow, or a step that never succeeded."""


@dataclass
class Attempt:
    op: str
    start: float
    end: float
    ok: bool
    detail: str


@dataclass
class Outcome:
    """What one parent's journey did, to be found afterwards."""

    email: str
    parent_id: str
    kept: str  # the pupil linked by the registration's code, still linked at the end
    removed: str  # the pupil linked by code afterwards, then removed by staff
    removal_seen_after: float  # seconds until the other gateway answered 404 for the removed child
    registrations: int = 1  # attempts its registration took (an unanswered one may have registered)


@dataclass
class Recorder:
    attempts: list[Attempt] = field(default_factory=list)
    marks: list[tuple[str, float]] = field(default_factory=list)

    def add(self, op: str, start: float, ok: bool, detail: str = "") -> None:
        self.attempts.append(Attempt(op, start, time.monotonic(), ok, detail))

    def mark(self, name: str) -> float:
        now = time.monotonic()
        self.marks.append((name, now))
        return now

    def window(self, start: float, end: float) -> dict:
        """What the clients saw from `start` to `end` (the attempts that ended then): requests
        served, failed attempts, and when the failures were seen (seconds after `start`: the
        first began, the last ended)."""
        inside = [a for a in self.attempts if start <= a.end < end]
        failed = [a for a in inside if not a.ok]
        out = {"served": len(inside) - len(failed), "failed": len(failed), "from": 0.0, "until": 0.0, "kinds": {}}
        if failed:
            out["from"] = min(a.start for a in failed) - start
            out["until"] = max(a.end for a in failed) - start
            out["kinds"] = dict(Counter(f"{a.op}: {a.detail}" for a in failed).most_common(4))
        return out


class Clients:
    """Both gateways; each request names the gateway it goes to first."""

    def __init__(self, cluster: Cluster, recorder: Recorder) -> None:
        self.cluster = cluster
        self.rec = recorder
        self.http = [http_client(url) for url in cluster.gateways]

    async def close(self) -> None:
        for client in self.http:
            await client.aclose()

    async def request(
        self,
        op: str,
        gw: int,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: dict | None = None,
        accept: frozenset[int] = frozenset({200}),
        on_retry: frozenset[int] = frozenset(),
        tries: list[int] | None = None,
    ) -> httpx.Response:
        """The first answer in `accept` (after a failed attempt, also in `on_retry`); `tries`
        gets how many attempts it took."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        deadline = time.monotonic() + RETRY_FOR
        retried = False
        for attempt in itertools.count():
            if tries is not None:
                tries.append(attempt + 1)
            started = time.monotonic()
            try:
                r = await self.http[gw].request(method, path, headers=headers, json=json)
            except httpx.HTTPError as exc:
                self.rec.add(op, started, False, type(exc).__name__)
            else:
                if r.status_code in accept or (retried and r.status_code in on_retry):
                    self.rec.add(op, started, True)
                    return r
                if r.status_code < 500 and r.status_code != 429:
                    self.rec.add(op, started, False, f"HTTP {r.status_code}")
                    raise JourneyFailed(f"{op} {method} {path} on gateway {gw + 1}: {r.status_code} {r.text[:300]}")
                self.rec.add(op, started, False, f"HTTP {r.status_code}")
            if time.monotonic() > deadline:
                raise JourneyFailed(f"{op} {method} {path}: no success in {RETRY_FOR:.0f}s")
            retried = True
            gw = 1 - gw
            await asyncio.sleep(min(2.0, 0.2 * (attempt + 1)))
        raise AssertionError("unreachable")


async def _until(check, *, what: str, timeout: float = RETRY_FOR, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise JourneyFailed(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(interval)


async def verify_email(c: Clients, email: str, gw: int) -> None:
    """Follow the newest verification link sent to `email`. A registration whose answer was lost
    and was sent again started the registration afresh (the contract: the newest registration
    is the one), so the link of an earlier email no longer works; the newest one does."""
    cluster = c.cluster
    used: set[str] = set()
    deadline = time.monotonic() + RETRY_FOR
    while True:

        async def mailed() -> list[str]:
            return [t for t in cluster.verification_tokens(email) if t not in used]

        token = (await _until(mailed, what=f"a verification email to {email}"))[-1]
        used.add(token)
        r = await c.request(
            "verify",
            gw,
            "POST",
            "/api/v1/auth/verify",
            json={"token": token},
            accept=frozenset({200, 400}),
        )
        if r.status_code == 200:
            return
        login = await c.request(
            "login",
            gw,
            "POST",
            "/api/v1/auth/login",
            json={"email": email, "password": PASSWORD},
            accept=frozenset({200, 403}),
        )
        if login.status_code == 200:
            return  # an earlier attempt whose answer was lost verified it
        if time.monotonic() > deadline:
            raise JourneyFailed(
                f"verify: {len(cluster.verification_tokens(email))} verification emails to {email}, none worked"
            )


async def journey(c: Clients, school: School, n: int, kept: str, removed: str) -> Outcome:
    """Register with one child's code on one gateway, verify and sign in on the other, link a
    second child by code, see both; staff remove the second on one gateway, and the parent's next
    request on the other gateway no longer sees it."""
    gw = n % 2
    other = 1 - gw
    email = f"{uid('parent')}@example.org"
    registered: list[int] = []
    await c.request(
        "register",
        gw,
        "POST",
        "/api/v1/auth/register",
        json={
            "email": email,
            "password": PASSWORD,
            "name": "Pat Parent",
            "accept_aup": True,
            "code": school.codes[kept],
            "relationship": "mother",
        },
        accept=frozenset({202}),
        tries=registered,
    )
    await verify_email(c, email, other)
    login = await c.request("login", other, "POST", "/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    session = login.json()["access_token"]
    me = await c.request("me", gw, "GET", "/api/v1/me", token=session)
    parent_id = me.json()["id"]
    await c.request(
        "link",
        other,
        "POST",
        "/api/v1/me/children",
        token=session,
        json={"code": school.codes[removed], "relationship": "mother", "accept_aup": True},
        accept=frozenset({201}),
        on_retry=frozenset({200}),
    )

    async def both_linked() -> bool:
        r = await c.request("children", gw, "GET", "/api/v1/me/children", token=session)
        status = {child["pupil_id"]: child["status"] for child in r.json()}
        return status == {kept: "linked", removed: "linked"}

    await _until(both_linked, what=f"{email}'s two children linked")
    overview = await c.request("overview", other, "GET", f"/api/v1/me/children/{kept}/overview", token=session)
    assert overview.json()["pupil_id"] == kept
    await c.request(
        "remove",
        gw,
        "DELETE",
        f"/api/v1/pupils/{removed}/parents/{parent_id}",
        token=school.teacher_token,
        accept=frozenset({204}),
        on_retry=frozenset({404}),
    )
    removed_at = time.monotonic()

    async def gone() -> bool:
        r = await c.request(
            "overview",
            other,
            "GET",
            f"/api/v1/me/children/{removed}/overview",
            token=session,
            accept=frozenset({200, 404}),
        )
        return r.status_code == 404

    await _until(gone, what=f"{removed} gone for {email}", interval=0.02)
    return Outcome(email, parent_id, kept, removed, time.monotonic() - removed_at, registrations=len(registered))


@dataclass
class Load:
    """Journeys on `workers` parents at a time and platform events at `events_per_second`."""

    cluster: Cluster
    school: School
    workers: int = 3
    events_per_second: float = 8.0
    rec: Recorder = field(default_factory=Recorder)
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    acked: dict[str, platform.StarsAwarded] = field(default_factory=dict)
    homework: dict[str, platform.HomeworkAssigned] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _journeys: itertools.count = field(default_factory=itertools.count)

    def start(self) -> None:
        self.clients = Clients(self.cluster, self.rec)
        for _ in range(self.workers):
            self._tasks.append(asyncio.create_task(self._parents()))
        self._tasks.append(asyncio.create_task(self._platform()))

    async def stop(self) -> None:
        """Let every journey under way finish; then stop."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.clients.close()

    async def _parents(self) -> None:
        pupils = self.school.pupils
        while not self._stop.is_set():
            n = next(self._journeys)
            kept, removed = pupils[(2 * n) % len(pupils)], pupils[(2 * n + 1) % len(pupils)]
            try:
                self.outcomes.append(await journey(self.clients, self.school, n, kept, removed))
            except (JourneyFailed, AssertionError, KeyError) as exc:
                self.failures.append(f"journey {n}: {exc}")

    async def _platform(self) -> None:
        """The learning platform: stars and homework for the journeys' pupils, each published until
        JetStream acknowledges it (a retry keeps its Nats-Msg-Id, as a platform's publisher does)."""

        async def quiet(_exc: Exception) -> None:
            pass

        nc = await nats.connect(
            self.cluster.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=quiet
        )
        js = nc.jetstream(timeout=5)
        pupils = self.school.pupils
        try:
            for n in itertools.count():
                if self._stop.is_set():
                    break
                pupil = random.choice(pupils)
                if n % 4 == 3:
                    hw = platform.HomeworkAssigned(
                        homework_id=uid("hw"),
                        school_id=self.school.school_id,
                        pupil_ids=[pupil],
                        title="Spellings",
                        due_at=utcnow(),
                    )
                    subject, event = platform.HOMEWORK_ASSIGNED, hw
                else:
                    subject, event = (
                        platform.STARS_AWARDED,
                        platform.StarsAwarded(
                            award_id=uid("award"), pupil_id=pupil, stars=1 + n % 3, reason="Kindness"
                        ),
                    )
                body = event.model_dump_json().encode()
                deadline = time.monotonic() + RETRY_FOR
                while True:
                    started = time.monotonic()
                    try:
                        await js.publish(subject, body, headers={"Nats-Msg-Id": event.event_id})
                    except Exception as exc:  # noqa: BLE001 - a publisher retries whatever went wrong
                        self.rec.add("platform event", started, False, type(exc).__name__)
                        if time.monotonic() > deadline:
                            self.failures.append(f"event {event.event_id} never acknowledged")
                            break
                        await asyncio.sleep(0.5)
                        continue
                    self.rec.add("platform event", started, True)
                    if isinstance(event, platform.StarsAwarded):
                        self.acked[event.award_id] = event
                    else:
                        self.homework[event.homework_id] = event
                    break
                await asyncio.sleep(1 / self.events_per_second)
        finally:
            await nc.close()
