"""The link-code key fails closed: required outside the default SQLite file, shared by replicas,
rotated with nothing lost, and a changed key stops linking rather than lifting every bar.

Real linking replicas over real nats-servers, on SQLite and PostgreSQL; `portal service linking`
and `portal linking rekey` as an operator runs them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import nats
import natsauth
import pytest
from linking_env import (
    PUBLIC_URL,
    Env,
    children,
    codes_in,
    invite,
    make_school,
    parent,
    printed_codes,
    redeem,
    refused,
    sheet,
    watch_email_requests,
)
from natsauth import authed_nats

from contracts import linking as contract
from contracts import platform
from contracts.kit.service import migrate
from linking import app as linking_app
from linking.codes import CodeVault, new_key
from portal.natsserver import free_port

PORTAL = str(Path(sys.executable).with_name("portal"))
KEY = "PORTAL_LINKING_CODE_KEY"
OLD_KEYS = "PORTAL_LINKING_CODE_OLD_KEYS"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def linking_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """linking's database, not the default SQLite file of its data directory: the key is required."""
    if request.param == "sqlite":
        (tmp_path / "shared").mkdir()
        return f"sqlite+aiosqlite:///{tmp_path / 'shared' / 'linking.db'}"
    return request.getfixturevalue("pg").create("linking")


@asynccontextmanager
async def replica(nats_url: str, db_url: str, host: Path, key: str, old_keys: str = "") -> AsyncIterator[Env]:
    """One linking replica on `db_url`, its data directory `host` (a machine of its own)."""
    settings = linking_app.Settings(
        nats_url=nats_url,
        database_url=db_url,
        data_dir=host,
        public_url=PUBLIC_URL,
        platform_url="https://platform.example.test",
        linking_code_key=key,
        linking_code_old_keys=old_keys,
    )
    await asyncio.to_thread(migrate, linking_app, settings)
    runtime = linking_app.build(settings)
    nc = await nats.connect(nats_url)
    try:
        async with runtime.running():
            yield await watch_email_requests(Env(runtime=runtime, nc=nc))
    finally:
        await nc.close()


async def portal(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The `portal` command with these PORTAL_* settings only."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    full |= {"PORTAL_NATS_CREDS_DIR": str(natsauth.CREDS_DIR)} | env
    # In a thread: replicas answer from this test's own event loop meanwhile.
    return await asyncio.to_thread(
        subprocess.run, [PORTAL, *args], capture_output=True, text=True, env=full, timeout=120
    )


def linking_settings(db_url: str, host: Path, nats_url: str, key: str | None, old_keys: str = "") -> dict[str, str]:
    env = {"PORTAL_LINKING_DATABASE_URL": db_url, "PORTAL_DATA_DIR": str(host), "PORTAL_NATS_URL": nats_url}
    if key is not None:
        env[KEY] = key
    if old_keys:
        env[OLD_KEYS] = old_keys
    return env


async def add_bar(env: Env, school, pupil_id: str, email: str) -> contract.AddBarReply:
    return await env.ask(
        contract.ADD_BAR,
        contract.AddBarRequest(
            scope=school.scope, actor_id="admin-1", pupil_id=pupil_id, email=email, reason="court order"
        ),
        contract.AddBarReply,
    )


async def barred_addresses(env: Env, school, pupil_id: str) -> list[str]:
    reply = await env.ask(
        contract.BARS, contract.BarsRequest(scope=school.scope, pupil_id=pupil_id), contract.BarsReply
    )
    return [b.email for b in reply.bars]


async def tables_in(db_url: str) -> list[str]:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    finally:
        await conn.close()


# -- a key is required ---------------------------------------------------------------------------


@pytest.mark.postgres
async def test_linking_on_postgresql_without_a_usable_key_refuses_to_start_before_touching_anything(
    pg, nats_server, tmp_path: Path
) -> None:
    db = pg.create("linking")

    done = await portal("service", "linking", **linking_settings(db, tmp_path, nats_server.url, None))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"portal: {KEY} is not set") and done.stderr.count("\n") == 1, done.stderr
    assert "portal linking new-key" in done.stderr
    assert not (tmp_path / "linking-code.key").exists(), "no key of this host's own was made"
    assert await tables_in(db) == [], "refused before migrating"

    for bad, why in [("c2VjcmV0", "6 bytes"), ("A" * 43, "a pattern"), ("not a key!", "neither base64 nor hex")]:
        done = await portal("service", "linking", **linking_settings(db, tmp_path, nats_server.url, bad))
        assert done.returncode == 2 and KEY in done.stderr and why in done.stderr, done.stderr

    secret_old = "0123456789abcdef" * 3  # hex, but 24 bytes
    done = await portal(
        "service", "linking", **linking_settings(db, tmp_path, nats_server.url, new_key(), f"{new_key()},{secret_old}")
    )
    assert done.returncode == 2 and f"{OLD_KEYS} (key 2)" in done.stderr, done.stderr
    assert secret_old not in done.stderr, "a key is never printed"
    assert await tables_in(db) == []


