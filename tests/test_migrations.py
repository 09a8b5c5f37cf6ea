"""Every service's migrations apply on SQLite and PostgreSQL, and match its models."""

from __future__ import annotations

import asyncio

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
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
