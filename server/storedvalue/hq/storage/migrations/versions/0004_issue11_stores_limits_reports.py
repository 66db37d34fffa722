"""Offline risk limits, parameters per store, terminals' stores, revocation and status
reports (issue 11).

Revision ID: 0004_issue11
Revises: 0003
Create Date: 2026-12-02

- parameters: a row per change of any scope. `store_id` ('' for the global parameters, the
  rows so far) and the offline risk limits per tender kind (NULL: not set) are added; the
  flags and the lease become nullable, because a store's override sets only what it
  overrides. Existing rows keep their values: global, no limit (unlimited, as before).
- terminals: the store (none so far) and the revocation (none so far).
- terminal_reports: each terminal's last status report.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_issue11"
down_revision = "0003"
branch_labels = None
depends_on = None

_KINDS = ("gift_card", "credit_memo")


def _limit_columns() -> list[sa.Column[object]]:
    columns: list[sa.Column[object]] = []
    for kind in _KINDS:
        for limit in ("max_line", "max_unsynced"):
            columns.append(sa.Column(f"{kind}_{limit}_minor", sa.BigInteger(), nullable=True))
            columns.append(sa.Column(f"{kind}_{limit}_currency", sa.String(length=3),
                                     nullable=True))
        columns.append(sa.Column(f"{kind}_max_offline_seconds", sa.BigInteger(), nullable=True))
    return columns


def upgrade() -> None:
    with op.batch_alter_table("parameters") as batch:
        for name, kind in (("gift_card_offline_completion_allowed", sa.Boolean()),
                           ("credit_memo_offline_completion_allowed", sa.Boolean()),
                           ("lock_lease_seconds", sa.BigInteger())):
            batch.alter_column(name, existing_type=kind, nullable=True)
        batch.add_column(sa.Column("store_id", sa.String(length=64), nullable=False,
                                   server_default=""))
        for column in _limit_columns():
            batch.add_column(column)
        batch.create_index(op.f("ix_parameters_store_id_version"), ["store_id", "version"],
                           unique=False)

    with op.batch_alter_table("terminals") as batch:
        batch.add_column(sa.Column("store_id", sa.String(length=64), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("revoked_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("revoked_by", sa.String(length=200), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("revocation_reason", sa.Text(), nullable=False,
                                   server_default=""))

    op.create_table(
        "terminal_reports",
        sa.Column("terminal_id", sa.String(length=64), nullable=False),
        sa.Column("reported_at", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("report_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_terminal_reports")),
    )


def downgrade() -> None:
    op.drop_table("terminal_reports")
    with op.batch_alter_table("terminals") as batch:
        for name in ("revocation_reason", "revoked_by", "revoked_at", "store_id"):
            batch.drop_column(name)
    # Store overrides have no place in the old table: they go with the columns.
    op.execute(sa.text("DELETE FROM parameters WHERE store_id <> ''"))
    with op.batch_alter_table("parameters") as batch:
        batch.drop_index(op.f("ix_parameters_store_id_version"))
        for column in reversed(_limit_columns()):
            batch.drop_column(column.name)
        batch.drop_column("store_id")
        for name, kind in (("lock_lease_seconds", sa.BigInteger()),
                           ("credit_memo_offline_completion_allowed", sa.Boolean()),
                           ("gift_card_offline_completion_allowed", sa.Boolean())):
            batch.alter_column(name, existing_type=kind, nullable=False)
