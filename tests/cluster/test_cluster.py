"""Many machines, on one (docs/operations.md, "A NATS cluster"; `make cluster-test`): three
nats-servers clustered with JetStream and R3 streams, PostgreSQL, two replicas of every part and
two gateways (see `cluster_harness`). In order:

1. streams an earlier deployment left with one replica are brought to three at start-up, their
   events kept;
2. journeys spread across both gateways behave as on one machine;
3. every platform event is applied once whichever replica takes it, also one published twice;
4. under a steady load, SIGKILL of a NATS server (then restarted), SIGKILL of one replica of each
   part in turn (then restarted), and a restart of the server leading a stream: nothing accepted
   is lost, nothing is done twice, each email is sent once. What the clients saw during each
   fault is printed, not asserted (the machine is shared).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import natsauth
import pytest
from cluster_harness import PARTS, STREAM_MAX_BYTES, Cluster, School, http_client, metric, uid
from cluster_load import Clients, Load, Recorder, journey
from helpers import eventually

from contracts import platform
from contracts.base import utcnow
from contracts.streams import ALL as ALL_STREAMS

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.timeout(1200)]

PUPILS = 120  # in 4 classes; each journey takes two, each printed code takes up to 20 carers


class Run:
    """The cluster and what the tests share."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.school: School | None = None
        self.before_upgrade: str = ""
        self.started_in = 0.0


