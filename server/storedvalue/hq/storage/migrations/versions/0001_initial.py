"""The initial HQ schema: cards with their locks, journal, redemptions, idempotent requests,
offline records and exceptions, parameter versions, terminals.

Revision ID: 0001
Revises:
Create Date: 2025-11-27

Written out in full, not imported from tables.py: a migration is a fixed historical fact,
while tables.py moves on. `alembic check` (and the contract tests) prove they agree.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _row_id() -> sa.types.TypeEngine[int]:
    # INTEGER on SQLite so the primary key aliases the rowid and autoincrements.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "cards",
        sa.Column("card_number", sa.String(length=19), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance_minor", sa.BigInteger(), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("last_fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("remainder_of_card_number", sa.String(length=19), nullable=False),
        sa.Column("lock_terminal_id", sa.String(length=200), nullable=True),
        sa.Column("lock_transaction_id", sa.String(length=128), nullable=True),
        sa.Column("lock_fencing_token", sa.BigInteger(), nullable=True),
        sa.Column("lock_lease_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("lock_acquired_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("card_number", name=op.f("pk_cards")),
    )
    op.create_index(
        op.f("ix_cards_lock_terminal_id_card_number"),
        "cards",
        ["lock_terminal_id", "card_number"],
        unique=False,
    )

    op.create_table(
        "journal",
        sa.Column("entry_id", _row_id(), autoincrement=True, nullable=False),
        sa.Column("card_number", sa.String(length=19), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance_after_minor", sa.BigInteger(), nullable=False),
        sa.Column("terminal_id", sa.String(length=200), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("line_id", sa.String(length=128), nullable=False),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("entry_id", name=op.f("pk_journal")),
    )
    op.create_index(
        op.f("ix_journal_card_number_entry_id"),
        "journal",
        ["card_number", "entry_id"],
        unique=False,
    )

    op.create_table(
        "redemptions",
        sa.Column("terminal_id", sa.String(length=200), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("line_id", sa.String(length=128), nullable=False),
        sa.Column("card_number", sa.String(length=19), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("remainder_card_number", sa.String(length=19), nullable=False),
        sa.Column("offline", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "terminal_id", "transaction_id", "line_id", name=op.f("pk_redemptions")
        ),
    )

    op.create_table(
        "request_log",
        sa.Column("caller", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("caller", "request_id", name=op.f("pk_request_log")),
    )

    op.create_table(
        "offline_records",
        sa.Column("terminal_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("sequence_number", sa.BigInteger(), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("terminal_id", "transaction_id", name=op.f("pk_offline_records")),
        sa.UniqueConstraint(
            "terminal_id",
            "sequence_number",
            name=op.f("uq_offline_records_terminal_id_sequence_number"),
        ),
    )

    op.create_table(
        "offline_exceptions",
        sa.Column("position", _row_id(), autoincrement=True, nullable=False),
        sa.Column("exception_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("terminal_id", sa.String(length=64), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("line_id", sa.String(length=128), nullable=False),
        sa.Column("card_number", sa.String(length=19), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("resolved_at", sa.BigInteger(), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=False),
        sa.Column("resolution", sa.Text(), nullable=False),
        sa.Column("transaction_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_offline_exceptions")),
        sa.UniqueConstraint("exception_id", name=op.f("uq_offline_exceptions_exception_id")),
    )
    op.create_index(
        op.f("ix_offline_exceptions_card_number_resolved_at"),
        "offline_exceptions",
        ["card_number", "resolved_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_offline_exceptions_resolved_at_position"),
        "offline_exceptions",
        ["resolved_at", "position"],
        unique=False,
    )
    op.create_index(
        op.f("ix_offline_exceptions_terminal_id_position"),
        "offline_exceptions",
        ["terminal_id", "position"],
        unique=False,
    )

    op.create_table(
        "parameters",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("gift_card_offline_completion_allowed", sa.Boolean(), nullable=False),
        sa.Column("credit_memo_offline_completion_allowed", sa.Boolean(), nullable=False),
        sa.Column("lock_lease_seconds", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_parameters")),
    )

    op.create_table(
        "terminals",
        sa.Column("terminal_id", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("registered_at", sa.BigInteger(), nullable=False),
        sa.Column("credential_issued_at", sa.BigInteger(), nullable=False),
        sa.Column("highest_contiguous_sequence", sa.BigInteger(), nullable=False),
        sa.Column("highest_sequence_seen", sa.BigInteger(), nullable=False),
        sa.Column("last_synced_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("terminal_id", name=op.f("pk_terminals")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_terminals_token_hash")),
    )


def downgrade() -> None:
    op.drop_table("terminals")
    op.drop_table("parameters")
    op.drop_index(
        op.f("ix_offline_exceptions_terminal_id_position"), table_name="offline_exceptions"
    )
    op.drop_index(
        op.f("ix_offline_exceptions_resolved_at_position"), table_name="offline_exceptions"
    )
    op.drop_index(
        op.f("ix_offline_exceptions_card_number_resolved_at"), table_name="offline_exceptions"
    )
    op.drop_table("offline_exceptions")
    op.drop_table("offline_records")
    op.drop_table("request_log")
    op.drop_table("redemptions")
    op.drop_index(op.f("ix_journal_card_number_entry_id"), table_name="journal")
    op.drop_table("journal")
    op.drop_index(op.f("ix_cards_lock_terminal_id_card_number"), table_name="cards")
    op.drop_table("cards")
