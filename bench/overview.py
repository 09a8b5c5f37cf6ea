"""The overview at trust scale: how fast it absorbs platform events, and how fast the gateway serves it.

    make bench                                  # both databases, full scale (10-15 minutes)
    .venv/bin/python bench/overview.py --backends sqlite --scale 0.1   # a quick look
    .venv/bin/python bench/overview.py --env PORTAL_SESSION_CACHE_SECONDS=60   # other settings

For each database (overview on SQLite, then on PostgreSQL at 127.0.0.1:5432 as `postgres`, a
database of its own, dropped afterwards; with `--backends postgres-all`, identity and linking on
PostgreSQL too, as a trust runs it) it runs a real `portal up` on a fresh data directory:

1. `portal migrate`, then seeds 20 schools, 10,000 pupils and 15,000 parents straight into the
   services' databases (identity's accounts with one precomputed argon2 hash and a session each,
   token hashed as identity does; linking's roster and `linked` links; overview's roster copy):
   hashing 15,000 passwords is not what is measured.
2. `portal up` with its defaults (the access log on at INFO, JSON lines; its own NATS with a
   user per part) and `PORTAL_BENCH_ROUTES=1` (the gateway's `/bench/hello`); beside it, in a
   process of its own, a bare Litestar app (one route answering a small JSON object, one
   uvicorn worker with uvloop and httptools, no access log): the yardstick.
3. Stops overview (SIGSTOP), publishes 200,000 homework, message and stars events to JetStream
   as the learning platform (`platform.nk`), lets overview go and follows its durable consumer
   (as an operator) until nothing is pending or unacknowledged: `portal up`'s NATS writes every
   event to disk before acknowledging it, which bounds the publisher well below what overview
   absorbs, so overview's rate is measured on the backlog.
4. `wrk` (64 connections, 2 threads, a warm-up, then the measured run) against the bare app,
   then the overview of one parent with three children (`--pairs` times, one after the
   other: the share of the bare app's rate is what compares across runs on a shared machine);
   then the gateway's hello-world route; every parent's first `GET /api/v1/me/overview` of
   the day (one pass over the 15,000 parents, timed by this script: wrk cannot stop after one
   pass: every cache is cold, each parent's session, links and overview are asked for), then
   wrk on the overview again rotating over all 15,000 parents' bearer tokens (a Lua script:
   parents coming back, served from the gateway's caches as long as nothing changed), and over
   1,000 of them; then each parent's first child's homework, messages and stars
   (`/me/children/{id}/…`, the same path as the overview: cached, dropped on change notices),
   rotating over every parent.
   All routes are served by the same gateway process with the same settings (`--env` adds some).
5. The CPU time each process spent in each measured run (and the answering process's CPU a
   request), the RSS of every process, then SIGTERM.

Prints one table; nothing is asserted (this is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where its own name would hide
# the `overview` service package it seeds.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

BIN = Path(sys.executable).parent
PORTAL = str(BIN / "portal")
CONSUMER = ("PLATFORM", "overview-platform")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
PASSWORD = "bench-parent-password"
HELLO = "hello-world JSON"
# A bare Litestar app beside the gateway (one route, a small JSON object, one uvicorn worker,
# its own process), then the overview of one parent with three children, served warm.
BARE = "bare Litestar app, hello-world JSON (pair {i})"
OVERVIEW_THREE = "GET /me/overview, one parent with three children (pair {i})"
OVERVIEW = "GET /me/overview, {parents:,} parents"
FIRST_VISITS = "GET /me/overview, first visit of each of {parents:,} parents"
# Every parent back within the gateway's session cache time: the hot path alone.
OVERVIEW_WARM = "GET /me/overview, {warm:,} parents"
# One child in detail, beside the overview: each parent's first child, over every parent.
CHILD_ROUTES = {
    "GET /me/children/{{id}}/homework, {parents:,} parents": "/api/v1/me/children/%s/homework",
    "GET /me/children/{{id}}/messages, {parents:,} parents": "/api/v1/me/children/%s/messages",
    "GET /me/children/{{id}}/stars, {parents:,} parents": "/api/v1/me/children/%s/stars",
}


@dataclass(frozen=True)
class Scale:
    """How big the trust is."""

    schools: int = 20
    pupils: int = 10_000
    parents: int = 15_000
    events: int = 200_000
    class_size: int = 25


@dataclass
class Run:
    """Figures of one database's run."""

    backend: str
    seed_s: float = 0.0
    ready_s: float = 0.0
    absorb: dict = field(default_factory=dict)
    wrk: dict = field(default_factory=dict)
    rss: list = field(default_factory=list)
    partial_answers: int = 0
    errors: list = field(default_factory=list)
    load: list = field(default_factory=list)
    notes: list = field(default_factory=list)


# -- the trust ------------------------------------------------------------------------------


