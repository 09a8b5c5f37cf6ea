"""homework.description, homework_pupils.completed_at, messages' sender, subject and sending
time, star_awards.reason: what a parent's per-child pages show

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.add_column(sa.Column("description", sqlmodel.sql.sqltypes.AutoString(length=10000), nullable=True))
    with op.batch_alter_table("homework_pupils", schema=None) as batch_op:
        batch_op.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("from_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("star_awards", schema=None) as batch_op:
        # Awards projected before this revision kept no reason.
        batch_op.add_column(sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("star_awards", schema=None) as batch_op:
        batch_op.drop_column("reason")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
        batch_op.drop_column("subject")
        batch_op.drop_column("from_name")
    with op.batch_alter_table("homework_pupils", schema=None) as batch_op:
        batch_op.drop_column("completed_at")
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.drop_column("description")
