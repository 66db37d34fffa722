"""The lock history (issue 9): every fencing token HQ hands out, to which terminal and sale,
kept after the lock ends, so an offline line is trusted only under its own sale's lock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

The locks cards hold when the upgrade runs are copied in, so tills offline across the upgrade
still have their sales trusted. Locks that ended before it are unknown: a line completed under
one of those is applied with a LOCK_NOT_HELD exception.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lock_history",
        sa.Column("card_number", sa.String(length=19), nullable=False),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("terminal_id", sa.String(length=200), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", sa.BigInteger(), nullable=False),
        sa.Column("released_by_holder_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("card_number", "fencing_token", name=op.f("pk_lock_history")),
    )
    op.create_index(
        op.f("ix_lock_history_terminal_id_transaction_id"),
        "lock_history",
        ["terminal_id", "transaction_id"],
        unique=False,
    )
    op.execute(
        "INSERT INTO lock_history (card_number, fencing_token, terminal_id, transaction_id, "
        "acquired_at) SELECT card_number, lock_fencing_token, lock_terminal_id, "
        "lock_transaction_id, lock_acquired_at FROM cards WHERE lock_terminal_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_lock_history_terminal_id_transaction_id"), table_name="lock_history")
    op.drop_table("lock_history")
