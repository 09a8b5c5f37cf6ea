"""Throughput per core of each part, measured on this machine: what docs/scaling.md sizes a
1,000-school deployment from.

    make bench-cluster                       # about 5 minutes; needs wrk and the machine's PostgreSQL
    .venv/bin/python bench/cluster_throughput.py --events 20000 --parents 1000   # a quicker look

It runs the portal as `make cluster-test` does (tests/cluster/cluster_harness.py): three
nats-servers clustered with JetStream, R3 streams with `sync_interval: always`, the generated
users, PostgreSQL (one database per service), every part a `portal service NAME` process, here
one replica each, and two gateways: one as deployed (its caches on) and one with every cache
off (each request asks identity, linking and overview). Then, one after another:

1. roster: 20 schools of 250 pupils published to PLATFORM; linking and overview apply them;
2. platform events: homework, messages and stars (a morning's mix) for those pupils; overview
   applies them;
3. emails: password-changed emails requested on NOTIFY_REQUESTS; notify sends them to an SMTP
   sink in this process;
4. `GET /api/v1/me/overview` on the gateway without caches, wrk rotating over every parent
   (seeded straight into the databases: sessions and links), so each request costs a session
   check (identity), the parent's children (linking) and the overviews (overview);
5. the same on the gateway as deployed, after a warm-up: parents coming back, served from the
   gateway's memory;
6. sign-ins with identity's production argon2id settings.

For each step, the CPU time (user + system) each process spent, from /proc: the parts, the
three nats-servers, and the PostgreSQL backends of the parts' connections. A part's throughput
per core is what it did per second of its own CPU time, which holds on a shared machine where
the wall-clock rates do not. Prints one table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The cluster harness and its helpers live with the tests.
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "cluster")]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

PASSWORD = "bench-parent-password"
LUA = """
local requests = {}
local i = 0
function init(args)
  for token in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("GET", "/api/v1/me/overview", {["Authorization"] = "Bearer " .. token})
  end
  i = math.random(#requests)
end
function request()
  i = i % #requests + 1
  return requests[i]
end
"""


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used, its threads included."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """CPU seconds of every process of the run, by name, between two snapshots."""

    def __init__(self, cluster, pg_pids) -> None:
        self.cluster = cluster
        self.pg_pids = pg_pids

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part, replicas in self.cluster.replicas.items():
            for r in replicas:
                if r.proc is not None:
                    name = "gateway (no caches)" if part == "gateway" and r.index == 1 else part
                    out[name] = out.get(name, 0.0) + cpu_of(r.proc.pid)
        out["nats-server ×3"] = sum(cpu_of(s.proc.pid) for s in self.cluster.nats if s.proc is not None)
        out["postgresql"] = sum(cpu_of(pid) for pid in self.pg_pids())
        out["this bench (load)"] = sum(os.times()[:4])  # wrk included, once it has exited
        return out

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}


async def pg_backends(cluster) -> list[int]:
    """The PostgreSQL backends serving the parts' databases now."""
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
    try:
        names = [url.rsplit("/", 1)[1] for url in cluster.databases.values()]
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = ANY($1)", names)
        return [r["pid"] for r in rows]
    finally:
        await conn.close()


async def wait_consumed(cluster, stream: str, durable: str, timeout: float = 600) -> None:
    js = cluster.nc.jetstream(timeout=10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js.consumer_info(stream, durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{durable} still has messages after {timeout}s")


async def publish_all(cluster, messages: list[tuple[str, bytes, str]], *, in_flight: int = 256) -> None:
    """Every message to JetStream, acknowledged, `in_flight` at a time."""
    js = cluster.nc.jetstream(timeout=30)
    pending = iter(messages)

    async def worker() -> None:
        for subject, body, msg_id in pending:
            await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})

    await asyncio.gather(*(worker() for _ in range(in_flight)))


def event(subject: str, **fields: object) -> tuple[str, bytes, str]:
    event_id = uuid.uuid4().hex
    body = {"event_id": event_id, "occurred_at": datetime.now(UTC).isoformat(), **fields}
    return subject, json.dumps(body).encode(), event_id


def roster_events(schools: int, per_school: int, class_size: int = 25) -> tuple[list, dict[str, str], list[str]]:
    out, school_of = [], {}
    for s in range(schools):
        school = f"bench-s{s:03d}"
        out.append(
            event(
                "platform.roster.school.upserted.v1",
                trust_id="bench-trust",
                school_id=school,
                name=f"School {s}",
                timezone="Europe/London",
            )
        )
        classes = [f"{school}-c{c:02d}" for c in range(per_school // class_size)]
        for class_id in classes:
            out.append(event("platform.roster.class.upserted.v1", school_id=school, class_id=class_id, name=class_id))
        for p in range(per_school):
            pupil = f"{school}-p{p:04d}"
            school_of[pupil] = school
            out.append(
                event(
                    "platform.roster.pupil.upserted.v1",
                    school_id=school,
                    pupil_id=pupil,
                    first_name="Pupil",
                    last_name=str(p),
                    class_ids=[classes[p // class_size]],
                )
            )
    return out, school_of, list(school_of)


def platform_events(n: int, school_of: dict[str, str], rng: random.Random) -> list:
    """A morning's mix: homework set to classes of pupils, completions, messages and stars."""
    pupils = list(school_of)
    out, homework = [], []
    for k in range(max(1, n // 50)):
        members = rng.sample(pupils, 25)
        hw = f"hw-{k}"
        homework.append((hw, members))
        due = (datetime.now(UTC) + timedelta(days=rng.uniform(-2, 7))).isoformat()
        out.append(
            event(
                "platform.homework.assigned.v1",
                homework_id=hw,
                school_id=school_of[members[0]],
                pupil_ids=members,
                title=f"Homework {k}",
                due_at=due,
            )
        )
    while len(out) < n:
        roll = rng.random()
        if roll < 0.3:
            hw, members = rng.choice(homework)
            out.append(event("platform.homework.completed.v1", homework_id=hw, pupil_id=rng.choice(members)))
        elif roll < 0.6:
            out.append(event("platform.message.delivered.v1", message_id=uuid.uuid4().hex, pupil_id=rng.choice(pupils)))
        else:
            out.append(
                event(
                    "platform.stars.awarded.v1",
                    award_id=uuid.uuid4().hex,
                    pupil_id=rng.choice(pupils),
                    stars=rng.randint(1, 3),
                    reason="bench",
                )
            )
    return out


async def seed_parents(cluster, parents: int, school_of: dict[str, str], rng: random.Random) -> list[str]:
    """Parents with a session and 1–3 linked children each, straight into identity and linking
    (hashing thousands of passwords is not what is measured); their bearer tokens."""
    import asyncpg
    from argon2 import PasswordHasher

    from identity.service import digest

    now = datetime.now(UTC)
    # identity's production parameters (its defaults): each sign-in below costs what it would.
    password_hash = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=4).hash(PASSWORD)
    pupils = list(school_of)
    tokens, accounts, sessions, links = [], [], [], []
    for i in range(parents):
        pid, token = uuid.uuid4().hex, secrets.token_urlsafe(32)
        tokens.append(token)
        email = f"parent{i}@bench.example"
        accounts.append((pid, "parent", email, email, f"Parent {i}", password_hash, now, now, now))
        sessions.append((uuid.uuid4().hex, pid, digest(token), now, now, 7 * 24 * 3600, now + timedelta(days=30)))
        k = 1 if i % 10 < 6 else 2 if i % 10 < 9 else 3
        first = pupils[i % len(pupils)]
        school = school_of[first]
        siblings = [p for p in rng.sample(pupils, 60) if school_of[p] == school and p != first][: k - 1]
        for pupil in [first, *siblings]:
            links.append(
                (
                    uuid.uuid4().hex,
                    pid,
                    pupil,
                    school,
                    "mother",
                    "linked",
                    "printed",
                    "bench",
                    f"{pid}:{pupil}",
                    now,
                    now,
                )
            )

    async def write(service: str, statements: list[tuple[str, list[tuple]]]) -> None:
        conn = await asyncpg.connect(cluster.databases[service].replace("postgresql+asyncpg://", "postgresql://"))
        try:
            for sql, rows in statements:
                await conn.executemany(sql, rows)
            await conn.execute("ANALYZE")
        finally:
            await conn.close()

    await write(
        "identity",
        [
            (
                "INSERT INTO accounts (id, role, email, email_key, name, password_hash, verified_at, created_at, "
                "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                accounts,
            ),
            (
                "INSERT INTO sessions (id, account_id, token_hash, created_at, last_seen_at, idle_seconds, "
                "absolute_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                sessions,
            ),
        ],
    )
    await write(
        "linking",
        [
            (
                "INSERT INTO links (id, parent_id, pupil_id, school_id, relationship, status, via, code_id, live_key, "
                "created_at, activated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                links,
            )
        ],
    )
    await write("overview", [])
    return tokens


def wrk(port: int, tokens_file: Path, seconds: float, lua: Path) -> dict:
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds:g}s", "--latency", "--timeout", "5s", "-s", str(lua)]
    cmd += [f"http://127.0.0.1:{port}", "--", str(tokens_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    import re

    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(out + done.stderr)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))
    return {
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "p50": lat.get("50", "?"),
        "p99": lat.get("99", "?"),
    }


async def logins(cluster, n: int, concurrency: int = 2) -> int:
    from cluster_harness import http_client

    ok = 0
    queue = iter(range(n))

    async def worker() -> None:
        nonlocal ok
        async with http_client(cluster.gateways[0], timeout=60) as http:
            for i in queue:
                r = await http.post(
                    "/api/v1/auth/login", json={"email": f"parent{i}@bench.example", "password": PASSWORD}
                )
                ok += r.status_code == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def main(opts: argparse.Namespace) -> None:
    import conftest  # the tests' PostgreSQL databases and NATS users
    from cluster_harness import Cluster

    rng = random.Random(19)
    pg = conftest.PgDatabases()
    tmp = Path(tempfile.mkdtemp(prefix="portal-bench-cluster-"))
    cluster = Cluster(tmp, pg, logs=ROOT / "test-artifacts" / "bench-cluster-logs")
    for part in ("identity", "linking", "notify", "overview"):
        del cluster.replicas[part][1:]
    # identity as deployed (argon2id at its defaults); the gateway without caches.
    for key in ("TIME_COST", "MEMORY_KIB", "PARALLELISM"):
        cluster.replicas["identity"][0].env.pop(f"PORTAL_IDENTITY_ARGON2_{key}", None)
    for r in cluster.all_replicas():
        r.env["PORTAL_LOG_LEVEL"] = "WARNING"
    cold = cluster.replicas["gateway"][1]
    cold.env.update(PORTAL_SESSION_CACHE_SECONDS="0", PORTAL_LINKS_CACHE_SECONDS="0", PORTAL_OVERVIEW_CACHE_SECONDS="0")
    rows: list[tuple[str, str, int, float, dict[str, float], tuple[str, ...]]] = []
    backends: list[int] = []
    meter = Meter(cluster, lambda: backends)

    async def measure(what: str, unit: str, action, workers: tuple[str, ...]) -> object:
        nonlocal backends
        backends = await pg_backends(cluster)
        before, started = meter.snapshot(), time.monotonic()
        count = await action()
        wall = time.monotonic() - started
        backends = sorted(set(backends) | set(await pg_backends(cluster)))
        spent = Meter.spent(before, meter.snapshot())
        rows.append((what, unit, count, wall, spent, workers))
        print(f"  {what}: {count:,} {unit} in {wall:.1f}s ({count / wall:,.0f}/s wall)", flush=True)
        return count

    try:
        await cluster.wait_nats()
        await cluster.connect()
        await asyncio.to_thread(cluster.migrate)
        took = await cluster.start_parts()
        print(f"cluster ready in {took:.1f}s (load average {os.getloadavg()[0]:.1f})", flush=True)

        events, school_of, pupils = roster_events(opts.schools, opts.pupils_per_school)

        async def roster() -> int:
            await publish_all(cluster, events)
            await wait_consumed(cluster, "PLATFORM", "linking-roster")
            await wait_consumed(cluster, "PLATFORM", "overview-platform")
            return len(events)

        await measure(
            "roster events applied by linking and overview",
            "events",
            roster,
            ("linking", "overview", "nats-server ×3", "postgresql"),
        )
        tokens = await seed_parents(cluster, opts.parents, school_of, rng)
        tokens_file = tmp / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        lua = tmp / "rotate.lua"
        lua.write_text(LUA)
        activity = platform_events(opts.events, school_of, rng)

        async def absorb() -> int:
            await publish_all(cluster, activity)
            await wait_consumed(cluster, "PLATFORM", "overview-platform")
            return len(activity)

        await measure(
            "platform events applied by overview", "events", absorb, ("overview", "nats-server ×3", "postgresql")
        )

        from contracts import notify as contract

        requests = [
            contract.PasswordChangedEmail(to=f"bench{i}@mail.example", reset_url="http://portal.test/reset-password")
            for i in range(opts.emails)
        ]

        async def emails() -> int:
            before = len(cluster.smtp.messages)
            await publish_all(
                cluster,
                [(contract.request_subject(r.kind), r.model_dump_json().encode(), r.event_id) for r in requests],
            )
            while len(cluster.smtp.messages) - before < len(requests):
                await asyncio.sleep(0.2)
            return len(requests)

        await measure("emails sent by notify", "emails", emails, ("notify", "nats-server ×3", "postgresql"))

        cold_results: dict = {}

        async def cold_run() -> int:
            cold_results.update(await asyncio.to_thread(wrk, cold.http_port, tokens_file, opts.seconds, lua))
            return int(cold_results["requests"])

        await measure(
            "GET /me/overview, no gateway cache (session, children, overviews asked)",
            "requests",
            cold_run,
            ("gateway (no caches)", "identity", "linking", "overview", "nats-server ×3", "postgresql"),
        )
        warm_port = cluster.replicas["gateway"][0].http_port
        await asyncio.to_thread(wrk, warm_port, tokens_file, 10, lua)
        warm_results: dict = {}

        async def warm_run() -> int:
            warm_results.update(await asyncio.to_thread(wrk, warm_port, tokens_file, opts.seconds, lua))
            return int(warm_results["requests"])

        await measure("GET /me/overview, gateway as deployed (parents coming back)", "requests", warm_run, ("gateway",))

        async def sign_ins() -> int:
            return await logins(cluster, opts.logins)

        await measure("sign-ins (argon2id t=3, 64 MiB, p=4)", "sign-ins", sign_ins, ("identity",))
        print(
            f"  wrk: no cache {cold_results['rps']:,.0f}/s p50 {cold_results['p50']} p99 {cold_results['p99']} "
            f"(non-2xx {cold_results['non2xx']}); as deployed {warm_results['rps']:,.0f}/s p50 {warm_results['p50']} "
            f"p99 {warm_results['p99']} (non-2xx {warm_results['non2xx']})"
        )
    finally:
        if cluster.nc is not None:
            await cluster.nc.close()
        await asyncio.to_thread(cluster.stop)
        pg.drop_all()

    print(report(rows))


def report(rows: list) -> str:
    """One line per step: the count, then per part its CPU seconds and what it did per CPU second."""
    parts = [
        "gateway",
        "gateway (no caches)",
        "identity",
        "linking",
        "notify",
        "overview",
        "nats-server ×3",
        "postgresql",
    ]
    lines = [
        "",
        f"Throughput per core on this machine ({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end): "
        "for each step, each process's CPU seconds in brackets and, in bold for the processes doing the step's "
        "work, what it did per CPU second.",
        "",
        "| step | count | wall s | " + " | ".join(parts) + " |",
        "|---|---|---|" + "---|" * len(parts),
    ]
    for what, unit, count, wall, spent, workers in rows:
        cells = []
        for p in parts:
            cpu = spent.get(p, 0.0)
            cells.append(f"**{count / cpu:,.0f}/s** ({cpu:.1f} s)" if p in workers and cpu > 0 else f"({cpu:.1f} s)")
        lines.append(f"| {what} | {count:,} {unit} | {wall:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schools", type=int, default=20)
    parser.add_argument("--pupils-per-school", type=int, default=250)
    parser.add_argument("--parents", type=int, default=3000)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--emails", type=int, default=1500)
    parser.add_argument("--logins", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20, help="each wrk run's length")
    asyncio.run(main(parser.parse_args()))
