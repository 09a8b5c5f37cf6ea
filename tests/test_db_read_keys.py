"""`Database.read_keys`, the one-call read of the busiest cache misses, on SQLite and
PostgreSQL: rows for the keys asked and no others, whatever the keys hold, timestamps read back
as the ORM reads them."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert

from contracts.kit.db import Database, UtcDateTime, utc

pytestmark = pytest.mark.asyncio

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("key", String(200), primary_key=True),
    Column("label", String(200)),
    Column("at", UtcDateTime()),
    Column("gone_at", UtcDateTime(), nullable=True),
)
SQL = "SELECT t.key, t.label, t.at, t.gone_at FROM things t WHERE t.key IN {keys} ORDER BY t.key"
AT = datetime(2026, 12, 4, 7, 30, 15, 123456, tzinfo=UTC)


async def test_rows_of_the_keys_asked_and_no_others(database_url: str) -> None:
    db = Database(database_url)
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        hostile = ["a'); DROP TABLE things; --", 'b" OR 1=1 --', "%", "_", "ü-ñ", "[1]", ""]
        rows = [
            {"key": f"k{i:03d}", "label": f"L{i}", "at": AT + timedelta(seconds=i), "gone_at": None} for i in range(600)
        ]
        rows += [{"key": k, "label": "odd", "at": AT, "gone_at": AT} for k in hostile]
        async with db.session() as s:
            await s.execute(insert(things), rows)

        got = await db.read_keys(SQL, ["k001", "k005", "k001", "nope"])
        assert [(r[0], r[1], utc(r[2]), utc(r[3])) for r in got] == [
            ("k001", "L1", AT + timedelta(seconds=1), None),
            ("k005", "L5", AT + timedelta(seconds=5), None),
        ], "each key asked once, unknown keys nothing, timestamps as written (aware, UTC)"

        got = await db.read_keys(SQL, hostile)
        assert sorted(r[0] for r in got) == sorted(hostile), "keys are values, never SQL"
        assert all(utc(r[3]) == AT for r in got)
        assert await db.read_keys(SQL, ["%"]) != await db.read_keys(SQL, ["k%"]), "no pattern matching"

        many = [f"k{i:03d}" for i in range(0, 600, 2)]
        assert [r[0] for r in await db.read_keys(SQL, many)] == many, "hundreds of keys in one statement"
        assert await db.read_keys(SQL, []) == []
        async with db.reader() as s:
            assert (await s.execute(things.select().where(things.c.key == "k001"))).one().at == AT + timedelta(
                seconds=1
            )
    finally:
        await db.dispose()


# -- SQLite: keyed reads on the event loop -------------------------------------------------------


class DriverCalls:
    """Counts the reads that went through the driver's thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import aiosqlite

        self.count = 0
        real = aiosqlite.Connection.execute_fetchall

        async def counted(conn: aiosqlite.Connection, *args: object, **kwargs: object) -> object:
            self.count += 1
            return await real(conn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "execute_fetchall", counted)


async def _sqlite_things(tmp_path: Path, n: int = 3) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'things.sqlite'}")
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    async with db.session() as s:
        await s.execute(insert(things), [{"key": f"k{i}", "label": f"L{i}", "at": AT} for i in range(n)])
    return db


async def test_sqlite_keyed_reads_answer_while_a_writer_holds_its_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await _sqlite_things(tmp_path)
    driver = DriverCalls(monkeypatch)
    try:
        async with db.session() as s:
            await s.execute(insert(things), [{"key": "k9", "label": "uncommitted", "at": AT}])
            # The same task holds the write lock: a read that waited for it would never end.
            got = await asyncio.wait_for(db.read_keys(SQL, ["k0", "k2", "k9"]), 5)
            assert [r[0] for r in got] == ["k0", "k2"], "committed rows only, at once"
        assert [r[1] for r in await db.read_keys(SQL, ["k9"])] == ["uncommitted"], "then the new row"
        assert driver.count == 0, "read on the event loop's own connection, not through the driver's thread"
    finally:
        await db.dispose()


async def test_sqlite_keyed_read_the_database_is_locked_for_waits_without_holding_up_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = await _sqlite_things(tmp_path)
    # Nothing of this process has the file open, so another process's connection can take it whole.
    await db.dispose()
    other = sqlite3.connect(tmp_path / "things.sqlite", isolation_level=None, timeout=0)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("INSERT INTO things (key, label, at) VALUES ('k7', 'under the lock', '2026-12-04 07:30:15.123456')")
    other.execute("COMMIT")
    driver = DriverCalls(monkeypatch)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def release() -> None:
        await asyncio.sleep(0.5)
        other.close()

    ticker, releaser = asyncio.create_task(tick()), asyncio.create_task(release())
    try:
        got = await asyncio.wait_for(db.read_keys(SQL, ["k1", "k7"]), 20)
        assert [(r[0], r[1]) for r in got] == [("k1", "L1"), ("k7", "under the lock")], "waited, then read"
        assert driver.count == 1, "the busy read went through the driver, which waits"
        assert ticks >= 20, f"the event loop went on meanwhile ({ticks} ticks of 10 ms in 0.5 s)"
        await db.read_keys(SQL, ["k1"])
        assert driver.count == 1, "once free, reads are on the loop again"
    finally:
        ticker.cancel()
        await releaser
        await db.dispose()
