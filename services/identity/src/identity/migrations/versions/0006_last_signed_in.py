"""last signed in: when each account last signed in, kept on the account

Sessions are erased some days after they end, so "never signed in" cannot be read from them
alone. Accounts with a session on record start from the latest one's beginning.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_signed_in_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE accounts SET last_signed_in_at = "
        "(SELECT max(sessions.created_at) FROM sessions WHERE sessions.account_id = accounts.id)"
    )


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("last_signed_in_at")
