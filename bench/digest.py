"""A Friday's digest run: 15,000 parents of 20 schools, composed and sent through notify's normal path.

    make bench                                           # part of it
    .venv/bin/python bench/digest.py                     # PostgreSQL, 15,000 parents
    .venv/bin/python bench/digest.py --backend sqlite --parents 3000 --notify-replicas 2

1. A NATS server of its own (no users), and for each service a database of its own (PostgreSQL
   at 127.0.0.1:5432 as `postgres`, dropped afterwards; or SQLite files); `portal migrate`.
2. Seeds 20 schools (Europe/London), 10,000 pupils and 15,000 verified parents straight into the
   services' databases (identity's accounts, linking's roster and `linked` links, overview's
   roster copy with three pieces of homework, two unread messages and two star awards per
   pupil): what is measured is the run, not the seeding.
3. Starts identity, linking, overview and `--notify-replicas` notify replicas (`portal service`),
   each its own process, notify sending over SMTP to a sink in this process
   (`PORTAL_NOTIFY_SMTP_CONCURRENCY` connections per replica; the daily cap and retries as
   configured, untouched). The sink (`--sink lean`, the default) reads each message to its final
   "." in one go and counts it; `--sink aiosmtpd` is aiosmtpd, which takes about 1 ms of CPU a
   message of the same two cores.
4. `portal digest run --at <Friday 16:00>` through NATS (as the `portal` command asks it), then
   waits until the sink has every digest. Then the same run again: nothing is sent twice.

Prints the figures; nothing is asserted (a measurement, not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path, where `overview.py` would hide
# the `overview` service package it seeds.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

BIN = Path(sys.executable).parent
PORTAL = str(BIN / "portal")
SERVICES = ("identity", "linking", "overview", "notify")
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
FRIDAY_1600 = datetime(2026, 11, 27, 16, 0, tzinfo=UTC)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database="postgres", **PG)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


class Sink:
    """An SMTP server that counts what it accepts (aiosmtpd, in a thread of its own)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        from portal.natsserver import free_port

        self.count = 0
        self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, ready_timeout=10)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def received(self, size: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.count += 1
            self.bytes += size
            self.first_at = self.first_at or now
            self.last_at = now

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd calls handle_<VERB> by name
        self.received(len(envelope.original_content or b""))
        return "250 OK"


class LeanSink(Sink):
    """An SMTP server of a few lines, in a thread of its own: it reads every message to its final
    "." in one go, where aiosmtpd reads (and checks) it a line at a time. aiosmtpd's share of the
    two cores (about 1 ms of CPU a message) is not the portal's: a real SMTP server runs elsewhere."""

    def __init__(self) -> None:
        from portal.natsserver import free_port

        self.count = 0
        self.bytes = 0
        self.first_at = None
        self.last_at = None
        self.lock = threading.Lock()
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the SMTP sink did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port, limit=4 * 1024 * 1024)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 bench ESMTP\r\n")
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    message = await reader.readuntil(b"\r\n.\r\n")
                    self.received(len(message))
                    writer.write(b"250 OK\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 Bye\r\n")
                    break
                elif verb in (b"EHLO", b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    writer.write(b"250 OK\r\n")
                else:
                    writer.write(b"502 Not implemented\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a sender that drops a message half-way: the message does not count
        finally:
            writer.close()


def families(parents: int, pupils: int, schools: int, rng: random.Random) -> tuple[dict[str, str], list[list[str]]]:
    """(pupil id -> school id, each parent's children): 60 % one child, 30 % two, 10 % three."""
    school_of = {f"s{i % schools + 1:02d}-p{i:05d}": f"s{i % schools + 1:02d}" for i in range(pupils)}
    by_school: dict[str, list[str]] = {}
    for p, s in school_of.items():
        by_school.setdefault(s, []).append(p)
    ids = list(school_of)
    out = []
    for i in range(parents):
        k = 1 if i < parents * 0.6 else 2 if i < parents * 0.9 else 3
        first = ids[i % len(ids)]
        siblings = [p for p in rng.sample(by_school[school_of[first]], k + 1) if p != first][: k - 1]
        out.append([first, *siblings])
    return school_of, out


async def seed(urls: dict[str, str], parents: int, pupils: int, schools: int) -> None:
    """Write the trust into identity, linking and overview."""
    from sqlalchemy import insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from contracts.kit.settings import normalise_database_url
    from identity import tables as it
    from linking import tables as lt
    from overview import tables as ot

    rng = random.Random(2026)
    now = datetime.now(UTC)
    school_of, fams = families(parents, pupils, schools, rng)
    parent_ids = [uuid.uuid4().hex for _ in fams]
    accounts = [
        {
            "id": pid, "role": "parent", "email": f"parent{i}@bench.example", "email_key": f"parent{i}@bench.example",
            "name": f"Parent {i}", "password_hash": None, "verified_at": now, "created_at": now, "updated_at": now,
        }
        for i, pid in enumerate(parent_ids)
    ]  # fmt: skip
    links = [
        {
            "id": uuid.uuid4().hex, "parent_id": pid, "pupil_id": pupil, "school_id": school_of[pupil],
            "relationship": "carer", "status": lt.LINKED, "via": lt.PRINTED, "code_id": "bench",
            "live_key": f"{pid}:{pupil}", "created_at": now, "activated_at": now,
        }
        for pid, children in zip(parent_ids, fams, strict=True)
        for pupil in children
    ]  # fmt: skip
    names = sorted(set(school_of.values()))
    week = FRIDAY_1600 - timedelta(days=3)
    homework, homework_pupils, messages, stars = [], [], [], []
    for n, (pupil, school) in enumerate(school_of.items()):
        for h in range(3):
            hid = f"{pupil}-h{h}"
            due = FRIDAY_1600 + timedelta(days=h * 3 - 3)  # one overdue, two to come
            homework.append(
                {
                    "homework_id": hid,
                    "school_id": school,
                    "title": f"Homework {h + 1}",
                    "due_at": due,
                    "withdrawn": False,
                }
            )
            homework_pupils.append({"homework_id": hid, "pupil_id": pupil, "assigned": True, "completed": False})
        for m in range(2):
            messages.append({
                "message_id": f"{pupil}-m{m}", "pupil_id": pupil, "delivered": True, "read": False,
                "from_name": "Class teacher", "subject": f"News {m + 1}", "sent_at": week + timedelta(hours=m),
            })  # fmt: skip
        for a in range(2):
            stars.append({
                "award_id": f"{pupil}-a{a}", "pupil_id": pupil, "stars": 1 + (n + a) % 3,
                "awarded_at": week + timedelta(hours=a), "reason": "Great work in class",
            })  # fmt: skip

    async def write(url: str, batches: list[tuple[object, list[dict]]]) -> None:
        engine = create_async_engine(normalise_database_url(url))
        try:
            async with engine.begin() as conn:
                for table, rows in batches:
                    for i in range(0, len(rows), 2000):
                        await conn.execute(insert(table), rows[i : i + 2000])
        finally:
            await engine.dispose()

    await write(urls["identity"], [(it.Account.__table__, accounts)])
    await write(urls["linking"], [
        (lt.Trust.__table__, [{"trust_id": "bench-trust", "name": "Bench Trust", "version_at": now}]),
        (lt.School.__table__, [
            {"school_id": s, "trust_id": "bench-trust", "name": f"School {s}", "timezone": "Europe/London", "version_at": now}
            for s in names
        ]),
        (lt.Pupil.__table__, [
            {"pupil_id": p, "school_id": s, "first_name": "Pupil", "last_name": p, "version_at": now} for p, s in school_of.items()
        ]),
        (lt.Link.__table__, links),
    ])  # fmt: skip
    await write(urls["overview"], [
        (ot.School.__table__, [{"school_id": s, "timezone": "Europe/London", "roster_at": now} for s in names]),
        (ot.Pupil.__table__, [{"pupil_id": p, "school_id": s, "roster_at": now} for p, s in school_of.items()]),
        (ot.Homework.__table__, homework),
        (ot.HomeworkPupil.__table__, homework_pupils),
        (ot.PupilMessage.__table__, messages),
        (ot.StarAward.__table__, stars),
    ])  # fmt: skip


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def digest_run(env: dict[str, str], at: datetime) -> tuple[float, str]:
    started = time.monotonic()
    out = subprocess.run(
        [PORTAL, "digest", "run", "--at", at.isoformat()], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"portal digest run: {out.stderr[-2000:]}")
    return time.monotonic() - started, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--parents", type=int, default=15_000)
    parser.add_argument("--pupils", type=int, default=10_000)
    parser.add_argument("--schools", type=int, default=20)
    parser.add_argument("--notify-replicas", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--sink", choices=("lean", "aiosmtpd"), default="lean", help="the SMTP server that receives the digests"
    )
    opts = parser.parse_args()

    from linking.codes import new_key
    from portal.natsserver import start_nats

    tmp = Path(tempfile.mkdtemp(prefix="portal-bench-digest-"))
    sink = Sink() if opts.sink == "aiosmtpd" else LeanSink()
    sink.start()
    nats = start_nats(tmp / "nats", log_file=tmp / "nats.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        PORTAL_DATA_DIR=str(tmp / "data"),
        PORTAL_NATS_URL=nats.url,
        PORTAL_LOG_LEVEL="WARNING",
        PORTAL_SMTP_URL=f"smtp://127.0.0.1:{sink.port}?starttls=false",
        PORTAL_NOTIFY_DIGEST_EVERY_SECONDS="0",
        PORTAL_PUBLIC_URL="https://portal.bench.example",
        PORTAL_LINKING_CODE_KEY=new_key(),
    )
    urls: dict[str, str] = {}
    dbs: list[str] = []
    procs: dict[str, subprocess.Popen] = {}
    try:
        from contracts.kit.settings import sqlite_url

        for service in SERVICES:
            if opts.backend == "postgres":
                name = f"portal_bench_digest_{service}_{uuid.uuid4().hex[:6]}"
                _pg_admin(f'CREATE DATABASE "{name}"')
                dbs.append(name)
                urls[service] = f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
                env[f"PORTAL_{service.upper()}_DATABASE_URL"] = urls[service]
            else:
                urls[service] = sqlite_url(tmp / "data", service)
        say(f"[{opts.backend}] migrating; seeding {opts.schools} schools, {opts.pupils} pupils, {opts.parents} parents")
        subprocess.run([PORTAL, "migrate"], env=env, check=True, capture_output=True, text=True)
        asyncio.run(seed(urls, opts.parents, opts.pupils, opts.schools))

        say("starting the services")
        for service in SERVICES:
            for i in range(opts.notify_replicas if service == "notify" else 1):
                label = f"{service}{i + 1}" if service == "notify" else service
                procs[label] = subprocess.Popen(
                    [PORTAL, "service", service, "--no-migrate"], env=env,
                    stdout=(tmp / f"{label}.out").open("w"), stderr=(tmp / f"{label}.err").open("w"),
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
        # Ready when a run answers (every service it asks is serving).
        deadline = time.monotonic() + 120
        while True:
            try:
                digest_run(env, FRIDAY_1600 - timedelta(hours=1))  # before 16:00: nobody is due yet
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    for label in procs:
                        say(f"--- {label}\n" + (tmp / f"{label}.err").read_text()[-1500:])
                    raise
                time.sleep(1)

        cpu_before = {label: cpu_of(p.pid) for label, p in procs.items()}
        sink_cpu = time.process_time()  # this process: the sink's thread, mostly
        say(f"the run: Friday 16:00, {opts.parents} parents")
        started = time.monotonic()
        run_s, printed = digest_run(env, FRIDAY_1600)
        say(printed)
        while sink.count < opts.parents and time.monotonic() - started < opts.timeout:
            time.sleep(0.2)
        total_s = (sink.last_at or time.monotonic()) - started
        cpu = {label: cpu_of(p.pid) - cpu_before[label] for label, p in procs.items()}
        sink_cpu = time.process_time() - sink_cpu
        sent = sink.count
        again_s, again = digest_run(env, FRIDAY_1600 + timedelta(hours=1))
        time.sleep(3)

        lines = [
            f"# Digest run: {opts.parents:,} parents, {opts.schools} schools, {opts.backend}, "
            f"{opts.notify_replicas} notify replica(s), {os.cpu_count()} cores",
            "",
            "| what | figure |",
            "|---|---|",
            f"| composed and recorded (`portal digest run` answered) | {run_s:.1f} s |",
            f"| every digest received by the SMTP sink ({opts.sink}) | {total_s:.1f} s for {sent:,} emails, "
            f"{sink.bytes / 1e6:,.0f} MB |",
            f"| sending rate | {sent / total_s:,.0f} emails/s |" if total_s > 0 else "| sending rate | - |",
            *(f"| CPU of {label} during the run | {seconds:.1f} s |" for label, seconds in cpu.items()),
            f"| CPU of the SMTP sink (this process) during the run | {sink_cpu:.1f} s |",
            f"| the same run an hour later | {again_s:.1f} s, {sink.count - sent} more sent ({again}) |",
        ]
        if sent < opts.parents:
            lines.append(f"| **not every digest arrived within {opts.timeout:g} s** | {sent:,} of {opts.parents:,} |")
        print("\n".join(lines), flush=True)
    except Exception:
        for label in procs:
            say(f"--- {label}\n" + (tmp / f"{label}.err").read_text()[-3000:])
        raise
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()
        sink.stop()
        for name in dbs:
            try:
                _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:  # noqa: BLE001 - the figures are printed; a leftover database is named
                say(f"could not drop {name}: {exc}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
