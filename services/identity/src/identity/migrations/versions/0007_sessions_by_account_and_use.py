"""sessions by account and last use: the uptake's "seen since" answered from the index alone

Whether an account was seen since a day is asked of every linked parent of a trust at once;
with the last use in the index the sessions' rows are not read. The index on account_id
alone is its prefix, so it goes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_sessions_account_seen", "sessions", ["account_id", "last_seen_at"])
    op.drop_index("ix_sessions_account", table_name="sessions")


def downgrade() -> None:
    op.create_index("ix_sessions_account", "sessions", ["account_id"])
    op.drop_index("ix_sessions_account_seen", table_name="sessions")
