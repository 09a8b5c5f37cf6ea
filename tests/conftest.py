"""Fixtures shared by the test modules: real NATS servers, real PostgreSQL and SQLite databases,
the linking service and a portal of linking and identity behind the gateway.

- Every nats-server of the run has the portal's NATS users and permissions, and every part a
  test starts connects as its own user (see `natsauth`).
- `nats_server`: one private nats-server (JetStream) for the session, on a free port.
- `fresh_nats`: a nats-server of the test's own, safe to stop, kill and restart.
- `pg`: the machine's PostgreSQL; each test run gets databases of its own,
  dropped at the end.
- `database_url`: parametrised over SQLite and PostgreSQL where a test asks for both.
- `smtp_server`: a real SMTP server of the test's own.
- `env`: a linking replica with a nats-server of its own, one per test module and database
  (SQLite, PostgreSQL); `watched`: the same, recording the email requests linking sends.
- `portal`: identity, linking and a gateway under uvicorn over a nats-server, one per test
  module, with a roster, staff and a verified parent signed in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import nats
import natsauth
import pytest
from natsauth import authed_nats

from portal.natsserver import NatsServer, free_port

if TYPE_CHECKING:
    from gateway_portal import Portal
    from linking_env import Env

PG_HOST = os.environ.get("PORTAL_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("PORTAL_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("PORTAL_TEST_PG_USER", "postgres")
RUN_ID = uuid.uuid4().hex[:8]

# Set before any settings are read: the parts started in this process or as its children
# connect with their own seeds, so the suite runs with the permissions production has.
os.environ["PORTAL_NATS_CREDS_DIR"] = str(natsauth.CREDS_DIR)
natsauth.credentials()


@pytest.fixture(scope="session", autouse=True)
def parts_connect_as_themselves() -> Iterator[None]:
    """Fails the run if any part ran on a test nats-server with the harness's rights."""
    yield
    shutil.rmtree(natsauth.CREDS_DIR, ignore_errors=True)
    assert not natsauth.violations, "\n".join(natsauth.violations)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = authed_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = authed_nats(tmp_path / "nats")
    yield server
    server.stop(kill=True)


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[nats.NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


class PgDatabases:
    """Creates databases on the machine's PostgreSQL for this run and drops them afterwards."""

    def __init__(self) -> None:
        self.created: list[str] = []

    def _admin(self, sql: str) -> None:
        import asyncpg

        async def run() -> None:
            conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        # Synchronous on purpose: usable from any fixture, whatever loop is running.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run()).result()

    def create(self, label: str) -> str:
        name = f"portal_test_{RUN_ID}_{label}_{uuid.uuid4().hex[:6]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    def drop_all(self) -> None:
        for name in self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgDatabases]:
    dbs = PgDatabases()
    try:
        dbs._admin("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - whatever the cause, the suite cannot run without it
        pytest.fail(f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as {PG_USER}: {exc}")
    yield dbs
    dbs.drop_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a PostgreSQL database of its own."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / f'db-{uuid.uuid4().hex[:6]}.sqlite'}"
    dbs: PgDatabases = request.getfixturevalue("pg")
    return dbs.create("db")


@pytest.fixture
def smtp_server() -> Iterator:
    """A real SMTP server (aiosmtpd) on a free loopback port."""
    from smtp_server import SmtpServer

    server = SmtpServer(free_port()).start()
    yield server
    server.stop()


# -- the linking service ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    """One linking replica and one nats-server per database for the whole module: starting them
    per test would cost more than the tests, so every test works in a school of its own."""
    from linking_env import running_linking

    tmp = tmp_path_factory.mktemp(f"linking-{request.param}")
    if request.param == "sqlite":
        db_url = f"sqlite+aiosqlite:///{tmp / 'linking.db'}"
    else:
        db_url = request.getfixturevalue("pg").create("linking")
    async with running_linking(db_url, tmp) as linking:
        yield linking


@pytest.fixture
async def watched(env: Env) -> Env:
    """`env`, recording in `env.requests` the email requests linking sends (for `invite`)."""
    from linking_env import watch_email_requests

    return await watch_email_requests(env)


# -- identity and linking behind the gateway -------------------------------------------------------


@pytest.fixture(scope="module")
async def portal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Portal]:
    """One portal for the whole module (starting it per test would cost more than the tests):
    its tests share the roster and the signed-in accounts, and each makes the codes it needs."""
    from gateway_portal import running_portal

    async with running_portal(tmp_path_factory.mktemp("gateway-linking")) as running:
        yield running