async def test_new_key_prints_keys_linking_accepts(tmp_path: Path) -> None:
    made = await portal("linking", "new-key")
    again = await portal("linking", "new-key")
    assert made.returncode == 0 and again.returncode == 0
    assert made.stdout != again.stdout
    CodeVault(made.stdout.strip(), [again.stdout.strip(), (os.urandom(32)).hex()])  # hex is accepted too


def test_only_the_default_sqlite_file_goes_without_the_key(tmp_path: Path) -> None:
    unset = linking_app.Settings(data_dir=tmp_path, linking_code_key=None)
    assert not unset.key_required()
    same_file = linking_app.Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'linking.db'}")
    assert not same_file.key_required()
    for elsewhere in [f"sqlite:///{tmp_path / 'other.db'}", "postgresql://db/linking", "sqlite+aiosqlite:///:memory:"]:
        assert linking_app.Settings(data_dir=tmp_path, database_url=elsewhere).key_required(), elsewhere


# -- replicas share the key ------------------------------------------------------------------------


@pytest.mark.postgres
async def test_replicas_on_two_hosts_with_the_same_key_accept_each_others_codes_and_bars(pg, tmp_path: Path) -> None:
    db, key = pg.create("linking"), new_key()
    first, second = authed_nats(tmp_path / "nats-1"), authed_nats(tmp_path / "nats-2")
    try:
        # Each replica on a NATS of its own, so each request is answered by the replica asked.
        async with (
            replica(first.url, db, tmp_path / "host-1", key) as one,
            replica(second.url, db, tmp_path / "host-2", key) as two,
        ):
            school, class_id, (amy, ben) = await make_school(one, pupils=2)
            amy_code, ben_code = await printed_codes(one, school, class_id)
            assert codes_in((await sheet(two, school, class_id)).text) == [amy_code, ben_code]
            assert (await redeem(two, amy_code, parent(), email="mum@example.org")).created
            await add_bar(two, school, ben, "barred@example.org")
            assert await refused(one, ben_code, parent(), email="barred@example.org") == contract.E_INVALID_CODE
            assert await barred_addresses(one, school, ben) == ["barred@example.org"]
    finally:
        first.stop()
        second.stop()
    assert not (tmp_path / "host-1" / "linking-code.key").exists()
    assert not (tmp_path / "host-2" / "linking-code.key").exists()


# -- rotation ------------------------------------------------------------------------------------


