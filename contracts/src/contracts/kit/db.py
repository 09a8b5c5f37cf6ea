"""One database per service: SQLite by default, PostgreSQL in production."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Table, TypeDecorator, event, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


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


class Database:
    """A service's database: sessions for writing (one transaction each) and for reading."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        if self.sqlite:
            self.engine = _sqlite_engine(url, immediate=True)
            self.read_engine = _sqlite_engine(url, immediate=False)
        else:
            self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
            self.read_engine = self.engine
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

    async def ping(self) -> None:
        """Raise unless the database answers."""
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def checkpoint(self) -> None:
        """On SQLite, copy the write-ahead log into the database file and truncate it to nothing:
        old versions of pages (erased rows among them) live on in the log until then. Nothing
        to do on PostgreSQL (see docs/data-protection.md: VACUUM)."""
        if not self.sqlite:
            return
        async with self.engine.connect() as conn:
            # On the driver's connection: SQLAlchemy would open a transaction first, and a
            # checkpoint cannot run inside one.
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            cursor = await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await cursor.close()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


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


def dialect_name(session: AsyncSession) -> str:
    """`postgresql` or `sqlite`: the database the session talks to."""
    return session.get_bind().dialect.name


def insert(session: AsyncSession, table: Table | type[Any]) -> pg_dialect.Insert | sqlite_dialect.Insert:
    """An INSERT for the session's database, with its ON CONFLICT clauses (each dialect has its own class)."""
    target = table if isinstance(table, Table) else table.__table__
    if dialect_name(session) == "postgresql":
        return pg_dialect.insert(target)
    return sqlite_dialect.insert(target)
