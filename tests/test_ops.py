"""The ops port of each part (`PORTAL_OPS_PORT`): `/livez`, `/readyz` and `/metrics`, scraped and
parsed as Prometheus does, on real parts over a real NATS, SQLite and SMTP server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import nats
import pytest
from gateway_harness import running_gateway
from helpers import eventually
from prometheus_client.parser import text_string_to_metric_families

from contracts import notify as contract
from contracts.kit.rpc import call
from contracts.kit.service import migrate
from contracts.rpc import HealthRequest, health
from gateway.settings import GatewaySettings
from notify import app as notify_app
from portal.natsserver import free_port

PUBLIC_URL = "http://portal.test"
PORTAL = str(Path(sys.executable).parent / "portal")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def label_values(scrape: dict, name: str, label: str) -> set[str]:
    return {dict(lbls)[label] for (n, lbls) in scrape if n == name and label in dict(lbls)}


async def scrape(http: httpx.AsyncClient) -> dict:
    response = await http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_a_service_serves_livez_readyz_and_metrics_on_its_ops_port(
    fresh_nats, smtp_server, tmp_path: Path
) -> None:
    port = free_port()
    settings = notify_app.Settings(
        nats_url=fresh_nats.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}",
        smtp_url=smtp_server.url,
        ops_port=port,
    )
    await asyncio.to_thread(migrate, notify_app, settings)
    runtime = notify_app.build(settings)
    nc = await nats.connect(fresh_nats.url)
    try:
        async with (
            runtime.running(),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
        ):
            assert (await http.get("/livez")).status_code == 200
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "nats": "ok"}

            before = await scrape(http)
            # Every request and consumer it serves is there from the start, at 0.
            assert value(before, "portal_rpc_requests_total", subject="rpc.notify.export.v1", outcome="ok") == 0
            assert value(before, "portal_events_applied_total", consumer="notify-requests") == 0
            assert value(before, "portal_emails_total", status="sent") == 0
            assert value(before, "portal_dead_letters_total", consumer="outbox") == 0
            assert value(before, "portal_info", part="notify", version=runtime.version) == 1

            js = nc.jetstream()
            for n in range(2):
                request = contract.PasswordChangedEmail(
                    to=f"ops-{n}@example.org", reset_url="http://portal.test/reset-password"
                )
                await js.publish(
                    contract.request_subject(request.kind),
                    request.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": request.event_id},
                )
            # Not an email request: dead-lettered at once.
            await js.publish(contract.request_subject("verification"), b"not json", headers={"Nats-Msg-Id": "bad-1"})
            await eventually(lambda: len(smtp_server.messages) == 2, timeout=20, message="two emails sent")
            await call(nc, health("notify"), HealthRequest())
            await nc.request("rpc.notify.export.v1", b"not json", timeout=5)

            async def settled() -> dict:
                now = await scrape(http)
                assert value(now, "portal_emails_total", status="sent") == 2
                assert value(now, "portal_outbox_pending") == 0  # both outcome events published
                assert value(now, "portal_dead_letters_total", consumer="notify-requests") == 1
                return now

            after = await eventually(settled, timeout=10, message="emails counted and the outbox empty")
            assert value(after, "portal_events_applied_total", consumer="notify-requests") == 2
            assert value(after, "portal_consumer_pending", consumer="notify-requests") == 0
            assert value(after, "portal_outbox_oldest_seconds") == 0
            assert value(after, "portal_rpc_requests_total", subject="rpc.notify.health.v1", outcome="ok") == 1
            assert (
                value(after, "portal_rpc_requests_total", subject="rpc.notify.export.v1", outcome="invalid_request")
                == 1
            )
            assert value(after, "portal_rpc_duration_seconds_count", subject="rpc.notify.health.v1", outcome="ok") == 1
            # Only the declared subjects and consumers are labels.
            assert label_values(after, "portal_rpc_requests_total", "subject") <= {
                r.rpc.subject for r in runtime.responders
            }
            assert label_values(after, "portal_consumer_pending", "consumer") == {c.durable for c in runtime.consumers}
            assert value(after, "process_resident_memory_bytes") is not None
            assert (await http.get("/nowhere")).status_code == 404

            # NATS gone: not ready, naming it; still alive.
            fresh_nats.stop(kill=True)

            async def not_ready() -> bool:
                response = await http.get("/readyz")
                return response.status_code == 503 and response.json()["failed"] == ["nats"]

            await eventually(not_ready, timeout=10, message="/readyz 503 naming nats")
            body = (await http.get("/readyz")).json()
            assert body["status"] == "not_ready" and body["checks"]["database"] == "ok"
            assert (await http.get("/livez")).status_code == 200

            fresh_nats.start()

            async def ready_again() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready_again, timeout=15, message="/readyz 200 once NATS is back")
    finally:
        await nc.close()
    # Stopped with the part.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/livez", timeout=2)


async def test_readyz_names_a_database_that_does_not_answer(nats_server, tmp_path: Path) -> None:
    port = free_port()
    settings = notify_app.Settings(
        nats_url=nats_server.url,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'notify.db'}",
        ops_port=port,
    )
    await asyncio.to_thread(migrate, notify_app, settings)
    runtime = notify_app.build(settings)
    async with runtime.running(), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        assert (await http.get("/readyz")).status_code == 200
        # The file made unreadable: what an operator sees when the database's disk or server goes.
        await runtime.db.dispose()
        (tmp_path / "notify.db").rename(tmp_path / "moved.db")
        (tmp_path / "notify.db").mkdir()
        response = await http.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["failed"] == ["database"]
        assert response.json()["checks"]["database"].startswith("failed: ")
        (tmp_path / "notify.db").rmdir()
        (tmp_path / "moved.db").rename(tmp_path / "notify.db")


@pytest.mark.parametrize("part", ["identity", "gateway"])
def test_a_taken_ops_port_stops_the_part_with_one_line_naming_it(part: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
        # No NATS there: the ops port is taken before anything waits for it.
        env.update(PORTAL_NATS_URL="nats://127.0.0.1:1", PORTAL_DATA_DIR=str(tmp_path), PORTAL_OPS_PORT=str(port))
        result = subprocess.run([PORTAL, "service", part], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [json.loads(x) for x in result.stderr.splitlines() if "ops_port_unavailable" in x]
    assert line["level"] == "error"
    assert f"127.0.0.1:{port}" in line["detail"] and "PORTAL_OPS_PORT" in line["detail"]
    assert "Traceback" not in result.stderr


def test_no_ops_port_no_ops_server(tmp_path: Path) -> None:
    settings = notify_app.Settings(nats_url="nats://127.0.0.1:1", database_url="sqlite+aiosqlite:///:memory:")
    assert notify_app.build(settings).ops is None
    with pytest.raises(ValueError, match="PORTAL_OPS_PORT must differ from PORTAL_HTTP_PORT"):
        GatewaySettings(nats_url="nats://127.0.0.1:1", http_port=9100, ops_port=9100)


async def test_the_gateway_counts_requests_by_route_template_on_its_own_ops_port(nats_server, tmp_path: Path) -> None:
    port = free_port()
    settings = GatewaySettings(nats_url=nats_server.url, data_dir=tmp_path / "gw", public_url=PUBLIC_URL, ops_port=port)
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as ops,
    ):
        assert (await ops.get("/livez")).status_code == 200
        ready = await ops.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"nats": "ok"}
        # Nothing of the ops port on the public one.
        for path in ("/metrics", "/livez", "/readyz"):
            assert (await gw.http.get(path)).status_code == 404, path

        pupil = f"pupil-{uuid.uuid4().hex}"
        assert (await gw.http.get(f"/api/v1/me/children/{pupil}/overview")).status_code == 401
        assert (await gw.http.get("/health")).status_code == 200
        before = await scrape(ops)
        unmatched = value(before, "portal_http_requests_total", route="unmatched", method="GET", status="404") or 0
        routes = label_values(before, "portal_http_requests_total", "route")
        # Hostile paths and methods: no label value of their own.
        for _ in range(20):
            await gw.http.get("/" + uuid.uuid4().hex * 30)
        await gw.http.request("BREW", "/" + uuid.uuid4().hex)
        after = await scrape(ops)

    overview = "/api/v1/me/children/{pupil_id}/overview"
    assert overview in routes
    assert not [r for r in routes if pupil in r]
    assert value(after, "portal_http_requests_total", route=overview, method="GET", status="401") == 1
    assert value(after, "portal_http_request_duration_seconds_count", route=overview, method="GET", status="401") == 1
    assert value(after, "portal_http_requests_total", route="/health", method="GET", status="200") == 1
    assert value(after, "portal_http_requests_total", route="unmatched", method="GET", status="404") == unmatched + 20
    assert label_values(after, "portal_http_requests_total", "route") == routes
    assert label_values(after, "portal_http_requests_total", "method") <= {"GET", "other"}
    assert value(after, "portal_info", part="gateway", version="0.1.0") == 1


async def test_a_consumers_pending_count_is_what_jetstream_has_not_had_acknowledged(fresh_nats) -> None:
    from types import SimpleNamespace

    from nats.js.api import AckPolicy, ConsumerConfig

    from contracts.kit.ops import consumer_status

    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="OPSTEST", subjects=["opstest.>"])
        await js.add_consumer("OPSTEST", ConsumerConfig(durable_name="ops-test", ack_policy=AckPolicy.EXPLICIT))
        for n in range(3):
            await js.publish(f"opstest.thing.{n}", b"{}")
        runtime = SimpleNamespace(js=js)
        consumer = SimpleNamespace(stream=SimpleNamespace(name="OPSTEST"), durable="ops-test")
        before = await consumer_status(runtime, consumer)  # type: ignore[arg-type]
        assert (before.consumer, before.stream, before.pending) == ("ops-test", "OPSTEST", 3)
        assert before.idle_seconds is not None and before.idle_seconds >= 0

        sub = await js.pull_subscribe_bind("ops-test", stream="OPSTEST")
        [first, second] = await sub.fetch(2, timeout=5)
        await first.ack_sync()
        # One acknowledged; one delivered and in hand; one waiting.
        assert (await consumer_status(runtime, consumer)).pending == 2  # type: ignore[arg-type]

        missing = SimpleNamespace(stream=SimpleNamespace(name="OPSTEST"), durable="not-there")
        assert (await consumer_status(runtime, missing)).pending is None  # type: ignore[arg-type]
    finally:
        await nc.close()


def test_portal_status_judges_missing_and_stalled_parts() -> None:
    from contracts.rpc import ConsumerStatus, StatusReply
    from portal.status import PartState, judge, render

    def reply(part: str, instance: str, **kw: object) -> StatusReply:
        base: dict = {"part": part, "instance": instance, "version": "1", "status": "ok", "checks": {"database": "ok"}}
        return StatusReply.model_validate({"uptime_seconds": 5.0, **base, **kw})

    fine = PartState(
        "identity",
        [
            reply("identity", "identity-a", outbox_pending=3, outbox_oldest_seconds=2.0),
            reply(
                "identity",
                "identity-b",
                outbox_pending=3,
                outbox_oldest_seconds=2.5,
                consumers=[ConsumerStatus(consumer="identity-staff", stream="PLATFORM", pending=4, idle_seconds=1)],
            ),
        ],
    )
    stuck = PartState(
        "notify",
        [
            reply(
                "notify",
                "notify-a",
                status="degraded",
                checks={"database": "ok", "smtp": "TLS refused"},
                outbox_pending=7,
                outbox_oldest_seconds=300.0,
                consumers=[
                    ConsumerStatus(consumer="notify-requests", stream="NOTIFY_REQUESTS", pending=9, idle_seconds=600),
                    ConsumerStatus(consumer="notify-idle", stream="IDENTITY", pending=0, idle_seconds=9000),
                ],
            )
        ],
    )
    gone = PartState("overview")
    for state in (fine, stuck, gone):
        judge(state, stalled_after=60)
    assert (fine.state, fine.problems, fine.outbox) == ("ok", [], (3, 2.5))
    assert stuck.state == "stalled"
    assert stuck.problems == [
        "notify-a: smtp: TLS refused",
        "outbox: 7 events, the oldest waiting 5m",
        "consumer notify-requests: 9 pending, none acknowledged for 10m",
    ]
    assert (gone.state, gone.problems) == ("missing", ["no replica answered"])
    table = render({s.part: s for s in (fine, stuck, gone)}, {"notify notify-requests": 2})
    assert table[1].split() == ["identity", "2", "ok", "3", "2s", "1"]
    assert "dead letters: 2 (`portal dead-letters list`)" in table