async def test_rotating_the_key_loses_no_code_and_lifts_no_bar(linking_db: str, tmp_path: Path) -> None:
    server = authed_nats(tmp_path / "nats")
    host = tmp_path / "host"
    key_a, key_b = new_key(), new_key()
    try:
        async with replica(server.url, linking_db, host, key_a) as env:
            school, class_id, (amy, ben, cat, dan) = await make_school(env, pupils=4)
            printed = await printed_codes(env, school, class_id)
            amy_code, ben_code, _, dan_code = printed
            mum = parent()
            assert (await redeem(env, amy_code, mum, email="mum@example.org")).created
            await add_bar(env, school, ben, "barred@example.org")
            _, invitation = await invite(env, school, cat, "gran@example.org")
            # The roster's contact of Dan, kept encrypted under this key.
            dan_contact = platform.PupilUpserted(
                school_id=school.school_id,
                pupil_id=dan,
                first_name="Amy03",
                last_name="Smith03",
                class_ids=[class_id],
                contacts=[platform.RosterContact(email="dan.mum@example.org", relationship="mother")],
            )
            await env.publish(platform.PUPIL_UPSERTED, dan_contact)
            await env.applied([dan_contact])

        # The key changed and the old one is not given: linking refuses to start.
        done = await portal("service", "linking", **linking_settings(linking_db, host, server.url, key_b))
        assert done.returncode == 2, done.stderr
        assert KEY in done.stderr and OLD_KEYS in done.stderr, done.stderr
        assert "1 bar(s) and 1 parent contact(s)" in done.stderr, done.stderr

        # The new key, with the old one still accepted: everything made under it works and holds.
        async with replica(server.url, linking_db, host, key_b, old_keys=key_a) as env:
            assert codes_in((await sheet(env, school, class_id)).text) == printed, "the same sheet prints again"
            assert await refused(env, ben_code, parent(), email="Barred@example.org") == contract.E_INVALID_CODE
            assert await barred_addresses(env, school, ben) == ["barred@example.org"]
            assert (await redeem(env, ben_code, parent(), email="dad@example.org")).created
            assert not (await redeem(env, amy_code, mum, email="mum@example.org")).created, "mum is still linked"

            # Re-keying while linking runs: the open invitation's code, kept only as a hash under
            # the old key, still needs it.
            rekey = linking_settings(linking_db, host, server.url, key_b, key_a)
            done = await portal("linking", "rekey", **rekey)
            assert done.returncode == 1, done.stdout + done.stderr
            assert "re-keyed 4 link code(s) and 1 bar(s)" in done.stdout
            assert "re-keyed 1 parent contact(s)" in done.stdout
            assert "1 invitation code(s) still open" in done.stderr and OLD_KEYS in done.stderr
            carer = parent()
            assert (
                await redeem(env, invitation["code"], carer, email="gran@example.org", relationship="carer")
            ).created
            done = await portal("linking", "rekey", **rekey)
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"remove {OLD_KEYS}" in done.stdout

        # The new key alone: nothing was lost.
        async with replica(server.url, linking_db, host, key_b) as env:
            assert codes_in((await sheet(env, school, class_id)).text) == printed
            assert await refused(env, ben_code, parent(), email="barred@example.org") == contract.E_INVALID_CODE
            assert await barred_addresses(env, school, ben) == ["barred@example.org"]
            assert (await redeem(env, dan_code, parent(), email="dan@example.org")).created
            assert [c.pupil_id for c in await children(env, carer)] == [cat]
            contacts = await env.ask(
                contract.BULK_INVITE,
                contract.BulkInviteRequest(scope=school.scope, class_id=class_id, from_contacts=True),
                contract.BulkInviteReply,
            )
            assert [(s.pupil_id, s.email) for s in contacts.skipped] == [(dan, "dan.mum@example.org")]

        # And the old key alone is now the foreign one.
        done = await portal("service", "linking", **linking_settings(linking_db, host, server.url, key_a))
        assert done.returncode == 2 and "5 link code(s), 1 bar(s) and 1 parent contact(s)" in done.stderr, done.stderr
    finally:
        server.stop()


async def test_roster_contacts_alone_under_another_key_stop_linking(tmp_path: Path) -> None:
    """No code and no bar, only the roster's parent contacts (encrypted addresses): a changed key
    would leave them unreadable, so linking refuses to start as it does for codes and bars."""
    (tmp_path / "shared").mkdir()
    db = f"sqlite+aiosqlite:///{tmp_path / 'shared' / 'linking.db'}"
    server = authed_nats(tmp_path / "nats")
    host = tmp_path / "host"
    key_a, key_b = new_key(), new_key()
    try:
        async with replica(server.url, db, host, key_a) as env:
            school, class_id, (amy,) = await make_school(env, pupils=1)
            upserted = platform.PupilUpserted(
                school_id=school.school_id,
                pupil_id=amy,
                first_name="Amy",
                last_name="Smith",
                class_ids=[class_id],
                contacts=[
                    platform.RosterContact(email="amy.mum@example.org", relationship="mother"),
                    platform.RosterContact(email="amy.dad@example.org", relationship="father"),
                ],
            )
            await env.publish(platform.PUPIL_UPSERTED, upserted)
            await env.applied([upserted])
        done = await portal("service", "linking", **linking_settings(db, host, server.url, key_b))
        assert done.returncode == 2, done.stderr
        assert "0 link code(s), 0 bar(s) and 2 parent contact(s)" in done.stderr, done.stderr
        # With the old key still accepted, it starts.
        async with replica(server.url, db, host, key_b, old_keys=key_a):
            pass
    finally:
        server.stop()


def test_portal_up_stops_when_linking_refuses_to_start_without_its_key(tmp_path: Path) -> None:
    """`portal up` with linking on a database of its own and no key: the refusal once, and a stop,
    not a part restarted for ever with the same refusal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    (tmp_path / "elsewhere").mkdir()
    env.update(
        PORTAL_DATA_DIR=str(tmp_path / "data"),
        PORTAL_HTTP_PORT=str(free_port()),
        PORTAL_LINKING_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'elsewhere' / 'linking.db'}",
    )
    try:
        done = subprocess.run([PORTAL, "up"], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"portal up kept running: {exc.stderr!r}") from exc
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(KEY) >= 1 and "linking refused to start" in done.stderr
    assert "restarted linking" not in done.stderr
