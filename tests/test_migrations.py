"""Every service's migrations apply on SQLite and PostgreSQL, and match its models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.kit.migrations import upgrade
from contracts.kit.tables import KIT_METADATA
from contracts.rpc import SERVICES
from identity import app as identity_app
from identity import tables as identity_tables
from linking import app as linking_app
from linking import tables as linking_tables
from notify import app as notify_app
from notify import tables as notify_tables
from overview import app as overview_app
from overview import tables as overview_tables

MODULES = {
    "identity": (identity_app, identity_tables),
    "linking": (linking_app, linking_tables),
    "notify": (notify_app, notify_tables),
    "overview": (overview_app, overview_tables),
}


@pytest.mark.parametrize("name", SERVICES)
async def test_migrations_apply_and_match_the_models(name: str, database_url: str) -> None:
    app_module, tables = MODULES[name]
    await asyncio.to_thread(upgrade, app_module.MIGRATIONS, database_url)
    # Applying again is a no-op, as `portal up` does at every start.
    await asyncio.to_thread(upgrade, app_module.MIGRATIONS, database_url)
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))

            def diff(c):
                ctx = MigrationContext.configure(c, opts={"compare_type": True})
                return compare_metadata(ctx, [tables.metadata, KIT_METADATA])

            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    expected = set(tables.metadata.tables) | set(KIT_METADATA.tables) | {"alembic_version"}
    assert expected <= names
    assert differences == [], f"models and migrations of {name} differ: write a migration"


async def test_identity_keeps_the_last_sign_in_of_accounts_signed_in_before_it_was_kept(database_url: str) -> None:
    """The migration that keeps each account's last sign-in starts from its latest session."""
    await asyncio.to_thread(upgrade, identity_app.MIGRATIONS, database_url, "0004")
    engine = create_async_engine(database_url)
    account = (
        "INSERT INTO accounts (id, role, email, email_key, name, created_at, updated_at)"
        " VALUES (:id, 'parent', :id, :id, 'A Parent', :at, :at)"
    )
    session = (
        "INSERT INTO sessions (id, account_id, token_hash, created_at, last_seen_at, idle_seconds,"
        " absolute_expires_at) VALUES (:id, :account, :id, :at, :at, 60, :at)"
    )
    early, late = datetime(2026, 9, 1, 8, tzinfo=UTC), datetime(2026, 11, 2, 9, tzinfo=UTC)
    try:
        async with engine.begin() as conn:
            for who in ("twice", "never"):
                await conn.execute(text(account), {"id": who, "at": early})
            for sid, at in (("s1", early), ("s2", late)):
                await conn.execute(text(session), {"id": sid, "account": "twice", "at": at})
        await asyncio.to_thread(upgrade, identity_app.MIGRATIONS, database_url)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, last_signed_in_at FROM accounts ORDER BY id"))).all()
    finally:
        await engine.dispose()
    found = {row[0]: row[1] for row in rows}
    assert found["never"] is None
    twice = found["twice"]
    if isinstance(twice, str):  # SQLite hands back the stored text
        twice = datetime.fromisoformat(twice)
    assert (twice.replace(tzinfo=UTC) if twice.tzinfo is None else twice) == late
