"""emails carry a priority: those a person waits for go before the digest's thousands

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every email already in the ledger is urgent: a digest still pending at the upgrade goes
    # in its old order, at worst.
    with op.batch_alter_table("emails", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="0"))
        batch_op.drop_index("ix_emails_due")
        batch_op.create_index("ix_emails_due", ["status", "priority", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("emails", schema=None) as batch_op:
        batch_op.drop_index("ix_emails_due")
        batch_op.create_index("ix_emails_due", ["status", "next_attempt_at"], unique=False)
        batch_op.drop_column("priority")
