"""trust settings; a school's own settings per key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A NULL key: not set by the school, which then follows its trust's value.
    with op.batch_alter_table("school_settings", schema=None) as batch_op:
        batch_op.alter_column("max_carers_per_code", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("printed_code_days", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("invitation_days", existing_type=sa.Integer(), nullable=True)
        batch_op.alter_column("email_parent_on_removal", existing_type=sa.Boolean(), nullable=True)
    op.create_table(
        "trust_settings",
        sa.Column("trust_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("max_carers_per_code", sa.Integer(), nullable=True),
        sa.Column("printed_code_days", sa.Integer(), nullable=True),
        sa.Column("invitation_days", sa.Integer(), nullable=True),
        sa.Column("aup_text", sa.Text(), nullable=True),
        sa.Column("homework_url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("files_url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("messages_url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("email_parent_on_removal", sa.Boolean(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.PrimaryKeyConstraint("trust_id"),
    )


def downgrade() -> None:
    op.drop_table("trust_settings")
