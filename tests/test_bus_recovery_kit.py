"""The messaging kit when NATS cannot take what it is given: an outbox row too large for NATS,
or for a subject no stream takes, is dead-lettered and the rows behind it are published; an
existing stream is brought to the settings (size limit, duplicate window) at start-up, and a
replica count a single server cannot hold is refused without stopping the part."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kitapp
import nats
import natsauth
from helpers import eventually
from kitapp import outbox_count
from nats.js.api import StreamConfig

from contracts.kit.deadletters import list_dead_letters
from contracts.streams import DEADLETTERS

PORTAL = str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "portal")


def portal_cli(*args: str, nats_url: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTAL_")}
    env["PORTAL_NATS_URL"] = nats_url
    env["PORTAL_NATS_CREDS_DIR"] = str(natsauth.CREDS_DIR)
    return subprocess.run([PORTAL, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


async def stream_keys(js) -> list[str]:
    info = await js.stream_info(kitapp.STREAM.name)
    keys = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        keys.append(kitapp.ThingHappened.model_validate_json((await js.get_msg(kitapp.STREAM.name, seq)).data).key)
    return keys


async def test_an_oversized_row_and_a_row_no_stream_takes_are_dead_lettered_and_the_next_rows_published(
    fresh_nats, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'kit.db'}"
    await kitapp.create_schema(url)
    runtime = kitapp.build(kitapp.KitSettings(nats_url=fresh_nats.url, database_url=url), consume=False)
    nc = await nats.connect(fresh_nats.url)
    try:
        # Committed before the relay runs, in this order: each would block the next for ever.
        async with runtime.unit_of_work() as uow:
            await uow.emit(kitapp.SUBJECT, kitapp.ThingHappened(key="first"))
            huge = kitapp.ThingHappened(key="x" * (nc.max_payload + 10))
            huge_id = await uow.emit(kitapp.SUBJECT, huge)
            await uow.emit(kitapp.SUBJECT, kitapp.ThingHappened(key="after-huge"))
            stray_id = await uow.emit("nostream.thing.happened.v1", kitapp.ThingHappened(key="stray"))
            await uow.emit(kitapp.SUBJECT, kitapp.ThingHappened(key="last"))
        async with runtime.running():
            js = nc.jetstream()
            await eventually(lambda: _empty(runtime), timeout=20, message="outbox drained")
            assert await stream_keys(js) == ["first", "after-huge", "last"]

            letters = await list_dead_letters(js)
            by_id = {d.subject: d for d in letters}
            assert set(by_id) == {kitapp.SUBJECT, "nostream.thing.happened.v1"}
            big = by_id[kitapp.SUBJECT]
            assert big.consumer == "outbox" and big.service == "kittest"
            assert big.error.startswith("too large:") and big.redacted and big.size == 0
            stray = by_id["nostream.thing.happened.v1"]
            assert stray.error == "no stream for nostream.thing.happened.v1" and not stray.redacted
            # Kept whole: it can be replayed once a stream takes its subject.
            assert (
                kitapp.ThingHappened.model_validate_json((await js.get_msg(DEADLETTERS.name, stray.id)).data).event_id
                == stray_id
            )

            listed = portal_cli("dead-letters", "list", nats_url=fresh_nats.url)
            assert listed.returncode == 0, listed.stderr
            rows = [line.split() for line in listed.stdout.splitlines()[1:]]
            assert sorted((r[1], r[2], r[3]) for r in rows) == [
                ("kittest", "outbox", "kittest.thing.happened.v1"),
                ("kittest", "outbox", "nostream.thing.happened.v1"),
            ]
            replay = portal_cli("dead-letters", "replay", str(big.id), nats_url=fresh_nats.url)
            assert replay.returncode == 1 and "Traceback" not in replay.stderr
            assert huge_id  # the row is gone from the outbox, its id kept in the dead letter
    finally:
        await nc.close()
        await runtime.db.dispose()


async def _empty(runtime) -> bool:
    return await outbox_count(runtime) == 0


async def test_start_up_brings_an_existing_stream_to_the_settings_and_survives_replicas_one_server_cannot_hold(
    fresh_nats, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'kit.db'}"
    await kitapp.create_schema(url)
    nc = await nats.connect(fresh_nats.url)
    js = nc.jetstream()
    # As an older release left it: no size limit, a shorter duplicate window.
    await js.add_stream(StreamConfig(name=kitapp.STREAM.name, subjects=["kittest.>"], duplicate_window=30.0))
    settings = kitapp.KitSettings(
        nats_url=fresh_nats.url, database_url=url, stream_max_bytes=64 * 1024 * 1024, stream_replicas=3
    )
    runtime = kitapp.build(settings, consume=True)
    try:
        async with runtime.running():
            cfg = (await js.stream_info(kitapp.STREAM.name)).config
            assert cfg.max_bytes == 64 * 1024 * 1024
            assert cfg.duplicate_window == kitapp.STREAM.duplicate_window
            assert cfg.num_replicas == 1  # one server: three replicas refused, the rest applied
            assert (await js.stream_info(DEADLETTERS.name)).config.max_bytes == 64 * 1024 * 1024
            # And the part works: an event goes through the outbox to its consumer.
            await kitapp.emit_things(runtime, 3)
            await eventually(lambda: _applied(runtime, 3), timeout=20, message="events applied")
    finally:
        await nc.close()
        await runtime.db.dispose()


async def _applied(runtime, n: int) -> bool:
    return (await kitapp.read_totals(runtime))[1] == n
