"""a school's (and a trust's) language: Welsh and English side by side when `cy`

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: not set, so the trust's value (else English) applies, as for every other key.
    for table in ("school_settings", "trust_settings"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("language", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True))


def downgrade() -> None:
    for table in ("school_settings", "trust_settings"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("language")
