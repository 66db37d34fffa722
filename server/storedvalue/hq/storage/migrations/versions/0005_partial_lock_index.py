"""The cards' lock index holds only the cards that are locked.

Revision ID: 0005_partial_lock_index
Revises: 0004_issue11
Create Date: 2026-12-02

`ix_cards_lock_terminal_id_card_number` had an entry for every card, the free ones under
NULL, so locking a card moved its entry from the NULL range to the terminal's and releasing
it moved it back: two index pages written each time, at random places in an index as big as
the card table. Only the back office's lock lists read the index, and they ask for locked
cards only, so it now keeps only those (a partial index, on SQLite and PostgreSQL): a lock
adds an entry, a release removes it, and the index stays as small as the number of locks.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_partial_lock_index"
down_revision = "0004_issue11"
branch_labels = None
depends_on = None

_INDEX = "ix_cards_lock_terminal_id_card_number"
_LOCKED = "lock_terminal_id IS NOT NULL"


def upgrade() -> None:
    op.drop_index(op.f(_INDEX), table_name="cards")
    op.create_index(op.f(_INDEX), "cards", ["lock_terminal_id", "card_number"], unique=False,
                    sqlite_where=sa.text(_LOCKED), postgresql_where=sa.text(_LOCKED))


def downgrade() -> None:
    op.drop_index(op.f(_INDEX), table_name="cards")
    op.create_index(op.f(_INDEX), "cards", ["lock_terminal_id", "card_number"], unique=False)