@pytest.fixture(scope="module")
async def run(pg, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Run]:
    # The parts' logs stay after the run, where a failure can be read (test-artifacts/ is not kept in git).
    logs = Path(__file__).resolve().parents[2] / "test-artifacts" / "cluster-logs"
    shutil.rmtree(logs, ignore_errors=True)
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), pg, logs=logs)
    r = Run(cluster)
    try:
        await cluster.wait_nats()
        await cluster.connect()
        # As an earlier deployment left them: one replica each, a smaller size limit, and an event
        # waiting in PLATFORM that nothing has applied yet.
        await cluster.create_streams_as_before(replicas=1, max_bytes=STREAM_MAX_BYTES // 2)
        early = platform.SchoolUpserted(
            trust_id=uid("trust"), school_id=uid("early"), name="Early", timezone="Europe/London"
        )
        await cluster.publish(platform.SCHOOL_UPSERTED, early)
        r.before_upgrade = early.event_id
        await asyncio.to_thread(cluster.migrate)
        r.started_in = await cluster.start_parts()
        print(
            f"\ncluster: 3 nats-servers, {sum(len(v) for v in cluster.replicas.values())} replicas ready in {r.started_in:.1f}s"
        )
        yield r
    finally:
        if cluster.nc is not None:
            await cluster.nc.close()
        codes = await asyncio.to_thread(cluster.stop)
        print("exit status on SIGTERM: " + ", ".join(f"{k} {v}" for k, v in codes.items()))
        assert not natsauth.violations, natsauth.violations


async def school_of(run: Run) -> School:
    """The load's school: 120 pupils with printed codes, staff signed in, 20 carers per code."""
    if run.school is None:
        c = run.cluster
        school = await c.roster(uid("trust"), "Oak Primary", classes=4, per_class=PUPILS // 4)
        async with http_client(c.gateways[0], timeout=60) as http:
            school.teacher_token = await c.staff_token(http, school.school_id, "teacher")
            school.admin_token = await c.staff_token(http, school.school_id, "school_admin")
            put = await http.put(
                f"/api/v1/schools/{school.school_id}/settings",
                headers={"Authorization": f"Bearer {school.admin_token}"},
                json={"max_carers_per_code": 20},
            )
            assert put.status_code == 200, put.text
            await c.printed_codes(http, school)
        assert len(school.codes) == PUPILS
        run.school = school
    return run.school


# -- 1. streams ----------------------------------------------------------------------------------


async def test_streams_left_with_one_replica_are_brought_to_three_at_start_up(run: Run) -> None:
    c = run.cluster
    leaders = []
    for d in ALL_STREAMS:
        info = await c.stream_info(d.name)
        assert info.config.num_replicas == 3, d.name
        assert info.config.max_bytes == STREAM_MAX_BYTES, d.name
        assert info.cluster is not None and info.cluster.leader
        assert len(info.cluster.replicas or []) == 2, f"{d.name}: {info.cluster}"
        leaders.append(f"{d.name} R3 (leader {info.cluster.leader})")
    print("\nstreams at start-up, from R1: " + ", ".join(leaders))
    # The event that waited in the R1 stream was kept through the change, and applied.
    from contracts import linking as lc
    from contracts.kit.rpc import call

    async def applied() -> bool:
        status = await call(c.nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=[run.before_upgrade]), timeout=5)
        return not status.missing

    await eventually(applied, timeout=60, interval=0.5, message="the event published before the upgrade applied")


# -- 2. journeys across gateways ---------------------------------------------------------------------


async def test_journeys_spread_across_both_gateways_behave_as_one(run: Run) -> None:
    school = await school_of(run)
    clients = Clients(run.cluster, Recorder())
    try:
        outcomes = []
        for n in range(4):
            kept, removed = school.pupils[-1 - 2 * n], school.pupils[-2 - 2 * n]
            outcomes.append(await journey(clients, school, n, kept, removed))
    finally:
        await clients.close()
    failed = [a for a in clients.rec.attempts if not a.ok]
    assert not failed, failed
    seen = [round(o.removal_seen_after, 3) for o in outcomes]
    print(f"\nstaff removal on one gateway, seen by the parent's next request on the other after {seen} s")
    # The contract: removing access takes effect within one second on every other replica.
    assert max(seen) < 1.0


# -- 3. platform events once -------------------------------------------------------------------------


def applied_by_replica(c: Cluster, consumer: str, part: str) -> list[float]:
    return [metric(r.metrics(), "portal_events_applied_total", consumer=consumer) for r in c.replicas[part]]


async def test_every_platform_event_lands_once_whichever_replica_takes_it(run: Run) -> None:
    c = run.cluster
    school = await school_of(run)
    before = applied_by_replica(c, "overview-platform", "overview")
    events = []
    for n in range(300):
        pupil = school.pupils[n % len(school.pupils)]
        if n % 3 == 0:
            events.append((platform.STARS_AWARDED, platform.StarsAwarded(award_id=uid("a"), pupil_id=pupil, stars=2)))
        elif n % 3 == 1:
            events.append((platform.MESSAGE_DELIVERED, platform.MessageDelivered(message_id=uid("m"), pupil_id=pupil)))
        else:
            hw = platform.HomeworkAssigned(
                homework_id=uid("hw"), school_id=school.school_id, pupil_ids=[pupil], title="Maths", due_at=utcnow()
            )
            events.append((platform.HOMEWORK_ASSIGNED, hw))
    for subject, ev in events:
        await c.publish(subject, ev)
    # A publisher that retries after the stream's duplicate window: the same events again, which
    # the stream cannot recognise (another Nats-Msg-Id); the consumers must.
    for subject, ev in events[::2]:
        await c.publish(subject, ev, msg_id=f"again-{ev.event_id}")
    awards = [ev.award_id for _, ev in events if isinstance(ev, platform.StarsAwarded)]
    messages = [ev.message_id for _, ev in events if isinstance(ev, platform.MessageDelivered)]
    homework = [ev.homework_id for _, ev in events if isinstance(ev, platform.HomeworkAssigned)]

    async def rows() -> tuple:
        stars = await c.sql(
            "overview", "SELECT count(*), coalesce(sum(stars), 0) FROM star_awards WHERE award_id = ANY($1)", awards
        )
        delivered = await c.sql("overview", "SELECT count(*) FROM messages WHERE message_id = ANY($1)", messages)
        assigned = await c.sql("overview", "SELECT count(*) FROM homework_pupils WHERE homework_id = ANY($1)", homework)
        return (*stars[0], delivered[0][0], assigned[0][0])

    async def all_applied() -> bool:
        return await rows() == (100, 200, 100, 100)

    await eventually(all_applied, timeout=90, interval=0.5, message="every event applied")
    # Both replicas' counters settle (one may still be applying the repeats).
    await asyncio.sleep(2)
    after = applied_by_replica(c, "overview-platform", "overview")
    by_replica = [int(a - b) for a, b in zip(after, before, strict=True)]
    print(f"\n300 events (150 of them published twice) applied by the two overview replicas: {by_replica}")
    # overview keeps no processed-event record: a repeat may be applied again, onto the same
    # row with the same values (each award counted once, each message and homework one row).
    assert len(events) <= sum(by_replica) <= len(events) + len(events[::2]), by_replica
    assert await rows() == (100, 200, 100, 100)


# -- 4. faults under load -------------------------------------------------------------------------------


async def wait_ready(c: Cluster, timeout: float = 120) -> float:
    started = time.monotonic()
    await eventually(
        lambda: all(r.ready() for r in c.all_replicas()), timeout=timeout, interval=0.5, message="every replica ready"
    )
    return time.monotonic() - started


async def streams_current(c: Cluster) -> bool:
    for d in ALL_STREAMS:
        info = await c.stream_info(d.name)
        if info.cluster is None or not info.cluster.leader:
            return False
        if len(info.cluster.replicas or []) != 2 or not all(p.current for p in info.cluster.replicas):
            return False
    return True


async def test_faults_under_load_lose_nothing_and_do_nothing_twice(run: Run) -> None:
    c = run.cluster
    school = await school_of(run)
    load = Load(c, school)
    mail_before = len(c.smtp.messages)
    faults: list[tuple[str, float, float, str]] = []  # (fault, start, end, note)
    load.start()
    try:
        await asyncio.sleep(10)
        calm = load.rec.mark("calm")

        # A NATS server that leads no stream dies; 10 s later it comes back.
        leaders = {(await c.stream_info(d.name)).cluster.leader for d in ALL_STREAMS}
        node = next((s for s in c.nats if f"portal-{s.port}" not in leaders), c.nats[1])
        start = load.rec.mark("kill nats")
        node.stop(kill=True)
        await asyncio.sleep(10)
        node.start()
        back = time.monotonic()
        await c.wait_nats(timeout=120)
        await eventually(lambda: streams_current(c), timeout=120, interval=1, message="the streams current again")
        note = f"started again after 10 s; every stream's replicas current {time.monotonic() - back:.1f} s later"
        await asyncio.sleep(5)
        faults.append((f"SIGKILL nats-server {node.port}", start, time.monotonic(), note))

        # One replica of each part in turn; each started again 8 s later.
        for part in PARTS:
            victim = c.replicas[part][0]
            start = load.rec.mark(f"kill {part}")
            victim.kill()
            await asyncio.sleep(8)
            victim.start()
            took = await wait_ready(c)
            faults.append(
                (
                    f"SIGKILL {victim.name}",
                    start,
                    time.monotonic(),
                    f"started again after 8 s; ready {took:.1f} s later",
                )
            )
            await asyncio.sleep(3)

        # The server leading LINKING (and whatever else it leads) is killed and started again at once.
        info = await c.stream_info("LINKING")
        leader = c.node_of(info.cluster.leader)
        led = [d.name for d in ALL_STREAMS if (await c.stream_info(d.name)).cluster.leader == info.cluster.leader]
        start = load.rec.mark("restart leader")
        leader.stop(kill=True)
        leader.start()
        await c.wait_nats(timeout=120)
        await eventually(lambda: streams_current(c), timeout=120, interval=1, message="the streams current again")
        current = time.monotonic() - start
        new_leader = (await c.stream_info("LINKING")).cluster.leader
        note = (
            f"it led {', '.join(led)}; LINKING led by {new_leader} after; every stream's replicas current {current:.1f} s "
            "after the kill"
        )
        await asyncio.sleep(5)
        faults.append((f"SIGKILL + restart nats-server {leader.port} (leader)", start, time.monotonic(), note))
        await asyncio.sleep(5)
    finally:
        await load.stop()
    end = time.monotonic()

    # -- figures ---------------------------------------------------------------------------------------
    lines = [
        "",
        "faults under load, as the clients saw them (a client retries a failed request at once on the other gateway;",
        "2 cores shared with other work: figures printed, not asserted):",
    ]
    baseline = load.rec.window(calm - 10, calm)
    lines.append(
        f"  first 10 s, no fault: {baseline['served']} requests served ({baseline['served'] / 10:.0f}/s), "
        f"{baseline['failed']} failed {baseline['kinds'] or ''}"
    )
    lines.append(f"  {'fault':<44} {'served':>6} {'failed':>6}  {'failures seen (s after the fault)':<34}  recovery")
    for name, start, stop, note in faults:
        w = load.rec.window(start, stop)
        seen = f"from {w['from']:+.1f} to {w['until']:+.1f} ({w['until'] - w['from']:.1f} s)" if w["failed"] else "none"
        lines.append(f"  {name:<44} {w['served']:>6} {w['failed']:>6}  {seen:<34}  {note}")
        if w["kinds"]:
            lines.append(f"  {'':<44} {'':>6} {'':>6}  {w['kinds']}")
    total = load.rec.window(0, end + 1)
    lines.append(
        f"  whole run: {total['served']} requests served, {total['failed']} failed attempts (each retried), "
        f"{len(load.outcomes)} journeys completed, {len(load.acked) + len(load.homework)} platform events acknowledged"
    )
    slow = [o for o in load.outcomes if o.removal_seen_after >= 1.0]
    lines.append(
        f"  staff removals seen by the parent's next request on the other gateway after 1 s or more: "
        f"{len(slow)} of {len(load.outcomes)}"
    )
    print("\n".join(lines))

    assert not load.failures, load.failures[:10]
    assert len(load.outcomes) >= 10

    # Everything at rest (`portal status`): every part with both replicas, no outbox or consumer
    # backlog, no dead letter.
    async def at_rest() -> dict | None:
        done = await asyncio.to_thread(c.portal_status)
        if done.returncode != 0:
            return None
        state = json.loads(done.stdout)
        parts = state["parts"]
        if any(p["replicas"] != 2 or p["outbox_pending"] for p in parts.values()):
            return None
        if any(con["pending"] for p in parts.values() for con in p["consumers"]):
            return None
        return state

    state = await eventually(at_rest, timeout=120, interval=2, message="`portal status`: all at rest")
    assert state["ok"] and not state["dead_letters"], state["dead_letters"]

    await check_nothing_lost_nothing_twice(c, load, mail_before)

    # NATS refused no part anything its user needs, through every fault; a reply to a request
    # that came before a reconnect is refused by the new server, and said to be that.
    refused, lost = [], 0
    for r in c.all_replicas():
        text = r.log.read_text(errors="replace")
        refused += [line for line in text.splitlines() if "nats_permission_refused" in line]
        lost += text.count("nats_reply_lost_on_reconnect")
    print(f"  replies lost to a reconnect (the caller asked again): {lost}")
    assert not refused, refused[:5]


async def check_nothing_lost_nothing_twice(c: Cluster, load: Load, mail_before: int) -> None:
    parents = [o.parent_id for o in load.outcomes]
    # Links: the kept child linked once, the removed child's link removed, no other row.
    links = await c.sql(
        "linking",
        "SELECT parent_id, pupil_id, status, removed_at, removed_by FROM links WHERE parent_id = ANY($1)",
        parents,
    )
    by_pair = Counter((row["parent_id"], row["pupil_id"]) for row in links)
    assert all(n == 1 for n in by_pair.values()), [k for k, n in by_pair.items() if n > 1]
    state = {(row["parent_id"], row["pupil_id"]): row for row in links}
    for o in load.outcomes:
        kept, removed = state[(o.parent_id, o.kept)], state[(o.parent_id, o.removed)]
        assert kept["status"] == "linked" and kept["removed_at"] is None, dict(kept)
        assert removed["removed_at"] is not None and removed["removed_by"] == "staff", dict(removed)
    # Audit: each action once per parent and pupil.
    audit = await c.sql("linking", "SELECT pupil_id, parent_id, action FROM audit WHERE parent_id = ANY($1)", parents)
    actions = Counter((row["pupil_id"], row["parent_id"], row["action"]) for row in audit)
    assert all(n == 1 for n in actions.values()), [k for k, n in actions.items() if n > 1]
    for o in load.outcomes:
        assert actions[(o.kept, o.parent_id, "link_created")] == 1
        assert actions[(o.removed, o.parent_id, "link_created")] == 1
        assert actions[(o.removed, o.parent_id, "link_removed")] == 1
    # Accounts: one each, verified.
    accounts = await c.sql(
        "identity", "SELECT email FROM accounts WHERE email = ANY($1)", [o.email for o in load.outcomes]
    )
    assert sorted(r["email"] for r in accounts) == sorted(o.email for o in load.outcomes)
    # Emails: each sent once (by Message-ID); one verification email per parent.
    messages = c.smtp.messages
    ids = Counter(m.message_id for m in messages)
    twice = {k: n for k, n in ids.items() if n > 1}
    assert not twice, twice
    for o in load.outcomes:
        # One registration, one email; a registration sent again (its answer lost) starts afresh,
        # with an email of its own.
        assert 1 <= len(c.verification_tokens(o.email)) <= o.registrations, (o.email, o.registrations)
    # Platform events: every acknowledged one applied once.
    awards = await c.sql(
        "overview", "SELECT award_id, stars FROM star_awards WHERE award_id = ANY($1)", list(load.acked)
    )
    assert {r["award_id"]: r["stars"] for r in awards} == {k: e.stars for k, e in load.acked.items()}
    homework = await c.sql(
        "overview", "SELECT homework_id FROM homework_pupils WHERE homework_id = ANY($1)", list(load.homework)
    )
    assert sorted(r["homework_id"] for r in homework) == sorted(load.homework)
    # overview keeps no processed-event record: its rows, one per fact with the fact's values,
    # are what "applied once" means there (a redelivery lands on the same row).
    print(
        f"  after the faults: {len(load.outcomes)} parents each linked once and removed once, "
        f"{len(messages) - mail_before} emails each sent once, {len(load.acked)} star awards and "
        f"{len(load.homework)} homework events each applied once"
    )
