"""Notifications between HQ processes on one SQLite file.

Revision ID: 0006_notifications
Revises: 0005_partial_lock_index
Create Date: 2026-12-02

Several HQ processes may share one SQLite file. A parameter change or a terminal revoked or
moved through one must reach the others' watch streams and credential caches, as PostgreSQL
replicas hear it through LISTEN/NOTIFY: the change's transaction adds a row here, and every
process reads the rows above the last id it saw. Ids are never reused (AUTOINCREMENT on
SQLite). PostgreSQL keeps LISTEN/NOTIFY and writes no rows here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_notifications"
down_revision = "0005_partial_lock_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("notifications")