def trust(scale: Scale, rng: random.Random) -> tuple[dict[str, list[str]], dict[str, str], list[list[str]]]:
    """(class id -> pupil ids, pupil id -> school id, each parent's children)."""
    per_school = scale.pupils // scale.schools
    classes: dict[str, list[str]] = {}
    school_of: dict[str, str] = {}
    for s in range(scale.schools):
        school = f"s{s + 1:02d}"
        for p in range(per_school):
            pupil = f"{school}-p{p + 1:04d}"
            school_of[pupil] = school
            classes.setdefault(f"{school}-c{p // scale.class_size + 1:02d}", []).append(pupil)
    # 60 % of parents have one child at the trust's schools, 30 % two, 10 % three; siblings
    # are at the same school.
    pupils = list(school_of)
    rng.shuffle(pupils)
    by_school: dict[str, list[str]] = {}
    for p in pupils:
        by_school.setdefault(school_of[p], []).append(p)
    families: list[list[str]] = []
    for i in range(scale.parents):
        k = 1 if i < scale.parents * 0.6 else 2 if i < scale.parents * 0.9 else 3
        first = pupils[i % len(pupils)]
        siblings = [p for p in rng.sample(by_school[school_of[first]], k + 1) if p != first][: k - 1]
        families.append([first, *siblings])
    return classes, school_of, families


async def seed(
    data_dir: Path, urls: dict[str, str], scale: Scale, rng: random.Random
) -> tuple[list[str], dict, list[list[str]]]:
    """Write the trust into identity, linking and overview; the parents' bearer tokens."""
    from argon2 import PasswordHasher
    from sqlalchemy import insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from contracts.kit.settings import normalise_database_url, sqlite_url
    from identity import tables as it
    from identity.app import Settings as IdentitySettings
    from identity.service import digest
    from linking import tables as lt
    from overview import tables as ot

    now = datetime.now(UTC)
    classes, school_of, families = trust(scale, rng)
    ids = IdentitySettings(data_dir=data_dir)
    # One real argon2id hash with identity's parameters: every parent shares it.
    password_hash = PasswordHasher(
        time_cost=ids.identity_argon2_time_cost,
        memory_cost=ids.identity_argon2_memory_kib,
        parallelism=ids.identity_argon2_parallelism,
    ).hash(PASSWORD)
    parent_ids = [uuid.uuid4().hex for _ in families]
    tokens = [secrets.token_urlsafe(32) for _ in families]
    accounts = [
        {
            "id": pid, "role": "parent", "email": f"parent{i}@bench.example", "email_key": f"parent{i}@bench.example",
            "name": f"Parent {i}", "password_hash": password_hash, "verified_at": now, "created_at": now, "updated_at": now,
        }
        for i, pid in enumerate(parent_ids)
    ]  # fmt: skip
    sessions = [
        {
            "id": uuid.uuid4().hex, "account_id": pid, "token_hash": digest(token), "created_at": now, "last_seen_at": now,
            "idle_seconds": 7 * 24 * 3600, "absolute_expires_at": now + timedelta(days=30),
        }
        for pid, token in zip(parent_ids, tokens, strict=True)
    ]  # fmt: skip
    schools = sorted(set(school_of.values()))
    links = []
    for pid, children in zip(parent_ids, families, strict=True):
        for pupil in children:
            links.append({
                "id": uuid.uuid4().hex, "parent_id": pid, "pupil_id": pupil, "school_id": school_of[pupil],
                "relationship": rng.choice(("mother", "father", "carer")), "status": lt.LINKED, "via": lt.PRINTED,
                "code_id": "bench", "live_key": f"{pid}:{pupil}", "created_at": now, "activated_at": now,
            })  # fmt: skip

    async def write(url: str, batches: list[tuple[object, list[dict]]]) -> None:
        engine = create_async_engine(normalise_database_url(url))
        try:
            async with engine.begin() as conn:
                for table, rows in batches:
                    for i in range(0, len(rows), 5000):
                        await conn.execute(insert(table), rows[i : i + 5000])
        finally:
            await engine.dispose()

    def url(part: str) -> str:
        return urls.get(part) or sqlite_url(data_dir, part)

    await write(url("identity"), [(it.Account.__table__, accounts), (it.Session.__table__, sessions)])
    await write(url("linking"), [
        (lt.Trust.__table__, [{"trust_id": "bench-trust", "name": "Bench Trust", "version_at": now}]),
        (lt.School.__table__, [
            {"school_id": s, "trust_id": "bench-trust", "name": f"School {s}", "timezone": "Europe/London", "version_at": now}
            for s in schools
        ]),
        (lt.SchoolClass.__table__, [
            {"class_id": c, "school_id": school_of[pupils[0]], "name": f"Class {c}", "version_at": now} for c, pupils in classes.items()
        ]),
        (lt.Pupil.__table__, [
            {"pupil_id": p, "school_id": s, "first_name": "Pupil", "last_name": p, "version_at": now} for p, s in school_of.items()
        ]),
        (lt.ClassMember.__table__, [{"class_id": c, "pupil_id": p} for c, pupils in classes.items() for p in pupils]),
        (lt.Link.__table__, links),
    ])  # fmt: skip
    # Overview's own copy of the roster (which school, so which week): what it would have
    # projected from the platform's roster events.
    await write(url("overview"), [
        (ot.School.__table__, [{"school_id": s, "timezone": "Europe/London", "roster_at": now} for s in schools]),
        (ot.Pupil.__table__, [{"pupil_id": p, "school_id": s, "roster_at": now} for p, s in school_of.items()]),
    ])  # fmt: skip
    return tokens, classes, families


