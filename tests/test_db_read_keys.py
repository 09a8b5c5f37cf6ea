"""`Database.read_keys`, the one-call read of the busiest cache misses, on SQLite and
PostgreSQL: rows for the keys asked and no others, whatever the keys hold, timestamps read back
as the ORM reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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
