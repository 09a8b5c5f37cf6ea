"""pupil contacts from the roster

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pupil_contacts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pupil_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("school_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("email_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("email_cipher", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("relationship", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("version_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pupil_id", "position", name="uq_pupil_contacts_position"),
    )
    with op.batch_alter_table("pupil_contacts", schema=None) as batch_op:
        batch_op.create_index("ix_pupil_contacts_school", ["school_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("pupil_contacts", schema=None) as batch_op:
        batch_op.drop_index("ix_pupil_contacts_school")
    op.drop_table("pupil_contacts")
