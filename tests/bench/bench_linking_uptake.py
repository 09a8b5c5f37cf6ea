"""How long the uptake figures of a 20-school trust take (the whole answer under 300 ms):
10,000 pupils in 400 classes, 15,000 parents linked, a few thousand invitations; then the same
trust with 30,000 parents (more ids than one NATS message of 1 MB holds).

    .venv/bin/python tests/bench/bench_linking_uptake.py [--postgres URL] [--identity-postgres URL]

Fills linking's and identity's SQLite databases (or the empty PostgreSQL databases given)
directly, then asks `rpc.linking.uptake.v1` over NATS for the trust (a row per school), a school
(a row per class) and a class, and times the gateway's whole answer for the trust as
`GET /uptake` computes it: the uptake, the further pages of linked parents
(`rpc.linking.uptake_parents.v1`, as many as a message holds) and identity's
`rpc.identity.parent_activity.v2` for each page. Prints median and worst of each, and the
largest message. Not a test: nothing fails on slow figures.

The three parts share this one process; its heap is frozen once filled, as each part's own
process freezes its heap once started.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
from sqlalchemy import insert, text

from contracts import identity as idc
from contracts import linking as contract
from contracts.kit.heap import freeze_startup_heap
from contracts.kit.logs import configure_logging
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from gateway import uptake as figures
from gateway.clients import IdentityClient, StaffLinking
from gateway.clients.nats import NatsTransport
from gateway.settings import GatewaySettings
from identity import app as identity_app
from identity.tables import Account, Session
from linking import app as linking_app
from linking import codes
from linking.tables import ClassMember, Invitation, Link, Pupil, School, SchoolClass, Trust
from portal.natsserver import start_nats

SCHOOLS, CLASSES_PER_SCHOOL, PUPILS_PER_CLASS = 20, 20, 25
PARENTS = (15_000, 30_000)
RUNS = 20


def report(label: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    print(f"{label:<56} median {statistics.median(ms):7.1f} ms   worst {ms[-1]:7.1f} ms")


async def fill_linking(runtime, count: int) -> list[str]:
    now = datetime.now(UTC)
    schools = [f"s{i}" for i in range(SCHOOLS)]
    classes = [(s, f"{s}-c{j}") for s in schools for j in range(CLASSES_PER_SCHOOL)]
    pupils = [(s, c, f"{c}-p{k}") for s, c in classes for k in range(PUPILS_PER_CLASS)]
    parents = [uuid.uuid4().hex for _ in range(count)]
    links = []
    for n, parent_id in enumerate(parents):
        school, _, pupil_id = pupils[(n * 7) % len(pupils)]
        links.append(
            {
                "id": uuid.uuid4().hex,
                "parent_id": parent_id,
                "pupil_id": pupil_id,
                "school_id": school,
                "relationship": "mother",
                "status": "linked",
                "via": "printed",
                "code_id": "x",
                "live_key": f"{parent_id}:{pupil_id}",
                "created_at": now,
                "activated_at": now,
            }
        )
    invitations = [
        {
            "id": uuid.uuid4().hex,
            "pupil_id": p,
            "school_id": s,
            "email": f"{p}@example.org",
            "email_key": f"{p}@example.org",
            "code_id": uuid.uuid4().hex,
            "status": "invited" if n % 5 else "bounced",
            "sent_at": now,
            "expires_at": now + timedelta(days=14),
        }
        for n, (s, _, p) in enumerate(pupils[::3])
    ]
    async with runtime.linking.ctx.db.session() as s:
        await s.execute(insert(Trust), [{"trust_id": "t", "name": "Trust", "version_at": now}])
        await s.execute(
            insert(School),
            [
                {"school_id": x, "trust_id": "t", "name": f"School {x}", "timezone": "Europe/London", "version_at": now}
                for x in schools
            ],
        )
        await s.execute(
            insert(SchoolClass),
            [{"class_id": c, "school_id": x, "name": f"Class {c}", "version_at": now} for x, c in classes],
        )
        await s.execute(
            insert(Pupil),
            [
                {"pupil_id": p, "school_id": x, "first_name": "A", "last_name": "B", "version_at": now}
                for x, _, p in pupils
            ],
        )
        await s.execute(insert(ClassMember), [{"class_id": c, "pupil_id": p} for _, c, p in pupils])
        await s.execute(insert(Link), links)
        await s.execute(insert(Invitation), invitations)
        await s.commit()
    return parents


async def fill_identity(runtime, parents: list[str]) -> None:
    now = datetime.now(UTC)
    accounts = [
        {
            "id": p,
            "role": "parent",
            "email": f"{p}@example.org",
            "email_key": f"{p}@example.org",
            "name": "A Parent",
            "created_at": now,
            "updated_at": now,
        }
        for p in parents
    ]
    # Two in three have signed in, one in three of them within the month.
    sessions = [
        {
            "id": uuid.uuid4().hex,
            "account_id": p,
            "token_hash": uuid.uuid4().hex,
            "created_at": now - timedelta(days=40),
            "last_seen_at": now - timedelta(days=1 if n % 3 == 0 else 35),
            "idle_seconds": 3600,
            "absolute_expires_at": now + timedelta(days=1),
        }
        for n, p in enumerate(parents)
        if n % 3
    ]
    async with runtime.service.runtime.db.session() as s:
        await s.execute(insert(Account), accounts)
        await s.execute(insert(Session), sessions)
        await s.commit()


async def main(postgres: str | None, identity_postgres: str | None, count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_nats(Path(tmp) / "nats")
        link_settings = linking_app.Settings(
            nats_url=server.url,
            database_url=postgres or f"sqlite+aiosqlite:///{tmp}/l.db",
            data_dir=Path(tmp),
            log_level="WARNING",
            linking_code_key=codes.new_key(),
        )
        id_settings = identity_app.Settings(
            nats_url=server.url, data_dir=Path(tmp) / "identity", database_url=identity_postgres, log_level="WARNING"
        )
        await asyncio.to_thread(migrate, linking_app, link_settings)
        await asyncio.to_thread(migrate, identity_app, id_settings)
        linking = linking_app.build(link_settings)
        ident = identity_app.build(id_settings)
        nc = await nats.connect(server.url)
        try:
            async with linking.running(), ident.running():
                t = time.perf_counter()
                parents = await fill_linking(linking, count)
                await fill_identity(ident, parents)
                print(f"filled in {time.perf_counter() - t:.1f} s")
                # Autovacuum is off on this machine's PostgreSQL: without statistics the planner
                # takes the tables for empty (a production server's autovacuum analyses them).
                for db, url in ((linking.linking.ctx.db, postgres), (ident.service.runtime.db, identity_postgres)):
                    if url is not None:
                        async with db.session() as s:
                            await s.execute(text("ANALYZE"))
                # As each part's process does once started: without it, every full collection
                # here walks the heap of all three parts at once (200,000 objects), pausing
                # whichever request is in flight for 100-300 ms.
                freeze_startup_heap()
                scopes = {
                    "trust (20 rows)": contract.UptakeRequest(scope=contract.StaffScope(trust_ids=["t"])),
                    "school (20 rows)": contract.UptakeRequest(scope=contract.StaffScope(school_ids=["s0"])),
                    "class": contract.UptakeRequest(scope=contract.StaffScope(school_ids=["s0"]), class_id="s0-c0"),
                }
                for label, req in scopes.items():
                    times = []
                    for _ in range(RUNS):
                        t = time.perf_counter()
                        await call(nc, contract.UPTAKE, req, timeout=30)
                        times.append(time.perf_counter() - t)
                    report(f"linking uptake, {label}", times)
                trust = await call(nc, contract.UPTAKE, scopes["trust (20 rows)"], timeout=30)
                size = len(trust.model_dump_json()) / 1e6
                print(f"{'the uptake with its first page of parents':<56} {len(trust.parent_ids)} ids, {size:.2f} MB")
                if trust.parents_after is not None:
                    page = contract.UptakeParentsRequest(
                        scope=contract.StaffScope(trust_ids=["t"]), after=trust.parents_after
                    )
                    times = []
                    for _ in range(RUNS):
                        t = time.perf_counter()
                        await call(nc, contract.UPTAKE_PARENTS, page, timeout=30)
                        times.append(time.perf_counter() - t)
                    report(f"linking uptake_parents, the second page of {count - len(trust.parent_ids)}", times)
                since = datetime.now(UTC) - timedelta(days=30)
                activity = idc.ParentActivityRequest(ids=trust.parent_ids, since=since)
                times = []
                for _ in range(RUNS):
                    t = time.perf_counter()
                    await call(nc, idc.PARENT_ACTIVITY, activity, timeout=30)
                    times.append(time.perf_counter() - t)
                report(f"identity parent_activity of the first page ({len(trust.parent_ids)})", times)
                transport = NatsTransport(
                    GatewaySettings(nats_url=server.url, data_dir=Path(tmp) / "gateway", rpc_timeout=30), nc
                )
                staff = StaffLinking(transport, contract.StaffScope(trust_ids=["t"]), "bench")
                ident_client = IdentityClient(transport)
                times = []
                for _ in range(RUNS):
                    t = time.perf_counter()
                    found = await figures.uptake(ident_client, staff, school_id=None, class_id=None)
                    times.append(time.perf_counter() - t)
                assert found["parents_linked"] == count, found["parents_linked"]
                report(f"GET /uptake of the trust: {count} parents, with identity", times)
        finally:
            await nc.close()
            server.stop()


if __name__ == "__main__":
    configure_logging(service="bench", level="WARNING", fmt="console")
    pg = sys.argv[sys.argv.index("--postgres") + 1] if "--postgres" in sys.argv else None
    id_pg = sys.argv[sys.argv.index("--identity-postgres") + 1] if "--identity-postgres" in sys.argv else None
    # A PostgreSQL database is filled once: the first figure only.
    for count in PARENTS if pg is None and id_pg is None else PARENTS[:1]:
        print(
            f"Python {sys.version.split()[0]}: {SCHOOLS} schools, "
            f"{SCHOOLS * CLASSES_PER_SCHOOL * PUPILS_PER_CLASS} pupils, {count} parents"
        )
        asyncio.run(main(pg, id_pg, count))
