"""PORTAL_DB_POOL_SIZE: the most PostgreSQL connections one process of a part holds, whatever the
load (docs/operations.md, "Database connections"). Linking, as deployed (`portal service
linking`), applies a roster from the platform while it answers hundreds of requests at once, each
a transaction of its own; PostgreSQL's own view (pg_stat_activity) counts its connections
meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import nats
import natsauth
import pytest
from helpers import eventually

from contracts import linking, platform
from contracts.kit.rpc import RpcError, call
from contracts.rpc import HealthRequest, health

PORTAL = str(Path(sys.executable).with_name("portal"))
POOL = 3
# The machine's PostgreSQL, as tests/conftest.py finds it.
PG_HOST = os.environ.get("PORTAL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PORTAL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PORTAL_TEST_PG_USER", "postgres")


@pytest.mark.postgres
async def test_a_part_never_holds_more_connections_than_its_pool_size(pg, fresh_nats, tmp_path: Path) -> None:
    url = pg.create("pool")
    database = url.rsplit("/", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_"))}
    env.update(
        PORTAL_NATS_URL=fresh_nats.url,
        PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR),
        PORTAL_DATA_DIR=str(tmp_path / "data"),
        PORTAL_LINKING_DATABASE_URL=url,
        PORTAL_LINKING_CODE_KEY=secrets.token_hex(32),
        PORTAL_DB_POOL_SIZE=str(POOL),
    )
    log = tmp_path / "linking.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([PORTAL, "service", "linking"], env=env, stdout=out, stderr=subprocess.STDOUT)
    nc = await nats.connect(fresh_nats.url)
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:

        async def started() -> bool:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                await call(nc, health("linking"), HealthRequest(), timeout=1)
            except RpcError:
                return False
            return True

        await eventually(started, timeout=60, interval=0.2, message="linking started")

        counts: list[int] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                counts.append(
                    await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database)
                )
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())

        # A roster for the consumer's transactions...
        school = f"school-{uuid.uuid4().hex[:6]}"
        events = [
            platform.SchoolUpserted(trust_id="trust-pool", school_id=school, name="Pool", timezone="Europe/London")
        ]
        events += [
            platform.PupilUpserted(
                school_id=school, pupil_id=f"p-{i}", first_name="Amy", last_name="Adams", class_ids=[]
            )
            for i in range(3000)
        ]
        for event in events:
            subject = (
                platform.SCHOOL_UPSERTED if isinstance(event, platform.SchoolUpserted) else platform.PUPIL_UPSERTED
            )
            await nc.publish(subject, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id})
        await nc.flush()

        # ...and, meanwhile, 200 requests at a time (each a transaction of its own).
        failures: list[str] = []

        async def ask(i: int) -> None:
            try:
                await call(nc, linking.PARENT_CHILDREN, linking.ParentRequest(parent_id=f"parent-{i}"), timeout=30)
            except RpcError as exc:
                failures.append(exc.code)

        for round_ in range(5):
            await asyncio.gather(*(ask(round_ * 200 + i) for i in range(200)))

        async def applied() -> bool:
            info = await nc.jetstream().consumer_info("PLATFORM", "linking-roster")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(applied, timeout=60, interval=0.05, message="the backlog applied")
        done.set()
        await watcher

        print(
            f"\nPORTAL_DB_POOL_SIZE={POOL}: at most {max(counts)} connections over {len(counts)} looks "
            f"(1,000 requests, 200 at a time, and a roster of 3,000 pupils)"
        )
        assert failures == []
        assert max(counts) <= POOL
        # The load did need more than one at once: the bound was reached, not just respected.
        assert max(counts) == POOL
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        await admin.close()
        await nc.close()


@pytest.mark.postgres
async def test_a_connection_the_database_cut_is_never_handed_out(pg) -> None:
    # A failover or a restart cuts every connection a replica holds: the pool's check before
    # each checkout (one round trip) finds them gone and opens new ones, so no read or
    # transaction after it fails.
    from sqlalchemy import text

    from contracts.kit.db import Database

    url = pg.create("ping")
    db = Database(url, pool_size=POOL)
    try:
        # Every pooled connection made and returned.
        async def read() -> int:
            async with db.reader() as s:
                return (await s.execute(text("SELECT 1"))).scalar_one()

        assert await asyncio.gather(*(read() for _ in range(POOL))) == [1] * POOL
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
        try:
            cut = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
                url.rsplit("/", 1)[1],
            )
        finally:
            await admin.close()
        assert cut == POOL
        for _ in range(POOL + 1):
            assert await read() == 1
            assert await db.read_keys("SELECT 1 WHERE 'a' IN {keys}", ["a"]) == [(1,)]
    finally:
        await db.dispose()
