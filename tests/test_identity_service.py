"""Identity over a real NATS: what the gateway tests do not reach directly (rehashing when the
argon2 parameters change, staff from the roster's staff events)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import nats
import pytest
from helpers import eventually
from sqlalchemy import select, update

from contracts import identity as c
from contracts import platform
from contracts.base import utcnow
from contracts.kit import rpc
from contracts.kit.service import migrate
from identity import app as identity_app
from identity.tables import Account, Session

CHEAP = {"identity_argon2_time_cost": 2, "identity_argon2_memory_kib": 19456, "identity_argon2_parallelism": 1}


async def _stored_hash(runtime, email: str) -> str:
    async with runtime.db.reader() as s:
        return (await s.execute(select(Account.password_hash).where(Account.email_key == email))).scalar_one()


async def test_password_is_rehashed_on_login_when_the_parameters_change(fresh_nats, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats.url)
    old = identity_app.Settings(nats_url=fresh_nats.url, data_dir=tmp_path, **CHEAP)
    await asyncio.to_thread(migrate, identity_app, old)
    runtime = identity_app.build(old)
    async with runtime.running():
        await rpc.call(
            nc,
            c.CREATE_STAFF,
            c.CreateStaffRequest(
                email="t@school.example", name="T", role="teacher", school_id="s", password="a long staff passphrase"
            ),
            timeout=10,
        )
        before = await _stored_hash(runtime, "t@school.example")
    assert "m=19456,t=2,p=1" in before
    stronger = identity_app.Settings(
        nats_url=fresh_nats.url,
        data_dir=tmp_path,
        identity_argon2_time_cost=3,
        identity_argon2_memory_kib=19456,
        identity_argon2_parallelism=1,
    )
    runtime = identity_app.build(stronger)
    async with runtime.running():
        await rpc.call(
            nc, c.LOGIN, c.LoginRequest(email="t@school.example", password="a long staff passphrase"), timeout=10
        )
        after = await _stored_hash(runtime, "t@school.example")
    assert "m=19456,t=3,p=1" in after, "rehashed with today's parameters"
    await nc.close()


async def test_staff_from_the_roster_get_an_account_and_a_set_password_email(fresh_nats, tmp_path: Path) -> None:
    nc = await nats.connect(fresh_nats.url)
    settings = identity_app.Settings(
        nats_url=fresh_nats.url, data_dir=tmp_path, public_url="https://portal.example", **CHEAP
    )
    await asyncio.to_thread(migrate, identity_app, settings)
    requests: list[dict] = []

    async def on_request(msg) -> None:
        requests.append(json.loads(msg.data))

    await nc.subscribe("notify.request.set_password.v1", cb=on_request)
    runtime = identity_app.build(settings)
    async with runtime.running():
        js = nc.jetstream()
        head = platform.StaffUpserted(
            school_id="oak", staff_id="st-1", email="Head@Oak.example", name="Hannah Head", role="school_admin"
        )
        boss = platform.StaffUpserted(
            trust_id="t-1", staff_id="st-2", email="boss@trust.example", name="Bo Ss", role="trust_admin"
        )
        for ev in (head, boss, head.model_copy(update={"event_id": "again"})):
            await js.publish(
                platform.STAFF_UPSERTED, ev.model_dump_json().encode(), headers={"Nats-Msg-Id": ev.event_id}
            )
        await eventually(lambda: len(requests) >= 2, timeout=10)
        await asyncio.sleep(0.5)
        async with runtime.db.reader() as s:
            staff = {a.email_key: a for a in (await s.execute(select(Account))).scalars()}
    assert len(requests) == 2, "one set-password email per new member of staff, not per event"
    assert all(r["reset_url"].startswith("https://portal.example/reset-password?token=") for r in requests)
    assert (staff["head@oak.example"].role, staff["head@oak.example"].school_id) == ("school_admin", "oak")
    assert (
        staff["boss@trust.example"].role,
        staff["boss@trust.example"].trust_id,
        staff["boss@trust.example"].school_id,
    ) == ("trust_admin", "t-1", None)
    await nc.close()


@pytest.fixture
async def served(fresh_nats, tmp_path: Path) -> AsyncIterator[tuple[object, nats.NATS]]:
    """A running identity and a client connection."""
    nc = await nats.connect(fresh_nats.url)
    settings = identity_app.Settings(nats_url=fresh_nats.url, data_dir=tmp_path, **CHEAP)
    await asyncio.to_thread(migrate, identity_app, settings)
    runtime = identity_app.build(settings)
    try:
        async with runtime.running():
            yield runtime, nc
    finally:
        await nc.close()


async def test_using_a_session_keeps_it_alive_written_in_batches(served) -> None:
    runtime, nc = served
    email, password = "t2@school.example", "a long staff passphrase"
    await rpc.call(
        nc,
        c.CREATE_STAFF,
        c.CreateStaffRequest(email=email, name="T", role="teacher", school_id="s", password=password),
        timeout=10,
    )
    token = (await rpc.call(nc, c.LOGIN, c.LoginRequest(email=email, password=password), timeout=10)).access_token
    # Last used 20 minutes ago: 10 minutes of a staff member's 30 idle minutes are left.
    async with runtime.db.session() as s:
        await s.execute(update(Session).values(last_seen_at=utcnow() - timedelta(minutes=20)))
    principal = await rpc.call(nc, c.SESSION, c.SessionRequest(token=token), timeout=10)
    assert principal.expires_in > 29 * 60, "this use restarts the idle time"

    async def recorded() -> bool:
        async with runtime.db.reader() as s:
            seen = (await s.execute(select(Session.last_seen_at))).scalar_one()
        return utcnow() - seen < timedelta(seconds=10)

    assert await eventually(recorded, timeout=5), "the use is written within a few seconds"
    again = await rpc.call(nc, c.SESSION, c.SessionRequest(token=token), timeout=10)
    assert again.expires_in > 29 * 60


async def staff_sessions(nc, prefix: str, *, staff: int, each: int) -> dict[str, str]:
    """`staff` teachers (the i-th at school-i), each signed in `each` times: token -> account id."""
    password = "a long staff passphrase"
    tokens: dict[str, str] = {}
    for i in range(staff):
        email = f"{prefix}{i}@school.example"
        request = c.CreateStaffRequest(
            email=email, name=f"{prefix.upper()}{i}", role="teacher", school_id=f"school-{i}", password=password
        )
        reply = await rpc.call(nc, c.CREATE_STAFF, request, timeout=10)
        for _ in range(each):
            login = await rpc.call(nc, c.LOGIN, c.LoginRequest(email=email, password=password), timeout=10)
            tokens[login.access_token] = reply.account_id
    return tokens


async def test_concurrent_session_lookups_each_get_their_own_account(served) -> None:
    runtime, nc = served
    tokens = await staff_sessions(nc, "s", staff=4, each=3)
    asks = [*tokens, *tokens, *tokens, "not-a-session-token"]
    random.Random(7).shuffle(asks)
    before = runtime.service._sessions.reads

    async def ask(token: str) -> str:
        try:
            return (await rpc.call(nc, c.SESSION, c.SessionRequest(token=token), timeout=10)).account_id
        except rpc.RpcError as exc:
            return exc.code

    answers = await asyncio.gather(*(ask(t) for t in asks))
    for token, answer in zip(asks, answers, strict=True):
        assert answer == tokens.get(token, c.E_INVALID_SESSION), "each token is answered with its own account"
    assert runtime.service._sessions.reads - before < len(asks), "lookups that arrived together were read together"


async def test_parent_activity_answers_a_state_per_id_in_their_order(
    fresh_nats, tmp_path: Path, database_url: str
) -> None:
    settings = identity_app.Settings(nats_url=fresh_nats.url, data_dir=tmp_path, database_url=database_url, **CHEAP)
    await asyncio.to_thread(migrate, identity_app, settings)
    runtime = identity_app.build(settings)
    now = utcnow()
    since = now - timedelta(days=30)
    # id -> (last sign-in, its sessions' last use)
    accounts: dict[str, tuple[timedelta | None, list[timedelta]]] = {
        "never": (None, []),
        "signed-in-lately": (timedelta(days=2), []),
        "signed-in-long-ago": (timedelta(days=40), []),
        "long-ago-seen-lately": (timedelta(days=40), [timedelta(days=50), timedelta(days=1)]),
        "sessions-only-old": (None, [timedelta(days=45)]),
        "sessions-only-lately": (None, [timedelta(days=45), timedelta(hours=1)]),
        "just-before-since": (timedelta(days=30, seconds=1), []),
    }
    async with runtime.running():
        async with runtime.db.session() as s:
            for account_id, (signed, _) in accounts.items():
                s.add(
                    Account(
                        id=account_id,
                        role="parent",
                        email=f"{account_id}@example.org",
                        email_key=f"{account_id}@example.org",
                        name="A Parent",
                        created_at=now,
                        updated_at=now,
                        last_signed_in_at=None if signed is None else now - signed,
                    )
                )
            await s.flush()
            for n, (account_id, (_, seen)) in enumerate(accounts.items()):
                for m, ago in enumerate(seen):
                    s.add(
                        Session(
                            id=f"session-{n}-{m}",
                            account_id=account_id,
                            token_hash=f"hash-{n}-{m}",
                            created_at=now - timedelta(days=60),
                            last_seen_at=now - ago,
                            idle_seconds=3600,
                            absolute_expires_at=now + timedelta(days=1),
                        )
                    )
        nc = await nats.connect(fresh_nats.url)
        try:
            # Unknown ids and repeats answer in place: one character per position asked.
            ids = [*accounts, "no-such-account", "signed-in-lately", "never"]
            reply = await rpc.call(nc, c.PARENT_ACTIVITY, c.ParentActivityRequest(ids=ids, since=since), timeout=10)
            assert dict(zip(ids, reply.states, strict=True)) == {
                "never": c.NEVER_SIGNED_IN,
                "signed-in-lately": c.ACTIVE,
                "signed-in-long-ago": c.SIGNED_IN,
                "long-ago-seen-lately": c.ACTIVE,
                "sessions-only-old": c.SIGNED_IN,
                "sessions-only-lately": c.ACTIVE,
                "just-before-since": c.SIGNED_IN,
                "no-such-account": c.NEVER_SIGNED_IN,
            }
            assert len(reply.states) == len(ids)
            empty = await rpc.call(nc, c.PARENT_ACTIVITY, c.ParentActivityRequest(ids=[], since=since), timeout=10)
            assert empty.states == ""
            # A whole page of linked parents in one request, as the gateway sends it.
            many = [uuid.uuid4().hex for _ in range(c.MAX_ACTIVITY_IDS - 1)] + ["signed-in-long-ago"]
            big = await rpc.call(nc, c.PARENT_ACTIVITY, c.ParentActivityRequest(ids=many, since=since), timeout=30)
            assert big.states == c.NEVER_SIGNED_IN * (len(many) - 1) + c.SIGNED_IN
        finally:
            await nc.close()


async def test_many_sessions_in_one_request_each_answered_in_place(served) -> None:
    runtime, nc = served
    tokens = await staff_sessions(nc, "m", staff=3, each=1)
    first, second, third = tokens
    await rpc.call(nc, c.LOGOUT, c.LogoutRequest(token=second), timeout=10)
    asks = [third, "not-a-session-token", first, second, third, ""]
    reply = await rpc.call(nc, c.SESSIONS, c.SessionsRequest(tokens=asks), timeout=10)
    answered = [p.account_id if p else None for p in reply.sessions]
    assert answered == [tokens[third], None, tokens[first], None, tokens[third], None], (
        "each token's holder in its place; ended and unknown sessions are null"
    )
    assert reply.sessions[0] is not None and reply.sessions[0].school_id == "school-2"

    # More tokens than one request may carry, or a token no session can have: refused whole.
    for bad in (["t"] * (c.MAX_SESSIONS + 1), [], ["x" * (c.MAX_TOKEN_LENGTH + 1)]):
        with pytest.raises(rpc.RpcError) as refused:
            await rpc.call(nc, c.SESSIONS, c.SessionsRequest.model_construct(tokens=bad), timeout=10)
        assert refused.value.code == rpc.INVALID_REQUEST
