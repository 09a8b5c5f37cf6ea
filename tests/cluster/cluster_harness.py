"""The portal as a deployment runs it on many machines, on one: three nats-servers clustered with
JetStream (file storage, `sync_interval: always`, the generated users and permissions, routes
authenticated), one PostgreSQL database per service, two replicas of every part (`portal service
NAME` processes, each with its own seed from PORTAL_NATS_CREDS_DIR and PORTAL_NATS_URL listing
the three servers) and two gateways on ports of their own.

Every process can be SIGKILLed and started again; `Portal` drives it over HTTP as parents and
staff do, and reads each part's database and metrics as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path

import httpx
import nats
import natsauth
from helpers import eventually
from smtp_server import SmtpServer

from contracts import identity, platform
from contracts import linking as lc
from contracts.base import Event
from contracts.kit.rpc import call
from contracts.kit.streams import ensure_streams
from contracts.streams import ALL as ALL_STREAMS
from portal.natsserver import free_port

PORTAL = str(Path(sys.executable).with_name("portal"))
SERVICES = ("identity", "linking", "notify", "overview")
PARTS = (*SERVICES, "gateway")
PUBLIC_URL = "http://portal.test"
PASSWORD = "correct horse battery staple"
STAFF_PASSWORD = "a long staff passphrase"
VERIFY_SUBJECT = "Confirm your email address for Parent Portal"
MIB = 1024 * 1024
# Small enough for many streams × 3 replicas on a test machine's disk; applied at start-up.
STREAM_MAX_BYTES = 64 * MIB
# Each process holds at most this many PostgreSQL connections: 8 service replicas stay well under
# the machine's max_connections (100), which other test runs share.
DB_POOL_SIZE = 3


def http_client(base_url: str, *, timeout: float = 10) -> httpx.AsyncClient:
    """A client that keeps no cookie: each request says which session it carries (a login's
    cookie would otherwise sign in, and on the next login end, every later request's session)."""
    jar = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, cookies=jar)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Replica:
    """One `portal service NAME` process; killed and started again on the same ports."""

    part: str
    index: int
    env: dict[str, str]
    log: Path
    ops_port: int
    http_port: int | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return f"{self.part}-{self.index + 1}"

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n==== start {self.starts} ====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [PORTAL, "service", self.part, "--no-migrate"]
                if self.part != "gateway"
                else [PORTAL, "service", "gateway"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no goodbye, nothing finished or handed back."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM and wait (the exit status; killed after 15 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def ready(self) -> bool:
        """Its /readyz answers 200 (its database and NATS answer); a gateway's /ready too (every
        service answers it)."""
        if not self.running:
            if self.proc is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/readyz", timeout=2) as r:
                if r.status != 200:
                    return False
            if self.http_port is not None:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ready", timeout=3) as r:
                    return r.status == 200
        except OSError:
            return False
        return True

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ops_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus text-format metric's samples matching `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@dataclass
class School:
    school_id: str
    class_ids: list[str]
    pupils: list[str]
    names: dict[str, str]
    codes: dict[str, str] = field(default_factory=dict)
    teacher_token: str = ""
    admin_token: str = ""


class Cluster:
    """Everything of one cluster test run; `start()` then `stop()`."""

    def __init__(self, tmp: Path, pg, *, logs: Path | None = None) -> None:
        self.tmp = tmp
        self.logs = logs or tmp / "logs"
        self.pg = pg
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nats = natsauth.authed_cluster(tmp / "nats", name="portal-cluster", log_dir=self.logs)
        self.url = natsauth.cluster_url(self.nats)
        self.smtp = SmtpServer(free_port()).start()
        self.databases = {name: pg.create(name) for name in SERVICES}
        from linking.codes import new_key

        taken: set[int] = {s.port for s in self.nats}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_"))}
        self.env.update(
            PORTAL_NATS_URL=self.url,
            PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR),
            PORTAL_DATA_DIR=str(tmp / "data"),
            PORTAL_PUBLIC_URL=PUBLIC_URL,
            PORTAL_SMTP_URL=self.smtp.url,
            PORTAL_STREAM_REPLICAS="3",
            PORTAL_STREAM_MAX_BYTES=str(STREAM_MAX_BYTES),
            PORTAL_DB_POOL_SIZE=str(DB_POOL_SIZE),
            PORTAL_LINKING_CODE_KEY=new_key(),
            PORTAL_IDENTITY_ARGON2_TIME_COST="2",
            PORTAL_IDENTITY_ARGON2_MEMORY_KIB="19456",
            PORTAL_IDENTITY_ARGON2_PARALLELISM="1",
            PORTAL_LOG_LEVEL="INFO",
            PORTAL_LOG_FORMAT="json",
            **{f"PORTAL_{name.upper()}_DATABASE_URL": url for name, url in self.databases.items()},
        )
        self.logs.mkdir(parents=True, exist_ok=True)
        self.replicas: dict[str, list[Replica]] = {}
        for part in PARTS:
            self.replicas[part] = []
            for i in range(2):
                ops = free_port(besides=taken)
                taken.add(ops)
                http = None
                env = {**self.env, "PORTAL_OPS_PORT": str(ops)}
                if part == "gateway":
                    http = free_port(besides=taken)
                    taken.add(http)
                    env["PORTAL_HTTP_PORT"] = str(http)
                self.replicas[part].append(
                    Replica(part, i, env, self.logs / f"{part}-{i + 1}.log", ops_port=ops, http_port=http)
                )
        self.gateways = [f"http://127.0.0.1:{r.http_port}" for r in self.replicas["gateway"]]
        self.nc: nats.NATS | None = None

    # -- starting and stopping -------------------------------------------------------------------

    def all_replicas(self) -> list[Replica]:
        return [r for part in PARTS for r in self.replicas[part]]

    async def wait_nats(self, timeout: float = 60) -> None:
        await eventually(
            lambda: natsauth.jetstream_ready(self.nats), timeout=timeout, interval=0.2, message="JetStream cluster"
        )

    async def connect(self) -> nats.NATS:
        """The tests' own connection (as the learning platform and an operator would), to any server."""

        async def quiet(_exc: Exception) -> None:
            pass

        self.nc = await nats.connect(
            self.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=quiet
        )
        return self.nc

    async def create_streams_as_before(self, *, replicas: int, max_bytes: int) -> None:
        """The portal's streams as an earlier deployment left them (one replica, other limits)."""
        assert self.nc is not None
        await ensure_streams(
            self.nc.jetstream(timeout=10), ALL_STREAMS, replicas=replicas, max_bytes=max_bytes, attempts=40
        )

    def migrate(self) -> None:
        done = subprocess.run(
            [PORTAL, "migrate"], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr

    async def start_parts(self, timeout: float = 240) -> float:
        """Every replica, at once; the seconds until each answers ready."""
        started = time.monotonic()
        for r in self.all_replicas():
            r.start()
        await eventually(
            lambda: all(r.ready() for r in self.all_replicas()),
            timeout=timeout,
            interval=0.5,
            message="every replica ready",
        )
        return time.monotonic() - started

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for r in self.all_replicas():
            codes[r.name] = r.stop()
        for s in self.nats:
            s.stop()
        self.smtp.stop()
        return codes

    # -- an operator's view ------------------------------------------------------------------------

    def node_of(self, server_name: str) -> natsauth.AuthedNats:
        """The nats-server of a JetStream server name (`portal-<port>`)."""
        return next(s for s in self.nats if server_name == f"portal-{s.port}")

    async def stream_info(self, name: str):
        assert self.nc is not None
        js = self.nc.jetstream(timeout=5)
        for _ in range(40):
            try:
                return await js.stream_info(name)
            except Exception:  # noqa: BLE001 - an election in progress; asked again
                await asyncio.sleep(0.5)
        return await js.stream_info(name)

    async def sql(self, service: str, query: str, *args) -> list:
        import asyncpg

        url = self.databases[service].replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    def portal_status(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [PORTAL, "status", "--json"], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )

    # -- the platform and staff ---------------------------------------------------------------------

    async def publish(self, subject: str, event: Event, *, msg_id: str | None = None) -> None:
        assert self.nc is not None
        await self.nc.jetstream(timeout=10).publish(
            subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": msg_id or event.event_id}
        )

    async def roster(self, trust_id: str, name: str, classes: int, per_class: int) -> School:
        school = School(uid("school"), [uid("class") for _ in range(classes)], [], {})
        events: list[tuple[str, Event]] = [
            (
                platform.SCHOOL_UPSERTED,
                platform.SchoolUpserted(
                    trust_id=trust_id, school_id=school.school_id, name=name, timezone="Europe/London"
                ),
            )
        ]
        for n, class_id in enumerate(school.class_ids):
            events.append(
                (
                    platform.CLASS_UPSERTED,
                    platform.ClassUpserted(school_id=school.school_id, class_id=class_id, name=f"Class {n + 1}"),
                )
            )
            for _ in range(per_class):
                pid = uid("pupil")
                first = f"Kid{len(school.pupils) + 1:03d}"
                school.pupils.append(pid)
                school.names[pid] = first
                events.append(
                    (
                        platform.PUPIL_UPSERTED,
                        platform.PupilUpserted(
                            school_id=school.school_id,
                            pupil_id=pid,
                            first_name=first,
                            last_name="Smith",
                            class_ids=[class_id],
                        ),
                    )
                )
        for subject, ev in events:
            await self.publish(subject, ev)
        assert self.nc is not None

        async def applied() -> bool:
            status = await call(
                self.nc, lc.ROSTER_STATUS, lc.RosterStatusRequest(event_ids=[e.event_id for _, e in events]), timeout=5
            )
            return not status.missing

        await eventually(applied, timeout=60, interval=0.5, message="the roster applied")
        return school

    async def staff_token(self, http: httpx.AsyncClient, school_id: str, role: str) -> str:
        assert self.nc is not None
        email = f"{uid(role)}@school.example"
        await call(
            self.nc,
            identity.CREATE_STAFF,
            identity.CreateStaffRequest(
                email=email, name=f"{role.title()} Person", role=role, school_id=school_id, password=STAFF_PASSWORD
            ),
            timeout=10,
        )
        login = await http.post("/api/v1/auth/login", json={"email": email, "password": STAFF_PASSWORD})
        assert login.status_code == 200, login.text
        return str(login.json()["access_token"])

    async def printed_codes(self, http: httpx.AsyncClient, school: School) -> None:
        """'Create QR codes' for every class; each pupil's typed code, read off the printable sheet."""
        headers = {"Authorization": f"Bearer {school.teacher_token}"}
        for class_id in school.class_ids:
            created = await http.post(f"/api/v1/classes/{class_id}/codes", headers=headers)
            assert created.status_code == 201, created.text
            sheet = await http.get(f"/api/v1/classes/{class_id}/qr-sheet", headers=headers, timeout=60)
            assert sheet.status_code == 200, sheet.text
            for pid, first in school.names.items():
                card = re.search(re.escape(first) + r"\b.*?class=\"code\">([0-9A-Z-]{14})<", sheet.text, re.S)
                if card and pid not in school.codes:
                    school.codes[pid] = card[1]

    def verification_tokens(self, address: str) -> list[str]:
        found = []
        for m in self.smtp.to(address):
            if m.subject == VERIFY_SUBJECT:
                token = re.search(re.escape(PUBLIC_URL) + r"/verify\?token=([\w-]+)", m.part("plain"))
                if token:
                    found.append(token[1])
        return found
