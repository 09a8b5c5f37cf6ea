"""A tiny service built with the messaging kit, for testing the kit with real processes.

Run as `python tests/kitapp.py relay|consume --db URL --nats URL`: `relay` only relays the
outbox, `consume` applies `kittest.thing.happened.v1` events to a running total (an effect
that is *not* idempotent by itself, so double application would show). The tests drive it
with `spawn`, `emit_things` and `outbox_count`, at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.base import Event
from contracts.kit.logs import configure_logging
from contracts.kit.outbox import UnitOfWork
from contracts.kit.runtime import ServiceRuntime
from contracts.kit.settings import ServiceSettings, database_url_field
from contracts.kit.tables import KIT_METADATA, outbox
from contracts.streams import StreamDef

HERE = Path(__file__).parent
SUBJECT = "kittest.thing.happened.v1"
STREAM = StreamDef("KITTEST", ("kittest.>",), "Events of the kit's test service.")
DURABLE = "kittest-totals"

metadata = MetaData()
totals = Table(
    "totals",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("amount", Integer, nullable=False, default=0),
    Column("applied", Integer, nullable=False, default=0),
)


class ThingHappened(Event):
    """Something worth counting happened."""

    key: str
    amount: int = 1
    poison: bool = False


class KitSettings(ServiceSettings):
    service_name: ClassVar[str] = "kittest"
    database_url: str | None = database_url_field("kittest")

    def nats_seed(self, part: str) -> str | None:
        # Not a part of the portal, so no NATS user of its own: it connects as the tests do.
        return None


async def create_schema(url: str) -> None:
    """Create the test service's tables and the kit's (tests skip Alembic here)."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.run_sync(KIT_METADATA.create_all)
    await engine.dispose()


# Keys the handler refuses while listed: a failure an operator can fix, then replay.
BLOCKED: set[str] = set()
# Seconds each event takes to apply (`--delay`): a slow replica, to stop in the middle of a batch.
DELAY = 0.0


async def apply_thing(uow: UnitOfWork, event: ThingHappened, subject: str) -> None:
    """Add the event's amount to the total: counted twice if applied twice."""
    if event.poison:
        raise ValueError("this event can never be applied")
    if event.key in BLOCKED:
        raise LookupError(f"{event.key} is blocked")
    if DELAY:
        await asyncio.sleep(DELAY)
    s = uow.session
    dialect = s.bind.dialect.name
    ins = (pg_insert if dialect == "postgresql" else sqlite_insert)(totals)
    await s.execute(ins.values(name="all", amount=0, applied=0).on_conflict_do_nothing())
    await s.execute(
        update(totals)
        .where(totals.c.name == "all")
        .values(amount=totals.c.amount + event.amount, applied=totals.c.applied + 1)
    )


async def read_totals(runtime_or_url) -> tuple[int, int]:
    """(amount, applied) so far."""
    if isinstance(runtime_or_url, str):
        engine = create_async_engine(runtime_or_url)
        async with engine.connect() as conn:
            row = (await conn.execute(select(totals.c.amount, totals.c.applied))).first()
        await engine.dispose()
    else:
        async with runtime_or_url.db.reader() as s:
            row = (await s.execute(select(totals.c.amount, totals.c.applied))).first()
    return (row.amount, row.applied) if row else (0, 0)


def build(settings: KitSettings, *, consume: bool, max_deliveries: int = 3, batch_size: int = 50) -> ServiceRuntime:
    """The test service: relays its outbox; optionally consumes its own events."""
    runtime = ServiceRuntime(settings, version="0", description="kit test service", streams=[STREAM])
    if consume:
        runtime.consume(
            stream=STREAM,
            subject=SUBJECT,
            durable=DURABLE,
            schemas={SUBJECT: ThingHappened},
            handler=apply_thing,
            title="totals",
            description="Adds each thing's amount to the running total.",
            max_deliveries=max_deliveries,
            batch_size=batch_size,
        )
    return runtime


# -- for the tests that drive the service -------------------------------------------------------


def spawn(mode: str, db: str, nats_url: str, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """This service in a process of its own (`relay` or `consume`), to kill or stop; its
    output goes to `log` when given."""
    out = log.open("ab") if log is not None else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, str(HERE / "kitapp.py"), mode, "--db", db, "--nats", nats_url, *extra],
        stdout=out,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )


async def outbox_count(runtime: ServiceRuntime) -> int:
    """Events committed and not yet relayed."""
    async with runtime.db.reader() as s:
        return (await s.execute(select(func.count()).select_from(outbox))).scalar_one()


async def emit_things(runtime: ServiceRuntime, n: int, *, per_tx: int = 100) -> list[str]:
    """Commit `n` events to the outbox, `per_tx` a transaction; returns their event ids."""
    ids: list[str] = []
    for start in range(0, n, per_tx):
        async with runtime.unit_of_work() as uow:
            for i in range(start, min(n, start + per_tx)):
                ev = ThingHappened(key=f"k{i}", amount=i)
                ids.append(await uow.emit(SUBJECT, ev, aggregate=f"k{i % 7}"))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["relay", "consume"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each event takes to apply")
    args = parser.parse_args()
    global DELAY
    DELAY = args.delay
    configure_logging(service="kittest", level="INFO")
    settings = KitSettings(nats_url=args.nats, database_url=args.db)
    runtime = build(settings, consume=args.mode == "consume", batch_size=args.batch_size)
    print("starting", flush=True)
    asyncio.run(runtime.app.run())


if __name__ == "__main__":
    main()
