"""The messaging kit's tables: outbox, relay lease, processed events.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from contracts.kit.migrations import kit_tables_v1_downgrade, kit_tables_v1_upgrade

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    kit_tables_v1_upgrade()


def downgrade() -> None:
    kit_tables_v1_downgrade()
