"""A service whose database is down answers 503 `service_unavailable` with `Retry-After` through
the gateway, never 500, and works again once the database is back: identity on the machine's
PostgreSQL (the `pg` fixture of conftest.py), a real NATS and a gateway under uvicorn, the
database made to refuse connections as an outage or a failover would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import nats
import pytest
from gateway_harness import running_gateway
from gateway_portal import CHEAP_ARGON2, PASSWORD, PUBLIC_URL, assert_error
from natsauth import authed_nats

from contracts import identity
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from gateway.settings import GatewaySettings
from identity import app as identity_app

pytestmark = [pytest.mark.asyncio, pytest.mark.postgres]

EMAIL = "head@oak.example"


@dataclass
class Outage:
    http: httpx.AsyncClient
    database: str
    admin: object  # conftest's PgDatabases

    def refuse_connections(self) -> None:
        # What a database being failed over or restarted looks like to a service: the
        # connections it holds are cut and new ones are refused.
        self.admin._admin(f'ALTER DATABASE "{self.database}" WITH ALLOW_CONNECTIONS false')  # type: ignore[attr-defined]
        self.admin._admin(  # type: ignore[attr-defined]
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.database}'"
        )

    def accept_connections(self) -> None:
        self.admin._admin(f'ALTER DATABASE "{self.database}" WITH ALLOW_CONNECTIONS true')  # type: ignore[attr-defined]


@pytest.fixture
async def outage(pg, tmp_path: Path) -> AsyncIterator[Outage]:
    url = pg.create("identity")
    database = url.rsplit("/", 1)[1]
    server = authed_nats(tmp_path / "nats")
    try:
        async with AsyncExitStack() as stack:
            settings = identity_app.Settings(
                nats_url=server.url,
                data_dir=tmp_path / "identity",
                public_url=PUBLIC_URL,
                database_url=url,
                **CHEAP_ARGON2,
            )
            await asyncio.to_thread(migrate, identity_app, settings)
            await stack.enter_async_context(identity_app.build(settings).running())
            nc = await nats.connect(server.url)
            stack.push_async_callback(nc.close)
            await call(
                nc,
                identity.CREATE_STAFF,
                identity.CreateStaffRequest(
                    email=EMAIL, name="Hannah Head", role="school_admin", school_id="oak", password=PASSWORD
                ),
                timeout=10,
            )
            # A long deadline: what the test sees is identity's own answer, never the gateway's
            # deadline passing (which is a 503 too).
            gateway = GatewaySettings(
                nats_url=server.url, data_dir=tmp_path / "gateway", public_url=PUBLIC_URL, rpc_timeout=30
            )
            http = (await stack.enter_async_context(running_gateway(gateway, timeout=30))).http
            found = Outage(http, database, pg)
            try:
                yield found
            finally:
                found.accept_connections()
    finally:
        server.stop(kill=True)


async def sign_in(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post("/api/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})


async def test_a_database_outage_answers_503_with_retry_after_then_recovers(outage: Outage) -> None:
    assert (await sign_in(outage.http)).status_code == 200

    outage.refuse_connections()
    for _ in range(2):  # the connection that was cut, then a new one refused
        down = await sign_in(outage.http)
        assert_error(down, 503, "service_unavailable")
        assert int(down.headers["retry-after"]) > 0
    registering = {"email": "new@example.org", "password": PASSWORD, "name": "New Parent", "accept_aup": True}
    assert_error(await outage.http.post("/api/v1/auth/register", json=registering), 503, "service_unavailable")
    # The sign-in page says so as a page.
    page = await outage.http.get("/login")
    secret = page.headers["set-cookie"].split("=", 1)[1].split(";", 1)[0]
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    form = await outage.http.post(
        "/login",
        data={"email": EMAIL, "password": PASSWORD, "csrf_token": token},
        headers={"cookie": f"portal_form={secret}"},
    )
    assert form.status_code == 503 and form.headers["content-type"].startswith("text/html")
    assert "busy" in form.text

    outage.accept_connections()
    back = await sign_in(outage.http)
    assert back.status_code == 200, back.text


# -- what counts as an outage ------------------------------------------------------------------


async def test_only_a_database_that_cannot_be_reached_is_unavailable() -> None:
    from sqlalchemy import exc as sa

    from contracts.kit.rpc import Responder

    def failing(error: Exception):
        async def handler(_: identity.SessionRequest) -> identity.Principal:
            raise error

        return Responder(identity.SESSION, "test", handler)

    unavailable = [
        ConnectionRefusedError(111, "Connection refused"),
        sa.TimeoutError("QueuePool limit of size 10 overflow 10 reached, connection timed out"),
        sa.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly")),
        sa.InterfaceError("SELECT 1", {}, Exception("connection is closed")),
        sa.DBAPIError(None, None, Exception("could not connect"), connection_invalidated=False),
    ]
    for error in unavailable:
        body, code = await failing(error).answer(identity.SessionRequest(token="t").model_dump_json().encode())
        assert code == "service_unavailable", (error, body)
        assert b'"retry_after":' in body
    # A statement the database refused is the service's own fault: still internal_error.
    for error in (sa.IntegrityError("INSERT", {}, Exception("duplicate key")), ValueError("a bug")):
        _, code = await failing(error).answer(identity.SessionRequest(token="t").model_dump_json().encode())
        assert code == "internal_error", error
