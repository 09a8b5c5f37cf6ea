"""SIGTERM: a part stops taking work, finishes what it holds, hands back what it pulled and did not
start (no wait for redelivery) and exits with status 0 within 10 seconds (docs/operations.md,
"Stopping").

Real processes over a real nats-server: two replicas of the kit's test consumer (whose running
total shows an event applied twice) on PostgreSQL, and every part of the portal as a deployment
runs it (`portal service NAME`). Figures are printed; the only bound asserted on time is the
contract's (10 s to exit) and that handed-back messages do not wait out the 15 s ack wait.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import kitapp
import nats
import natsauth
import pytest
from helpers import eventually
from kitapp import emit_things, spawn

from contracts import platform
from contracts.base import utcnow
from portal.natsserver import free_port

PORTAL = str(Path(sys.executable).with_name("portal"))
EXIT_WITHIN = 10.0  # seconds: the contract's


def wait_exit(proc: subprocess.Popen, timeout: float) -> tuple[int | None, float]:
    """The exit status and how long it took (None if still running after `timeout`)."""
    started = time.monotonic()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, time.monotonic() - started
    return code, time.monotonic() - started


async def consumer_state(nc: nats.NATS, stream: str, durable: str) -> tuple[int, int]:
    """(messages not yet delivered, messages delivered and not acknowledged)."""
    info = await nc.jetstream().consumer_info(stream, durable)
    return info.num_pending, info.num_ack_pending


@pytest.mark.postgres
async def test_a_stopped_replica_finishes_its_batch_and_hands_back_the_rest_at_once(
    pg, fresh_nats, tmp_path: Path
) -> None:
    db = pg.create("stop")
    producer_db = f"sqlite+aiosqlite:///{tmp_path / 'producer.db'}"
    await kitapp.create_schema(producer_db)
    await kitapp.create_schema(db)
    producer = kitapp.build(kitapp.KitSettings(nats_url=fresh_nats.url, database_url=producer_db), consume=False)
    n = 3000
    await emit_things(producer, n, per_tx=500)
    async with producer.running():
        await eventually(lambda: _relayed(producer), timeout=30)

    nc = await nats.connect(fresh_nats.url)
    # A: slow (10 ms an event, batches of 200: 2 s a batch), so it always holds a batch being
    # applied, the next batch and what its pull requests brought meanwhile. B: quick.
    slow = spawn("consume", db, fresh_nats.url, "--batch-size", "200", "--delay", "0.01", log=tmp_path / "a.log")
    quick = None
    try:
        await eventually(lambda: _applied(db, 1), timeout=30, interval=0.05, message="A applying")
        quick = spawn("consume", db, fresh_nats.url, "--batch-size", "200", log=tmp_path / "b.log")
        # B takes every message A has not pulled: what is left then is what A holds.
        await eventually(
            lambda: _nothing_undelivered(nc), timeout=30, interval=0.05, message="every event delivered to a replica"
        )
        _, applied_before = await kitapp.read_totals(db)
        _, held = await consumer_state(nc, kitapp.STREAM.name, kitapp.DURABLE)

        stopped_at = time.monotonic()
        slow.send_signal(signal.SIGTERM)
        code, took = await asyncio.to_thread(wait_exit, slow, EXIT_WITHIN + 5)
        log_a = (tmp_path / "a.log").read_text()
        assert code == 0, f"A exited with {code} after {took:.1f}s:\n{log_a[-3000:]}"
        assert took < EXIT_WITHIN

        expected = (sum(range(n)), n)
        await eventually(lambda: _totals(db, expected), timeout=30, interval=0.02, message="every event applied")
        all_applied = time.monotonic() - stopped_at
        print(
            f"\nSIGTERM with {n - applied_before} events not applied ({held} delivered and unacknowledged): "
            f"A exited 0 after {took:.2f}s; every event applied once {all_applied:.2f}s after the SIGTERM "
            f"(ack wait 15 s)"
        )
        assert "consumer_handed_back" in log_a, log_a[-3000:]
        # Handed back, not left to the ack wait: B had them at once.
        assert all_applied < 5.0
        assert await consumer_state(nc, kitapp.STREAM.name, kitapp.DURABLE) == (0, 0)
    finally:
        for proc in (slow, quick):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        await nc.close()


async def _relayed(runtime) -> bool:
    return await kitapp.outbox_count(runtime) == 0


async def _applied(db: str, at_least: int) -> bool:
    return (await kitapp.read_totals(db))[1] >= at_least


async def _nothing_undelivered(nc: nats.NATS) -> bool:
    pending, _ = await consumer_state(nc, kitapp.STREAM.name, kitapp.DURABLE)
    return pending == 0


async def _totals(db: str, expected: tuple[int, int]) -> bool:
    got = await kitapp.read_totals(db)
    assert got[1] <= expected[1], f"applied {got[1]} times for {expected[1]} events"
    return got == expected


# -- every part, as deployed -------------------------------------------------------------------


def part_env(tmp: Path, nats_url: str, http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTAL_", "OTEL_"))}
    env.update(
        PORTAL_NATS_URL=nats_url,
        PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR),
        PORTAL_DATA_DIR=str(tmp / "data"),
        PORTAL_HTTP_PORT=str(http_port),
        PORTAL_LOG_LEVEL="INFO",
    )
    return env


async def test_every_part_exits_0_within_10_seconds_of_sigterm_even_mid_backlog(fresh_nats, tmp_path: Path) -> None:
    env = part_env(tmp_path, fresh_nats.url, free_port())
    names = ("identity", "linking", "notify", "overview", "gateway")
    procs: dict[str, subprocess.Popen] = {}
    logs = {name: tmp_path / f"{name}.log" for name in names}
    nc = await nats.connect(fresh_nats.url)
    try:
        for name in names:
            with logs[name].open("wb") as out:
                procs[name] = subprocess.Popen([PORTAL, "service", name], env=env, stdout=out, stderr=subprocess.STDOUT)

        async def started() -> bool:
            for name, proc in procs.items():
                assert proc.poll() is None, f"{name} exited:\n{logs[name].read_text()[-3000:]}"
            texts = [logs[name].read_text() for name in names if name != "gateway"]
            return all("service_started" in text for text in texts) and "nats_connected" in logs["gateway"].read_text()

        await eventually(started, timeout=60, interval=0.2, message="every part started")
        # A second overview, to take over what the first hands back; once the first migrated the
        # database: two replicas migrating one SQLite file at once collide (PostgreSQL's
        # migrations take a lock, SQLite has none), and a deployment migrates once anyway.
        with (tmp_path / "overview-2.log").open("wb") as out:
            second = subprocess.Popen(
                [PORTAL, "service", "overview", "--no-migrate"], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        await eventually(
            lambda: "service_started" in (tmp_path / "overview-2.log").read_text(),
            timeout=60,
            interval=0.2,
            message="the second overview started",
        )

        # The platform's events, for the overviews to apply while the first is stopped: sent
        # without waiting for each acknowledgement, so that a backlog builds up.
        school = "school-stop"
        due = utcnow()
        for i in range(20_000):
            event = platform.HomeworkAssigned(
                homework_id=f"hw-{i}", school_id=school, pupil_ids=[f"p-{i % 500}"], title="Read", due_at=due
            )
            await nc.publish(
                platform.HOMEWORK_ASSIGNED, event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.event_id}
            )
        await nc.flush()

        async def applying() -> bool:
            _, acking = await consumer_state(nc, "PLATFORM", "overview-platform")
            return acking > 0

        await eventually(applying, timeout=30, interval=0.01, message="the overviews applying the backlog")
        backlog = sum(await consumer_state(nc, "PLATFORM", "overview-platform"))
        stopped_at = time.monotonic()
        procs["overview"].send_signal(signal.SIGTERM)
        code, took = await asyncio.to_thread(wait_exit, procs["overview"], EXIT_WITHIN + 5)
        assert code == 0, f"overview exited with {code} after {took:.1f}s:\n{logs['overview'].read_text()[-3000:]}"
        assert took < EXIT_WITHIN

        async def all_acknowledged() -> bool:
            return await consumer_state(nc, "PLATFORM", "overview-platform") == (0, 0)

        await eventually(all_acknowledged, timeout=40, interval=0.02, message="the backlog applied")
        print(
            f"\noverview with {backlog} events not yet applied: exited 0 after {took:.2f}s; the other replica had "
            f"applied everything {time.monotonic() - stopped_at:.2f}s after the SIGTERM"
        )

        for name, proc in [*procs.items(), ("overview-2", second)]:
            if proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            code, took = await asyncio.to_thread(wait_exit, proc, EXIT_WITHIN + 5)
            log = (logs.get(name) or tmp_path / "overview-2.log").read_text()
            print(f"{name}: exit {code} after {took:.2f}s")
            assert code == 0, f"{name} exited with {code} after {took:.1f}s:\n{log[-3000:]}"
            assert took < EXIT_WITHIN
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if "second" in locals() and second.poll() is None:
            second.kill()
            second.wait()
        await nc.close()


# -- notify's emails -----------------------------------------------------------------------------


async def test_notify_stopping_finishes_the_email_it_is_sending_and_hands_back_the_others(
    fresh_nats, smtp_server, tmp_path: Path
) -> None:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from contracts import notify as contract
    from contracts.kit.service import migrate
    from notify import app as notify_app
    from notify.tables import PENDING, SENT, Email

    db = f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}"
    settings = notify_app.Settings(
        nats_url=fresh_nats.url, database_url=db, smtp_url=smtp_server.url, notify_smtp_concurrency=1
    )
    await asyncio.to_thread(migrate, notify_app, settings)
    runtime = notify_app.build(settings)
    # The server takes a second over each email's content: the stop comes in the middle of one.
    smtp_server.handler.delay = 1.0
    nc = await nats.connect(fresh_nats.url)
    delivered: list[bytes] = []

    async def on_outcome(msg) -> None:
        delivered.append(msg.data)

    await nc.subscribe(contract.EMAIL_DELIVERED, cb=on_outcome)
    requests = [
        contract.PasswordChangedEmail(to=f"parent{i}@example.org", reset_url="http://portal.test/reset-password")
        for i in range(3)
    ]
    try:
        async with runtime.running():
            for request in requests:
                await nc.jetstream().publish(
                    contract.request_subject(request.kind),
                    request.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": request.event_id},
                )
            await eventually(lambda: smtp_server.handler.rcpt_attempts, timeout=15, message="an email being sent")
            stopping = time.monotonic()
        took = time.monotonic() - stopping
        # The one being sent was finished, and its outcome published before the part was gone.
        assert len(smtp_server.messages) == 1
        [sent] = [r for r in requests if [r.to] == smtp_server.messages[0].envelope_to]
        await nc.flush()
        await eventually(lambda: delivered, timeout=2, message="its delivered event")
        engine = create_async_engine(db)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Email.request_id, Email.status, Email.claimed_by))).all()
        await engine.dispose()
        by_request = {row.request_id: (row.status, row.claimed_by) for row in rows}
        assert by_request.pop(sent.event_id)[0] == SENT
        # The others, claimed and not started, are back in the ledger for any replica at once.
        assert list(by_request.values()) == [(PENDING, None), (PENDING, None)]
        print(f"\nnotify stopped in {took:.2f}s while the SMTP server took 1 s over an email")
    finally:
        await nc.close()
