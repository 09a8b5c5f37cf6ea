"""Every service answers its health request over a real NATS."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.kit import rpc
from contracts.kit.service import migrate
from contracts.rpc import SERVICES, HealthRequest, health
from identity import app as identity_app
from linking import app as linking_app
from notify import app as notify_app
from overview import app as overview_app

MODULES = {"identity": identity_app, "linking": linking_app, "notify": notify_app, "overview": overview_app}


@pytest.mark.parametrize("name", SERVICES)
async def test_service_answers_health_over_nats(name: str, nats_server, nc, tmp_path: Path) -> None:
    module = MODULES[name]
    extra = {"smtp_url": "smtp://127.0.0.1:2525"} if name == "notify" else {}
    settings = module.Settings(nats_url=nats_server.url, data_dir=tmp_path, **extra)
    migrate(module, settings)
    runtime = module.build(settings)
    async with runtime.running():
        reply = await rpc.call(nc, health(name), HealthRequest(), timeout=2)
    assert reply.service == name
    assert reply.status == "ok"
    assert reply.checks["database"] == "ok"
    assert all(v == "ok" for v in reply.checks.values())


async def test_notify_without_smtp_reports_degraded(nats_server, nc, tmp_path: Path) -> None:
    settings = notify_app.Settings(nats_url=nats_server.url, data_dir=tmp_path)
    migrate(notify_app, settings)
    async with notify_app.build(settings).running():
        reply = await rpc.call(nc, health("notify"), HealthRequest(), timeout=2)
    assert reply.status == "degraded" and reply.checks["smtp"] == "not configured"


async def test_missing_service_is_a_clear_error(nc) -> None:
    with pytest.raises(rpc.RpcUnavailable) as err:
        await rpc.call(nc, health("nobody"), HealthRequest(), timeout=1)
    assert err.value.code == "service_unavailable"
