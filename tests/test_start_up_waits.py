"""A part whose database cannot be reached yet keeps trying and says so, then starts once it
can, rather than exit: an orchestrator starting everything at once would restart it in a loop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import natsauth
import pytest
from conftest import PG_HOST, PG_PORT, PG_USER, RUN_ID
from helpers import eventually

PORTAL = str(Path(sys.executable).with_name("portal"))


@pytest.mark.postgres
async def test_a_part_waits_for_its_database_and_starts_once_it_is_there(pg, nats_server, tmp_path: Path) -> None:
    name = f"portal_test_{RUN_ID}_late_{uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env.update(
        PORTAL_NATS_URL=nats_server.url,
        PORTAL_NATS_CREDS_DIR=str(natsauth.CREDS_DIR),
        PORTAL_DATA_DIR=str(tmp_path),
        PORTAL_OVERVIEW_DATABASE_URL=f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}",
    )
    log = tmp_path / "overview.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([PORTAL, "service", "overview"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert await eventually(lambda: "database_unreachable" in log.read_text(), timeout=30), log.read_text()
        assert proc.poll() is None, "it kept trying instead of exiting"
        pg._admin(f'CREATE DATABASE "{name}"')
        pg.created.append(name)
        started = await eventually(lambda: "service_started" in log.read_text(), timeout=60)
        assert started, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
