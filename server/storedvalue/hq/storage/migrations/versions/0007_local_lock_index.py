"""The lock index in the order locks are taken, within each terminal.

Revision ID: 0007_local_lock_index
Revises: 0006_notifications
Create Date: 2026-12-03

The partial lock index was keyed (lock_terminal_id, card_number): card numbers are random,
so each lock taken inserted an entry, and each release deleted one, at a random page of the
terminal's range; a sync of 20,000 sales wrote ~0.26 WAL pages a sale for it alone (of
~0.8). Keyed (lock_terminal_id, lock_acquired_at, card_number), a terminal's locks are in the
order it took them, and it releases them in about that order (a sale's lock ends when the
sale completes or syncs): inserts land on the newest page of the range, deletes on the
oldest. The back office's lock lists still come in card-number order: they sort a
terminal's locks (as the list of all terminals' locks did already).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_local_lock_index"
down_revision = "0006_notifications"
branch_labels = None
depends_on = None

_OLD = "ix_cards_lock_terminal_id_card_number"
_NEW = "ix_cards_lock_terminal_id_lock_acquired_at_card_number"
_LOCKED = "lock_terminal_id IS NOT NULL"


def upgrade() -> None:
    op.drop_index(op.f(_OLD), table_name="cards")
    op.create_index(op.f(_NEW), "cards", ["lock_terminal_id", "lock_acquired_at", "card_number"],
                    unique=False, sqlite_where=sa.text(_LOCKED),
                    postgresql_where=sa.text(_LOCKED))


def downgrade() -> None:
    op.drop_index(op.f(_NEW), table_name="cards")
    op.create_index(op.f(_OLD), "cards", ["lock_terminal_id", "card_number"], unique=False,
                    sqlite_where=sa.text(_LOCKED), postgresql_where=sa.text(_LOCKED))
