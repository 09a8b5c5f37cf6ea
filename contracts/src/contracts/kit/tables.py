"""The kit's own tables, present in every service's database (each service migrates them)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from contracts.kit.db import UtcDateTime

KIT_METADATA = MetaData()

# BigInteger on PostgreSQL, but INTEGER on SQLite so that it stays the rowid alias.
_Id = BigInteger().with_variant(Integer(), "sqlite")

outbox = Table(
    "outbox",
    KIT_METADATA,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("event_id", String(128), nullable=False, unique=True),
    Column("subject", String(255), nullable=False),
    Column("aggregate", String(255), nullable=False, default=""),
    Column("payload", LargeBinary, nullable=False),
    Column("headers", Text, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
)

outbox_lease = Table(
    "outbox_lease",
    KIT_METADATA,
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
)

processed_events = Table(
    "processed_events",
    KIT_METADATA,
    Column("consumer", String(128), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("processed_at", UtcDateTime(), nullable=False),
    Index("ix_processed_events_processed_at", "processed_at"),
)
