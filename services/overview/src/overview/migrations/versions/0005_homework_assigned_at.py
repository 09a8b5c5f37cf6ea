"""homework.assigned_at: the time of the assignment that said what the homework is, so that an
older one applied later (a redelivery) leaves the newer title, due date and description

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows from before it keep NULL: the next assignment of that homework replaces what they say.
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.add_column(sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("homework", schema=None) as batch_op:
        batch_op.drop_column("assigned_at")
