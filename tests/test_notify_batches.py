"""Notify's sender works in batches: the daily cap still counts every email, and a sender that
dies between sending a batch and recording it sends none of it again."""

from __future__ import annotations

import asyncio
from collections import Counter

import nats
import pytest
from helpers import eventually
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine
from test_notify import Outcomes, publish, start_notify
from test_security_notify import ledger

from contracts import notify as contract
from contracts.base import utcnow
from notify.tables import BULK, Email


def exists(to: str) -> contract.AccountExistsEmail:
    return contract.AccountExistsEmail(to=to, login_url="http://l", reset_url="http://r")


@pytest.mark.slow
async def test_two_replicas_sending_batches_to_the_same_addresses_keep_each_daily_cap(
    fresh_nats, smtp_server, pg
) -> None:
    """Batches of both replicas hold the same addresses at once: each address gets its three
    emails a day and no more; the emails over the cap fail, the others in their batches go."""
    db_url = pg.create("notifycap")
    a = await start_notify(fresh_nats.url, db_url, smtp_server.url, notify_daily_cap=3)
    b = await start_notify(fresh_nats.url, db_url, smtp_server.url, notify_daily_cap=3)
    smtp_server.handler.delay = 0.005
    nc = await nats.connect(fresh_nats.url)
    outcomes = Outcomes()
    await outcomes.attach(nc)
    busy = [f"busy{i}@example.org" for i in range(4)]
    # Interleaved, so that every batch has some of each busy address and a few others.
    requests = [exists(busy[i % 4]) for i in range(40)] + [exists(f"once{i}@example.org") for i in range(60)]
    requests.sort(key=lambda r: r.event_id)
    async with a.running(), b.running():
        for r in requests:
            await publish(nc.jetstream(), r)
        await eventually(lambda: len(outcomes.delivered) + len(outcomes.failed) == 100, timeout=60)
        await asyncio.sleep(1)
    received = Counter(m.envelope_to[0] for m in smtp_server.messages)
    assert {to: received[to] for to in busy} == dict.fromkeys(busy, 3)
    assert all(received[f"once{i}@example.org"] == 1 for i in range(60))
    assert sum(received.values()) == 72 == len(outcomes.delivered)
    assert [f.reason for f in outcomes.failed] == ["daily_cap"] * 28
    assert a.sender.sent_total > 0 and b.sender.sent_total > 0, "both replicas sent"
    await nc.close()


async def test_a_sender_that_dies_after_sending_a_batch_before_recording_it_sends_none_again(
    database_url: str, fresh_nats, smtp_server
) -> None:
    """The outcomes of a batch are recorded after its last email; each email was marked
    `delivering` before its final ".", so a sender gone before recording them leaves emails
    that are never sent again (recorded as sent, unconfirmed) rather than sent twice."""
    first = await start_notify(fresh_nats.url, database_url, smtp_server.url, notify_claim_seconds=2)
    assert first.sender is not None
    batches: list[int] = []

    async def never_recorded(outcomes):  # as if the process died here, each time
        batches.append(len(outcomes))
        return []

    first.sender._finish_all = never_recorded  # type: ignore[method-assign]
    nc = await nats.connect(fresh_nats.url)
    requests = [exists(f"p{i}@example.org") for i in range(10)]
    async with first.running():
        for r in requests:
            await publish(nc.jetstream(), r)
        await eventually(lambda: len(smtp_server.messages) == 10 and sum(batches) == 10, timeout=20)
        rows = await ledger(database_url)
        assert {row.status for row in rows} <= {"delivering", "sent"}, "sent; never to be sent again"
    # Its claims lapse; whichever sender looks next records them.
    second = await start_notify(fresh_nats.url, database_url, smtp_server.url, notify_claim_seconds=2)
    async with second.running():

        async def finished() -> list[Email] | None:
            rows = await ledger(database_url)
            return rows if {row.status for row in rows} == {"sent"} else None

        rows = await eventually(finished, timeout=20)
        await asyncio.sleep(2.5)
    assert sorted(m.envelope_to[0] for m in smtp_server.messages) == sorted(r.to for r in requests), "none twice"
    assert all(row.last_error.startswith("unconfirmed") for row in rows)
    assert all(row.content is None and row.attempts == 1 for row in rows)
    await nc.close()