def platform_events(scale: Scale, classes: dict[str, list[str]], rng: random.Random) -> list[tuple[str, bytes, str]]:
    """`scale.events` homework, message and stars events over the last 14 days, shuffled."""
    now = datetime.now(UTC)
    pupils = [p for members in classes.values() for p in members]
    out: list[tuple[str, bytes, str]] = []

    def add(name: str, /, **fields: object) -> None:
        # Positional only: a message's fields include one called `subject`.
        event_id = uuid.uuid4().hex
        at = (now - timedelta(seconds=rng.uniform(0, 14 * 86400))).isoformat()
        out.append((name, json.dumps({"event_id": event_id, "occurred_at": at, **fields}).encode(), event_id))

    homework: list[tuple[str, list[str]]] = []
    per_class = max(1, round(scale.events * 0.02 / len(classes)))
    for class_id, members in classes.items():
        school = class_id.split("-")[0]
        for k in range(per_class):
            hw = f"{class_id}-h{k}"
            due = (now + timedelta(days=rng.uniform(-7, 10))).isoformat()
            add(
                "platform.homework.assigned.v1",
                homework_id=hw,
                school_id=school,
                pupil_ids=members,
                title=f"Homework {k} of {class_id}",
                due_at=due,
                description=f"Questions 1 to {k + 5} on page {k + 12}.",
            )
            homework.append((hw, members))
        add("platform.homework.withdrawn.v1", homework_id=f"{class_id}-h0")
    rest = scale.events - len(out)
    completed, delivered = int(rest * 0.3), int(rest * 0.35)
    for _ in range(completed):
        hw, members = rng.choice(homework)
        add("platform.homework.completed.v1", homework_id=hw, pupil_id=rng.choice(members))
    messages = []
    for n in range(delivered):
        mid, pupil = f"m{n}", rng.choice(pupils)
        messages.append((mid, pupil))
        add(
            "platform.message.delivered.v1",
            message_id=mid,
            pupil_id=pupil,
            from_name=f"Teacher {n % 40}",
            subject=f"Message {n}",
            sent_at=(now - timedelta(seconds=rng.uniform(0, 14 * 86400))).isoformat(),
        )
    for mid, pupil in rng.sample(messages, delivered // 2):
        add("platform.message.read.v1", message_id=mid, pupil_id=pupil)
    stars = scale.events - len(out)
    for n in range(stars):
        add(
            "platform.stars.awarded.v1",
            award_id=f"a{n}",
            pupil_id=rng.choice(pupils),
            stars=rng.randint(1, 3),
            reason=rng.choice(("Great reading", "Kindness", "Teamwork", "Neat handwriting")),
        )
    rng.shuffle(out)  # completions before assignments, reads before deliveries: as it may come
    return out


# -- absorbing events -----------------------------------------------------------------------


async def absorb(
    nats_url: str,
    seeds: dict[str, str],
    events: list[tuple[str, bytes, str]],
    *,
    timeout: float,
    analyze: str | None = None,
    paused: int | None = None,
    resumed: Callable[[], None] = lambda: None,
    pg_url: str | None = None,
) -> dict:
    """Publish every event (as the platform) while following overview's consumer (as an
    operator); the rates (`applied` short of `events` when `timeout` ran out first).

    `paused`: overview's process, stopped (SIGSTOP) while the events are published and let go
    once they all are, so that what it absorbs a second is its own rate, not the publisher's:
    `portal up`'s NATS writes every event to disk before it acknowledges it, which bounds the
    publisher far below what overview absorbs."""
    import nats

    nc = await nats.connect(nats_url, nkeys_seed_str=seeds["platform"])
    watcher = await nats.connect(nats_url, nkeys_seed_str=seeds["operator"], inbox_prefix="_INBOX.operator")
    js = nc.jetstream()
    watch = watcher.jetstream()
    total = len(events)
    published = 0
    pending = iter(events)

    async def publisher() -> None:
        nonlocal published
        for subject, payload, event_id in pending:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": event_id}, timeout=30)
            published += 1

    async def remaining() -> int:
        info = await watch.consumer_info(*CONSUMER)
        return info.num_pending + info.num_ack_pending

    # overview's connections to PostgreSQL (opened before the events come: not the ANALYZE one).
    backends = await _pg_backends(pg_url) if pg_url else []
    start = time.monotonic()
    cpu_at_resume = None
    pg_at_resume = None
    if paused is not None:
        os.kill(paused, signal.SIGSTOP)
    workers = [asyncio.create_task(publisher()) for _ in range(256)]
    background = [asyncio.create_task(_analyze_every(analyze, 10.0))] if analyze else []
    done_publishing = None
    left = total
    try:
        while True:
            left = await remaining()
            now = time.monotonic() - start
            if done_publishing is None and all(w.done() for w in workers):
                for w in workers:
                    w.result()
                done_publishing = (now, left)
                if paused is not None:
                    cpu_at_resume = _pid_cpu(paused)
                    pg_at_resume = sum(_pid_cpu(pid) for pid in backends)
                    os.kill(paused, signal.SIGCONT)
                resumed()
            if (done_publishing is not None and left == 0) or now > timeout:
                break
            await asyncio.sleep(0.2)
    finally:
        # What overview spent on the backlog: less sensitive than its rate to a busy machine.
        cpu_absorbing = _pid_cpu(paused) - cpu_at_resume if paused is not None and cpu_at_resume is not None else None
        pg_absorbing = sum(_pid_cpu(pid) for pid in backends) - pg_at_resume if pg_at_resume is not None else None
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        for task in (*workers, *background):
            task.cancel()
        await asyncio.gather(*workers, *background, return_exceptions=True)
        await nc.close()
        await watcher.close()
    published_at, backlog = done_publishing or (now, left)
    applied = published - left
    return {
        "events": total,
        "applied": applied,
        "publish_s": published_at,
        "publish_per_s": published / published_at,
        "drained_s": now,
        "end_to_end_per_s": applied / now,
        "backlog_at_publish_end": backlog,
        # Once the publisher is done, overview has the machine to itself.
        "backlog_per_s": (backlog - left) / (now - published_at)
        if backlog > total * 0.05 and now > published_at
        else None,
        "cpu_us_per_event": cpu_absorbing / (backlog - left) * 1e6
        if cpu_absorbing is not None and backlog > left
        else None,
        "pg_cpu_us_per_event": pg_absorbing / (backlog - left) * 1e6
        if pg_absorbing is not None and backlog > left
        else None,
    }


async def _pg_backends(url: str) -> list[int]:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return [r["pid"] for r in rows]


def _pid_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _analyze_every(url: str, seconds: float) -> None:
    # Autovacuum is off on this machine's PostgreSQL: without fresh statistics the planner keeps
    # treating the growing tables as empty. A production server's autovacuum analyses them.
    while True:
        await asyncio.sleep(seconds)
        await _analyze_once(url)


async def _analyze_once(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


# -- wrk ------------------------------------------------------------------------------------

LUA = """
-- Rotates over the parents' bearer tokens (args: token file, thread count, path); each thread
-- takes its own share of them, so that no two threads ask for the same parent at once.
local counter = 1
function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end
local requests = {}
local i, first, last = 0, 0, 0
function init(args)
  for token in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("GET", args[3], {["Authorization"] = "Bearer " .. token})
  end
  local threads = tonumber(args[2])
  first = math.floor(#requests * ((offset or 1) - 1) / threads)
  last = math.floor(#requests * (offset or 1) / threads)
  i = first
end
function request()
  i = i + 1
  if i > last then i = first + 1 end
  return requests[i]
end
"""
# The same for one child's routes (args: "token pupil" file, thread count, path with %s for
# the pupil).
LUA_CHILD = """
local counter = 1
function setup(thread)
  thread:set("offset", counter)
  counter = counter + 1
end
local requests = {}
local i, first, last = 0, 0, 0
function init(args)
  for line in io.lines(args[1]) do
    local token, pupil = line:match("^(%S+)%s+(%S+)$")
    requests[#requests + 1] = wrk.format("GET", string.format(args[3], pupil), {["Authorization"] = "Bearer " .. token})
  end
  local threads = tonumber(args[2])
  first = math.floor(#requests * ((offset or 1) - 1) / threads)
  last = math.floor(#requests * (offset or 1) / threads)
  i = first
end
function request()
  i = i + 1
  if i > last then i = first + 1 end
  return requests[i]
end
"""
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * _UNITS[unit]


def wrk(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    script: Path | None = None,
    args: list[str] = (),
    headers: dict[str, str] | None = None,
) -> dict:
    """One wrk run: requests/s, p50, p99 (ms), and anything that went wrong."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd += [url, *(["--", *args] if args else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", out, re.M))
    if done.returncode != 0 or "99" not in lat:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{out}{done.stderr}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: (.*)$", out, re.M)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": _ms(lat["50"]),
        "p99": _ms(lat["99"]),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": socket.group(1) if socket else "",
    }


async def first_visits(port: int, tokens: list[str], concurrency: int) -> dict:
    """Every parent's first overview of the day, `concurrency` at a time, timed by this client."""
    # wrk cannot stop after one pass over the tokens, so this pass is driven from here, over
    # plain keep-alive HTTP/1.1 connections: a client library would eat into the two cores.
    pending = iter(tokens)
    latencies: list[float] = []
    bad = 0

    async def worker() -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for token in pending:
                t0 = time.perf_counter()
                writer.write(
                    f"GET /api/v1/me/overview HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
                )
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                bad += status != 200 or b'"partial":true' in body
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": len(tokens) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[int(len(latencies) * 0.99)] * 1000,
        "requests": len(tokens),
        "non2xx": bad,
        "socket_errors": "",
        "seconds": elapsed,
    }


# -- processes ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) // 1024
    return fields


def _name(pid: int) -> str:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    argv = [a for a in argv if a != "--no-migrate"]
    if "service" in argv:
        return argv[argv.index("service") + 1]
    if "mail-sink" in argv:
        return "mail-sink"
    if argv and argv[0].endswith("nats-server"):
        return "nats-server"
    if "up" in argv:
        return "portal up (supervisor)"
    if "--bare" in argv:
        return "bare Litestar"
    return " ".join(argv)[:40]


def _tree(pids: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop(0)
        if pid not in seen:
            seen.append(pid)
            todo += _children(pid)
    return seen


def _own_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def cpu_seconds(pids: list[int]) -> dict[str, float]:
    """CPU time (user + system) so far of each process and its descendants, by name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in _tree(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            name = _name(pid)
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def memory(pids: list[int]) -> list[tuple[str, int, int]]:
    """(name, RSS MB, peak RSS MB) of each process and its descendants."""
    seen, out, todo = set(), [], list(pids)
    while todo:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        try:
            st = _status(pid)
            out.append((_name(pid), st.get("VmRSS", 0), st.get("VmHWM", 0)))
        except OSError:
            continue
        todo += _children(pid)
    return out


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _profile(
    opts: argparse.Namespace,
    root: int,
    prefix: str,
    *,
    parts: tuple[str, ...] = ("gateway", "identity", "linking", "overview"),
    seconds: float | None = None,
) -> list[subprocess.Popen]:
    """py-spy on some parts for a measured run (`--profile`): collapsed stacks, one file a part."""
    out = Path(opts.profile)
    out.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid in [root, *_children(root)]:
        name = _name(pid)
        if name in parts:
            cmd = [opts.py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds or opts.duration)), "--rate", "200",
                   "--format", "raw", "--gil", "--nonblocking", "-o", str(out / f"{prefix}-{name}.txt")]  # fmt: skip
            spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return spies


def _loadavg() -> str:
    # Other work on the machine skews every figure: the table shows how busy it was.
    return Path("/proc/loadavg").read_text().split()[0]


def _free_port() -> int:
    from portal.natsserver import free_port

    return free_port()


def _stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _autovacuum() -> bool:
    import asyncpg

    async def ask() -> bool:
        conn = await asyncpg.connect(database="postgres", **PG)
        try:
            return await conn.fetchval("SHOW autovacuum") == "on"
        finally:
            await conn.close()

    return asyncio.run(ask())


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database="postgres", **PG)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


# -- one run --------------------------------------------------------------------------------


def run_backend(backend: str, scale: Scale, opts: argparse.Namespace) -> Run:
    """Everything, for overview on one database."""
    run = Run(backend)
    rng = random.Random(2026)
    tmp = Path(tempfile.mkdtemp(prefix=f"portal-bench-{backend}-"))
    data_dir = tmp / "data"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    # `portal up`'s defaults otherwise: the access log on at INFO, JSON lines.
    env.update(PORTAL_DATA_DIR=str(data_dir), PORTAL_HTTP_PORT=str(port), PORTAL_BENCH_ROUTES="1")
    env.update(dict(item.split("=", 1) for item in opts.env))
    # The parts on PostgreSQL, each with a database of its own; the others on SQLite files.
    pg_parts = {"postgres": ("overview",), "postgres-all": ("overview", "identity", "linking")}.get(backend, ())
    suffix = uuid.uuid4().hex[:8]
    pg_dbs = {part: f"portal_bench_{part}_{suffix}" for part in pg_parts}
    urls = {part: f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{db}" for part, db in pg_dbs.items()}
    for part, db in pg_dbs.items():
        _pg_admin(f'CREATE DATABASE "{db}"')
        env[f"PORTAL_{part.upper()}_DATABASE_URL"] = urls[part]
    overview_url = urls.get("overview")
    if "linking" in urls:
        # Required once linking's database is not the data directory's own (one key for every replica).
        from linking.codes import new_key

        env["PORTAL_LINKING_CODE_KEY"] = new_key()
    up = bare = None
    base = f"http://127.0.0.1:{port}"
    run.load.append(_loadavg())
    try:
        say(
            f"[{backend}] migrating and seeding {scale.schools} schools, {scale.pupils} pupils, {scale.parents} parents"
        )
        started = time.monotonic()
        subprocess.run([PORTAL, "migrate"], env=env, check=True, capture_output=True, text=True)
        tokens, classes, families = asyncio.run(seed(data_dir, urls, scale, rng))
        run.seed_s = time.monotonic() - started
        token_file = tmp / "tokens.txt"
        token_file.write_text("\n".join(tokens) + "\n")
        lua = tmp / "overview.lua"
        lua.write_text(LUA)
        lua_child = tmp / "child.lua"
        lua_child.write_text(LUA_CHILD)
        child_file = tmp / "tokens-children.txt"
        child_file.write_text("".join(f"{t} {f[0]}\n" for t, f in zip(tokens, families, strict=True)))
        events = platform_events(scale, classes, rng)

        say(f"[{backend}] portal up")
        started = time.monotonic()
        up = subprocess.Popen(
            [PORTAL, "up"], env=env, stdout=(tmp / "up.out").open("w"), stderr=(tmp / "up.err").open("w"),
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        while _get(f"{base}/ready")[0] != 200:
            if up.poll() is not None or time.monotonic() - started > 120:
                raise RuntimeError(f"portal up did not get ready:\n{(tmp / 'up.err').read_text()[-3000:]}")
            time.sleep(0.25)
        run.ready_s = time.monotonic() - started
        # portal up's own NATS, with its users: the events come as the learning platform's
        # publisher (`platform.nk`), the consumer's progress is read as an operator.
        nats_url = (data_dir / "nats.url").read_text().strip()
        seeds = {part: (data_dir / "nats" / f"{part}.nk").read_text().strip() for part in ("platform", "operator")}
        bare_port = _free_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port)], stdin=subprocess.DEVNULL)
        while _get(f"http://127.0.0.1:{bare_port}/hello")[0] != 200:
            if bare.poll() is not None:
                raise RuntimeError("the bare Litestar app did not start")
            time.sleep(0.1)
        for path, token in (("/bench/hello", None), ("/api/v1/me/overview", tokens[-1])):
            status, body = _get(base + path, token)
            if status != 200:
                raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")

        say(f"[{backend}] publishing {len(events)} events; overview absorbs them")
        spies: list[subprocess.Popen] = []

        def resumed() -> None:
            # Once overview has the backlog to absorb.
            if opts.profile:
                spies.extend(_profile(opts, up.pid, f"{backend}-absorb", parts=("overview",), seconds=10))

        analyze = overview_url if overview_url and opts.pg_analyze and not _autovacuum() else None
        run.notes += (
            ["ANALYZE every 10 s during absorption and once after (autovacuum is off on this server)"]
            if analyze
            else []
        )
        overview_pid = next((pid for pid in _children(up.pid) if _name(pid) == "overview"), None)
        run.absorb = asyncio.run(
            absorb(
                nats_url,
                seeds,
                events,
                timeout=opts.absorb_timeout,
                analyze=analyze,
                pg_url=overview_url,
                paused=overview_pid,
                resumed=resumed,
            )
        )
        if analyze:
            # What autovacuum does after a bulk load: the reads below are planned on the tables
            # as they now are, not as they were at the last ANALYZE during absorption.
            for part_url in urls.values():
                asyncio.run(_analyze_once(part_url))
        if run.absorb["applied"] < run.absorb["events"]:
            run.errors.append(
                f"overview applied {run.absorb['applied']:,} of {run.absorb['events']:,} events in {opts.absorb_timeout:g} s"
            )
        for spy in spies:
            spy.wait()
        status, body = _get(f"{base}/api/v1/me/overview", tokens[-1])
        answer = json.loads(body)
        if status != 200 or answer.get("partial") or len(answer["children"]) != len(families[-1]):
            run.errors.append(f"overview sample: {status} {body[:300]!r}")

        if opts.only_events:
            run.rss = memory([up.pid, bare.pid])
            run.load.append(_loadavg())
            return run
        warm_file = tmp / "tokens-warm.txt"
        warm_file.write_text("\n".join(tokens[: opts.warm_parents]) + "\n")
        three = {"Authorization": f"Bearer {tokens[-1]}"}
        # The bare app and the overview one after the other, `--pairs` times: the machine is
        # shared, and the share of the bare app's rate is what compares across runs.
        targets = [
            *(
                target
                for i in range(opts.pairs)
                for target in (
                    (BARE.format(i=i + 1), f"http://127.0.0.1:{bare_port}/hello", None, [], {}),
                    (OVERVIEW_THREE.format(i=i + 1), f"{base}/api/v1/me/overview", None, [], three),
                )
            ),
        ]
        if opts.only_first_visits:
            targets = [(OVERVIEW, f"{base}/api/v1/me/overview", lua, [str(token_file)], {})]
        elif not opts.only_overview:
            targets += [
                (HELLO, f"{base}/bench/hello", None, [], {}),
                (
                    OVERVIEW,
                    f"{base}/api/v1/me/overview",
                    lua,
                    [str(token_file), str(opts.threads), "/api/v1/me/overview"],
                    {},
                ),
                (
                    OVERVIEW_WARM,
                    f"{base}/api/v1/me/overview",
                    lua,
                    [str(warm_file), str(opts.threads), "/api/v1/me/overview"],
                    {},
                ),
                *(
                    (label, base + path % families[-1][0], lua_child, [str(child_file), str(opts.threads), path], {})
                    for label, path in CHILD_ROUTES.items()
                ),
            ]
        for path in CHILD_ROUTES.values():
            status, body = _get(base + path % families[-1][0], tokens[-1])
            if status != 200:
                run.errors.append(f"GET {path % families[-1][0]}: {status} {body[:300]!r}")
        for label, url, script, args, headers in targets:
            label = label.format(parents=len(tokens), warm=min(opts.warm_parents, len(tokens)))
            if script is lua and args[0] == str(token_file):
                say(f"[{backend}] first visit of each of {len(tokens):,} parents")
                # About 1,000 visits a second: py-spy stops on its own, a little after the pass.
                seconds = max(2, len(tokens) // 1000)
                spies = _profile(opts, up.pid, f"{backend}-first", seconds=seconds) if opts.profile else []
                # overview's PostgreSQL connections count too: their CPU is a visit's as much as
                # overview's own, on the same two cores.
                pg_before = {
                    pid: _pid_cpu(pid) for part_url in urls.values() for pid in asyncio.run(_pg_backends(part_url))
                }
                before, client = cpu_seconds([up.pid, bare.pid]), _own_cpu()
                run.wrk[FIRST_VISITS.format(parents=len(tokens))] = first = asyncio.run(
                    first_visits(port, tokens, opts.connections)
                )
                after = cpu_seconds([up.pid, bare.pid])
                if urls:
                    # Connections opened during the pass count from nothing.
                    pg_after = [pid for part_url in urls.values() for pid in asyncio.run(_pg_backends(part_url))]
                    after["postgres"] = sum(_pid_cpu(pid) - pg_before.get(pid, 0.0) for pid in pg_after)
                for spy in spies:
                    spy.wait()
                first["cpu"] = {
                    **{n: after[n] - before.get(n, 0.0) for n in after},
                    "bench client": _own_cpu() - client,
                }
                if opts.only_first_visits:
                    continue
            say(f"[{backend}] wrk {label}: {opts.warmup:g}s warm-up, {opts.duration:g}s measured")
            common = {
                "connections": opts.connections, "threads": opts.threads, "script": script, "args": args,
                "headers": headers,
            }  # fmt: skip
            wrk(url, seconds=opts.warmup, **common)
            spies = _profile(opts, up.pid, f"{backend}-{len(run.wrk) + 1}") if opts.profile else []
            before = cpu_seconds([up.pid, bare.pid])
            run.wrk[label] = wrk(url, seconds=opts.duration, **common)
            after = cpu_seconds([up.pid, bare.pid])
            run.wrk[label]["cpu"] = {name: after[name] - before.get(name, 0.0) for name in after}
            for spy in spies:
                spy.wait()
        run.rss = memory([up.pid, bare.pid])
        run.load.append(_loadavg())
        run.partial_answers = (tmp / "up.err").read_text().count("overview_partial")
    except Exception as exc:  # noqa: BLE001 - the other database's figures are still worth printing
        run.errors.append(f"{type(exc).__name__}: {exc}"[:500])
    finally:
        if bare is not None:
            bare.kill()
            bare.wait()
        if up is not None:
            _stop(up)
        if not opts.keep:
            for db in pg_dbs.values():
                _pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if opts.keep:
            say(f"[{backend}] kept {tmp}" + (f" and the databases {', '.join(pg_dbs.values())}" if pg_dbs else ""))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return run


# -- the report -----------------------------------------------------------------------------


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _per_request(figures: dict, label: str) -> float:
    # CPU seconds of the process that answered (the bare app, or the gateway) a request: on a
    # busy machine it compares better across runs than the rate does.
    return figures["cpu"]["bare Litestar" if label.startswith("bare") else "gateway"] / figures["requests"]


def report(runs: list[Run], scale: Scale, opts: argparse.Namespace) -> str:
    """The table: a row per figure, a column per database."""
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, value) -> None:
        cells = []
        for r in runs:
            try:
                cells.append(value(r))
            except (KeyError, TypeError, IndexError, ZeroDivisionError):
                cells.append("-")  # that run did not get this far
        rows.append((label, cells))

    row("load average before / after (1 min)", lambda r: " / ".join(r.load))
    row("seeding (migrate + direct inserts)", lambda r: f"{r.seed_s:.1f} s")
    row("portal up to /ready", lambda r: f"{r.ready_s:.1f} s")
    row(
        f"publish {scale.events:,} events",
        lambda r: f"{r.absorb['publish_per_s']:,.0f}/s ({r.absorb['publish_s']:.1f} s)",
    )
    row("absorbed, end to end (first publish to drained)", lambda r: (
        f"{r.absorb['end_to_end_per_s']:,.0f} events/s ({r.absorb['drained_s']:.1f} s)"
    ))  # fmt: skip
    row("absorbed from the backlog (overview paused while publishing)", lambda r: (
        f"{r.absorb['backlog_per_s']:,.0f} events/s ({r.absorb['backlog_at_publish_end']:,} left)"
        if r.absorb["backlog_per_s"] else "kept up with the publisher"
    ))  # fmt: skip
    row("overview's CPU per event absorbed from the backlog", lambda r: (
        f"{r.absorb['cpu_us_per_event']:,.1f} µs" if r.absorb.get("cpu_us_per_event") else "-"
    ))  # fmt: skip
    row("its PostgreSQL connections' CPU per event", lambda r: (
        f"{r.absorb['pg_cpu_us_per_event']:,.1f} µs" if r.absorb.get("pg_cpu_us_per_event") else "-"
    ))  # fmt: skip
    if any(r.notes for r in runs):
        row("note", lambda r: "; ".join(r.notes))
    short = {
        "gateway": "gw", "identity": "id", "linking": "li", "overview": "ov", "nats-server": "nats", "bare Litestar": "bare", "portal up (supervisor)": "sup",
        "bench client": "client", "postgres": "pg",
    }  # fmt: skip
    labels = list(dict.fromkeys(label for r in runs for label in r.wrk))
    for label in labels:
        row(f"{label}: requests/s", lambda r: f"{r.wrk[label]['rps']:,.0f}")  # noqa: B023 - called within this iteration
        row(f"{label}: p50 / p99", lambda r: f"{r.wrk[label]['p50']:.1f} / {r.wrk[label]['p99']:.1f} ms")  # noqa: B023 - called within this iteration
        row(f"{label}: CPU ms a request (serving process)", lambda r: (
            f"{1000 * _per_request(r.wrk[label], label):.3f}"  # noqa: B023 - called within this iteration
        ))  # fmt: skip
        row(f"{label}: CPU s per process", lambda r: " ".join(
            f"{short[n]} {v:.1f}" for n, v in r.wrk[label]["cpu"].items() if n in short and v >= 0.05  # noqa: B023 - called within this iteration
        ))  # fmt: skip
        if any(r.wrk.get(label, {}).get("non2xx") or r.wrk.get(label, {}).get("socket_errors") for r in runs):
            row(
                f"{label}: errors",
                lambda r: f"{r.wrk[label]['non2xx']} non-2xx or partial {r.wrk[label]['socket_errors']}".strip(),  # noqa: B023 - called within this iteration
            )
    for i in range(1, opts.pairs + 1):
        bare, three = BARE.format(i=i), OVERVIEW_THREE.format(i=i)
        row(f"overview of three children / bare Litestar, req/s (pair {i})", lambda r: (
            f"{r.wrk[three]['rps'] / r.wrk[bare]['rps']:.0%} (p99 {r.wrk[three]['p99']:.1f} ms against {r.wrk[bare]['p99']:.1f} ms; "  # noqa: B023 - called within this iteration
            f"CPU a request {_per_request(r.wrk[bare], bare) / _per_request(r.wrk[three], three):.0%})"  # noqa: B023 - called within this iteration
        ))  # fmt: skip
    for label in [k for k in labels if "/me/" in k and "pair" not in k]:
        row(f"{label}: / hello-world in the gateway", lambda r: (
            f"{r.wrk[label]['rps'] / r.wrk[HELLO]['rps']:.0%}"  # noqa: B023 - called within this iteration
        ))  # fmt: skip
    row("partial overview answers (gateway log)", lambda r: str(r.partial_answers))
    for name in dict.fromkeys(n for r in runs for n, _, _ in r.rss):
        row(f"RSS {name} (peak)", lambda r: ", ".join(f"{rss} MB ({hwm})" for n, rss, hwm in r.rss if n == name) or "-")  # noqa: B023 - called within this iteration
    for i, r in enumerate(runs):
        for e in r.errors:
            rows.append((f"problem ({r.backend})", ["" if j != i else e for j in range(len(runs))]))
    names = [r.backend for r in runs]
    width = max(len(label) for label, _ in rows)
    cols = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    lines = [
        f"overview benchmark: {scale.schools} schools, {scale.pupils:,} pupils, {scale.parents:,} parents, {scale.events:,} events; "
        f"wrk -t{opts.threads} -c{opts.connections}, {opts.warmup:g} s warm-up + {opts.duration:g} s each; "
        f"{os.cpu_count()} CPUs" + (f"; {' '.join(opts.env)}" if opts.env else ""),
        "| " + " | ".join(["what".ljust(width), *(n.ljust(c) for n, c in zip(names, cols, strict=True))]) + " |",
        "|" + "|".join(["-" * (width + 2), *("-" * (c + 2) for c in cols)]) + "|",
    ]
    for label, values in rows:
        lines.append(
            "| " + " | ".join([label.ljust(width), *(v.ljust(c) for v, c in zip(values, cols, strict=True))]) + " |"
        )
    return "\n".join(lines)


def serve_bare(port: int) -> None:
    """The bare Litestar app the gateway is measured beside: one route answering a small JSON
    object, one uvicorn worker (uvloop, httptools, no access log), nothing else."""
    import uvicorn
    from litestar import Litestar, get

    @get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    app = Litestar([hello], logging_config=None)
    uvicorn.run(
        app, host="127.0.0.1", port=port, workers=1, loop="uvloop", http="httptools", access_log=False,
        log_level="warning", server_header=False,
    )  # fmt: skip


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="comma-separated: sqlite, postgres (overview on PostgreSQL), postgres-all (identity and linking too)",
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm-parents", type=int, default=1000, help="parents of the warm-cache overview run")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply pupils, parents and events (0.1 for a quick look)"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="PORTAL_X=VALUE", help="a setting for portal up (repeatable)"
    )
    parser.add_argument(
        "--absorb-timeout", type=float, default=600, help="give up following overview's consumer after this"
    )
    parser.add_argument(
        "--no-pg-analyze", dest="pg_analyze", action="store_false",
        help="do not stand in for autovacuum (ANALYZE every 10 s) when the server has it off",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep each run's data directory and logs (and its PostgreSQL database)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record py-spy stacks of each part (the thread holding the interpreter) during every measured run",
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy", help="the py-spy binary for --profile")
    parser.add_argument(
        "--only-events", action="store_true",
        help="stop after the events-absorbed figures (no wrk): a quick loop while tuning the consumer",
    )  # fmt: skip
    parser.add_argument(
        "--only-overview", action="store_true",
        help="after the events, only the bare app and the overview of three children (no other route, no first visits)",
    )  # fmt: skip
    parser.add_argument(
        "--only-first-visits", action="store_true",
        help="after the events, only every parent's first visit (no wrk): a quick loop while tuning cold reads",
    )  # fmt: skip
    parser.add_argument(
        "--pairs", type=int, default=1, help="how many times to measure the bare app, then the overview"
    )
    parser.add_argument("--bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.bare:
        serve_bare(opts.bare)
        return
    if shutil.which("wrk") is None and not opts.only_events:
        sys.exit("bench: wrk is not installed (Debian: apt-get install wrk)")
    base = Scale()
    scale = Scale(
        schools=base.schools, pupils=int(base.pupils * opts.scale), parents=int(base.parents * opts.scale),
        events=int(base.events * opts.scale),
    )  # fmt: skip
    runs = [run_backend(b.strip(), scale, opts) for b in opts.backends.split(",") if b.strip()]
    print(report(runs, scale, opts), flush=True)


if __name__ == "__main__":
    main()
