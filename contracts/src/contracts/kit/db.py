"""One database per service: SQLite by default, PostgreSQL in production."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import DateTime, Table, TypeDecorator, event, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from contracts.kit.logs import get_logger

log = get_logger("contracts.kit.db")

# Seconds between the checkpoints after an erasure: at once, then after the rows deleted right
# after it (published outbox rows) are gone too. Well inside the 30 s an erasure may take.


def is_sqlite(url: str) -> bool:
    """Whether a URL names a SQLite database."""
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_engine(url: str, *, immediate: bool) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when a transaction begins (see _on_begin).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        # Deleted rows are overwritten with zeros rather than left in free pages: erased data
        # (an address, a delivered email's link) is gone from the file, not just unreachable.
        cur.execute("PRAGMA secure_delete=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred transaction that reads and then writes fails at once with "database is
        # locked" when another writer got in between; taking the write lock up front makes
        # writers queue on busy_timeout instead. Readers use plain BEGIN and never block.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _ping_once(dbapi_connection: Any) -> bool:
    """The pool's check of a connection before handing it out, in one round trip: SQLAlchemy's
    own for asyncpg wraps its query in BEGIN and ROLLBACK, three round trips before every read
    and every transaction (a keyed read alone: 674 -> 382 µs). A query without arguments goes
    as a simple query, which prepares nothing, so it holds behind PgBouncer's transaction
    pooling as the wrapped one does. False, for any failure, has the pool drop its connections
    made before now and open a new one, as for a lost connection."""
    try:
        dbapi_connection.run_async(lambda conn: conn.execute("SELECT 1"))
    except Exception:  # noqa: BLE001 - whatever the failure, this connection is not handed out
        return False
    return True


class Database:
    """A service's database: sessions for writing (one transaction each) and for reading."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        if self.sqlite:
            self.engine = _sqlite_engine(url, immediate=True)
            self.read_engine = _sqlite_engine(url, immediate=False)
        else:
            # `pool_size` is the most this process ever holds (no overflow): an operator sizes
            # PostgreSQL's max_connections by parts × replicas × PORTAL_DB_POOL_SIZE, and work
            # beyond it waits for a connection rather than opening one more.
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True)
            self.engine.sync_engine.dialect.do_ping = _ping_once  # type: ignore[method-assign]
            self.read_engine = self.engine
        self._scrubs: set[asyncio.Task[None]] = set()
        # SQLite: the keyed reads' own connection, used on the event loop (see `_LoopReads`).
        path = _LoopReads.path_of(url) if self.sqlite else None
        self._loop_reads = _LoopReads(path) if path else None
        self._write = async_sessionmaker(self.engine, expire_on_commit=False)
        self._read = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction commits on success and rolls back on error."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only; on SQLite it never waits for writers."""
        async with self._read() as session, session.begin():
            yield session

    async def read_keys(self, sql: str, keys: Sequence[str], *params: Any) -> list[Sequence[Any]]:
        """The rows of one read-only statement over a list of keys, in one call of the driver.

        For the reads every first request of a busy morning makes (sessions by token, parents'
        pupils, pupils' overviews), gathered across requests: through the ORM each read is a
        transaction of several driver calls, and on SQLite each call a round trip to the driver's
        thread, about four times the CPU of the query itself. On SQLite the read is not made
        through the driver at all unless the database is busy, but on the event loop
        (`_LoopReads`).

        `sql` is plain SQL both databases understand, with `IN {keys}` where the list of keys
        goes (`... WHERE t.key IN {keys}`) and `{p1}`, `{p2}`, ... where `params` go (timestamps
        as aware datetimes). Values come back as the driver gives them: read timestamps with
        `utc`. The statement reads a consistent snapshot of its own.
        """
        if self.sqlite:
            # A JSON array, whatever the number of keys: one statement text, prepared once.
            places = {f"p{i}": f"?{i + 1}" for i in range(1, len(params) + 1)}
            query = sql.format(keys="(SELECT value FROM json_each(?1))", **places)
            values = (json.dumps(list(keys)), *(_sqlite_value(v) for v in params))
            if self._loop_reads is not None and (rows := self._loop_reads.rows(query, values)) is not None:
                return rows
            async with self._driver() as driver:
                return list(await driver.execute_fetchall(query, values))
        places = {f"p{i}": f"${i + 1}" for i in range(1, len(params) + 1)}
        # `= ANY` rather than `IN` a subquery of the array's elements: PostgreSQL then looks each
        # key up in the column's index. As a subquery it planned a hash join over the whole
        # table (the outstanding homework of 30 pupils: 1.24 ms, 0.80 with `= ANY`; the four
        # reads of an overview: 2.8 ms, 1.7).
        query = sql.replace("IN {keys}", "= ANY($1::text[])").format(**places)
        async with self._driver() as driver:
            return list(await driver.fetch(query, list(keys), *params))

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        # The driver's own connection (aiosqlite or asyncpg), from the read pool.
        async with self.read_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection

    async def checkpoint(self) -> bool:
        """SQLite: copy the write-ahead log into the database file and empty it, so that the
        older copies of pages it holds (with what a transaction since erased) are gone from
        disk; with `secure_delete` the erased bytes are zeros in the file itself. True when
        done (or nothing to do: PostgreSQL); False when a reader kept it from finishing."""
        if not self.sqlite:
            return True
        async with self.engine.connect() as conn:
            # The driver's own connection: SQLAlchemy would open a transaction first, and a
            # checkpoint inside one cannot finish.
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            row = await cursor.fetchone()
            await cursor.close()
        return row is not None and row[0] == 0

    def scrub_soon(self) -> None:
        """After an erasure: checkpoint now, in the background. What the outbox relay and the
        consumers delete right after (their older copies of the rows) leaves the log with the
        service's periodic checkpoint (`contracts.kit.retention`, every few seconds while the
        log is not empty)."""
        if not self.sqlite:
            return
        task = asyncio.create_task(self._scrub())
        self._scrubs.add(task)
        task.add_done_callback(self._scrubs.discard)

    async def _scrub(self) -> None:
        try:
            await self.checkpoint()
        except Exception as exc:  # noqa: BLE001 - the periodic checkpoint tries again
            log.warning("checkpoint_failed", error=type(exc).__name__)

    async def ping(self) -> None:
        """Raise unless the database answers."""
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Close every pooled connection."""
        for task in list(self._scrubs):
            task.cancel()
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
        if self._loop_reads is not None:
            self._loop_reads.close()


class UtcDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every database.

    SQLite keeps no zone and hands back naive values; those are UTC by construction here, so
    they are made aware again. Writing a naive value is a bug and is refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: use timezone-aware UTC values")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _LoopReads:
    """SQLite: keyed reads made on the event loop's thread, on a connection of their own.

    Through the driver each read is a round trip to its thread, twice over (the read, then the
    pool's rollback as the connection goes back): two handovers of the interpreter lock and two
    wake-ups of the loop, several times the CPU of looking up a few keys by index, and under
    load each a wait for the scheduler (15,000 first visits: identity and linking spent 40-50 %
    less CPU, the visits ran 20-40 % faster). In WAL mode a reader never waits for a writer, so
    a read here holds the loop for the query alone: about 25 µs for 9 sessions, 2 ms for the
    most a gathered read asks (500).

    The connection is read-only (`query_only`) and never waits: should SQLite say it is busy
    (a checkpoint restarting the log, a recovery, another process's exclusive lock), that read
    goes through the driver's thread, which waits as every other connection does.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @staticmethod
    def path_of(url: str) -> str | None:
        """The file of a SQLite URL; None for an in-memory database, which a second connection would not see."""
        path = make_url(url).database
        if not path or path == ":memory:" or path.startswith("file:"):
            return None
        return path

    def _connect(self) -> sqlite3.Connection:
        # mode=rw: never create the file (the migrations do); the driver's connections made it WAL.
        conn = sqlite3.connect(
            f"file:{quote(self.path)}?mode=rw", uri=True, timeout=0, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA query_only=ON")
        return conn

    def rows(self, query: str, values: Sequence[Any]) -> list[Sequence[Any]] | None:
        """The rows; None when SQLite is busy (then the driver reads them, and waits)."""
        if self._conn is None:
            self._conn = self._connect()
        try:
            return self._conn.execute(query, values).fetchall()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _sqlite_value(value: Any) -> Any:
    # Timestamps as SQLAlchemy stores them on SQLite (naive UTC text, always with microseconds),
    # so that they compare as the stored ones do.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def utc(value: datetime | str | None) -> datetime | None:
    """A timestamp column's value as `Database.read_keys` returns it (SQLite: the text SQLAlchemy
    stored, PostgreSQL: an aware datetime), as an aware UTC datetime, like `UtcDateTime`."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def dialect_name(session: AsyncSession) -> str:
    """`postgresql` or `sqlite`: the database the session talks to."""
    return session.get_bind().dialect.name


def insert(session: AsyncSession, table: Table | type[Any]) -> pg_dialect.Insert | sqlite_dialect.Insert:
    """An INSERT for the session's database, with its ON CONFLICT clauses (each dialect has its own class)."""
    target = table if isinstance(table, Table) else table.__table__
    if dialect_name(session) == "postgresql":
        return pg_dialect.insert(target)
    return sqlite_dialect.insert(target)