async def test_stopping_in_the_middle_of_a_batch_hands_back_the_emails_not_started(
    fresh_nats, smtp_server, tmp_path
) -> None:
    """Ten emails in one batch of the one connection; the stop comes during the first: it is
    finished and recorded, the nine others are back in the ledger at once for any replica."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    runtime = await start_notify(fresh_nats.url, db, smtp_server.url, notify_smtp_concurrency=1)
    requests = [exists(f"s{i}@example.org") for i in range(10)]
    now = utcnow()
    engine = create_async_engine(db)
    async with engine.begin() as conn:  # recorded before the sender starts: its first claim takes all ten
        await conn.execute(
            insert(Email.__table__),
            [
                {
                    "request_id": r.event_id,
                    "kind": r.kind,
                    "reference": "",
                    "request": r.model_dump_json(),
                    "recipient": r.to,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for r in requests
            ],
        )
    await engine.dispose()
    smtp_server.handler.delay = 1.0  # the stop comes in the middle of the first email
    async with runtime.running():
        await eventually(lambda: smtp_server.handler.rcpt_attempts, timeout=15, message="the first email being sent")
    assert len(smtp_server.messages) == 1
    rows = await ledger(db)
    assert sorted((row.status, row.claimed_by) for row in rows) == [("pending", None)] * 9 + [("sent", None)]


async def test_a_4xx_to_the_final_dot_sends_the_same_bytes_again(fresh_nats, smtp_server, tmp_path) -> None:
    """The server refuses the message itself once (451 after its final "."): the retry sends
    the very same message (Date, Message-ID, body), kept in the ledger for it alone."""
    db = f"sqlite+aiosqlite:///{tmp_path / 'n.db'}"
    runtime = await start_notify(fresh_nats.url, db, smtp_server.url)
    handler = smtp_server.handler
    seen: list[bytes] = []
    accept = handler.handle_DATA

    async def once_451(server, session, envelope):
        seen.append(envelope.original_content)
        if len(seen) == 1:
            return "451 4.3.0 try again later"
        return await accept(server, session, envelope)

    handler.handle_DATA = once_451
    nc = await nats.connect(fresh_nats.url)
    outcomes = Outcomes()
    await outcomes.attach(nc)
    async with runtime.running():
        await publish(nc.jetstream(), exists("again@example.org"))
        await eventually(lambda: len(outcomes.delivered) == 1, timeout=20)
    assert len(smtp_server.messages) == 1
    assert len(seen) == 2 and seen[0] == seen[1], "the same message, to the byte (its MIME boundary is random)"
    assert outcomes.delivered[0].attempts == 2
    [row] = await ledger(db)
    assert (row.status, row.content) == ("sent", None), "what it carried is gone once sent"
    await nc.close()


async def test_an_email_a_person_waits_for_goes_before_a_digest_runs_thousands(
    database_url: str, fresh_nats, smtp_server
) -> None:
    """Bulk emails (a Friday's digests, recorded so by the digest run) go after any other that is
    due: a password reset asked for while hundreds of them wait is sent within the next batches,
    not after the last of them."""
    notify = await start_notify(fresh_nats.url, database_url, smtp_server.url)
    smtp_server.handler.delay = 0.01
    now = utcnow()
    waiting = [exists(f"digest{i}@example.org") for i in range(300)]
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            insert(Email),
            [
                {
                    "request_id": r.event_id,
                    "kind": r.kind,
                    "reference": "digest:2026-12-04",
                    "request": r.model_dump_json(),
                    "recipient": r.to,
                    "recipient_key": r.to,
                    "status": "pending",
                    "priority": BULK,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for r in waiting
            ],
        )
    await engine.dispose()
    nc = await nats.connect(fresh_nats.url)
    async with notify.running():
        await eventually(lambda: len(smtp_server.messages) >= 20, timeout=30)
        reset = contract.PasswordResetEmail(to="waiting@example.org", reset_url="http://r/1", expires_at=utcnow())
        await publish(nc.jetstream(), reset)
        await eventually(lambda: len(smtp_server.messages) == 301, timeout=90)
    order = [m.envelope_to[0] for m in smtp_server.messages]
    at = order.index("waiting@example.org")
    # Emails already claimed when it came go first; nothing waits for the other digests.
    assert at < 20 + 4 * 2 * 25, f"the reset was email {at + 1} of 301"
    await nc.close()
