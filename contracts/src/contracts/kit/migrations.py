"""Alembic, driven from code: each service keeps its revisions in its own package."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from contracts.kit.db import is_sqlite
from contracts.kit.tables import KIT_METADATA


def alembic_config(script_location: str, url: str) -> Config:
    """A configuration for `script_location` (`package:folder`) against `url`."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


def upgrade(script_location: str, url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision`."""
    command.upgrade(alembic_config(script_location, url), revision)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # Revisions stay plain SQLAlchemy: UtcDateTime is a timestamp with a zone in every database.
    from contracts.kit.db import UtcDateTime

    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_env(metadata: MetaData | Sequence[MetaData]) -> None:
    """The body of a service's `env.py`: migrate its own tables and the kit's."""
    targets = [*(metadata if isinstance(metadata, Sequence) else [metadata]), KIT_METADATA]
    config = context.config
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("the migration has no sqlalchemy.url")
    batch = is_sqlite(url)

    if context.is_offline_mode():
        context.configure(
            url=url, target_metadata=targets, literal_binds=True, render_as_batch=batch, render_item=_render_item
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    def do_run(connection: Connection) -> None:
        context.configure(
            connection=connection, target_metadata=targets, render_as_batch=batch, render_item=_render_item
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting together would otherwise race to create the same tables.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7263541)")
            context.run_migrations()

    async def run_async() -> None:
        engine = async_engine_from_config(
            config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
        )
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
        await engine.dispose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run_async())
    else:  # pragma: no cover - called from inside a loop: run in a worker thread
        import threading

        err: list[BaseException] = []

        def target() -> None:
            try:
                asyncio.run(run_async())
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                err.append(exc)

        t = threading.Thread(target=target)
        t.start()
        t.join()
        if err:
            raise err[0]


def kit_tables_v1_upgrade() -> None:
    """Create the kit's tables as of version 1 (called from each service's first revision).

    Frozen: a later change to the kit's tables gets a `kit_tables_v2_upgrade`, never an edit.
    """
    import sqlalchemy as sa
    from alembic import op

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=255), nullable=False),
        sa.Column("aggregate", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_table(
        "outbox_lease",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id"),
    )
    op.create_index("ix_processed_events_processed_at", "processed_events", ["processed_at"], unique=False)


def kit_tables_v1_downgrade() -> None:
    """Drop the kit's version 1 tables."""
    from alembic import op

    op.drop_index("ix_processed_events_processed_at", table_name="processed_events")
    op.drop_table("processed_events")
    op.drop_table("outbox_lease")
    op.drop_table("outbox")
