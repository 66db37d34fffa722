"""Line reversals (issue 8): a tender line a terminal gave up after its Redeem may have
reached HQ is recorded on its redemptions row: REVERSED (the debit was credited back) or
NEVER_APPLIED (a tombstone for a line never debited, so a late Redeem of it is refused).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08

Both columns are nullable: every existing row is a debit that stands (NULL, NULL).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("redemptions") as batch:
        batch.add_column(sa.Column("reversal", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("reversed_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("redemptions") as batch:
        batch.drop_column("reversed_at")
        batch.drop_column("reversal")
