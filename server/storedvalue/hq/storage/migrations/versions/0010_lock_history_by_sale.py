"""The lock history keyed by sale, in one B-tree.

Revision ID: 0010_lock_history_by_sale
Revises: 0009_journal_chain_when
Create Date: 2026-12-05

lock_history was keyed (card_number, fencing_token), with an index on (terminal_id,
transaction_id) for the sync's look-ups: each LockCard inserted into both B-trees, at
random pages of each (card numbers are random), ~2.5 + 2.3 WAL pages a commit of four
online calls. Every reader looks the locks up by sale, and so does a release by the lock's
holder once it names the sale: one B-tree keyed (terminal_id, transaction_id, card_number,
fencing_token) serves them all, and on SQLite it is the table itself (WITHOUT ROWID), not a
rowid table beside an index. The database stops checking that a card's fencing token is
recorded once; tokens come from cards.last_fencing_token, bumped under the card row's
write, so none is handed out twice (see tables.py).

SQLite cannot change a table's key: the table is built again WITHOUT ROWID and its rows
copied (all of them, released or not). PostgreSQL swaps the primary key and drops the index.
The downgrade does the reverse; it fails (and changes nothing) if the history meanwhile
holds one card's token twice, which no HQ writes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_lock_history_by_sale"
down_revision = "0009_journal_chain_when"
branch_labels = None
depends_on = None

_PK = "pk_lock_history"
_INDEX = "ix_lock_history_terminal_id_transaction_id"
_BY_SALE = ["terminal_id", "transaction_id", "card_number", "fencing_token"]
_BY_CARD = ["card_number", "fencing_token"]
_COLUMNS = ["card_number", "fencing_token", "terminal_id", "transaction_id", "acquired_at",
            "released_by_holder_at"]
_REBUILT = "lock_history_rebuilt"


def _rebuild_on_sqlite(key: list[str], *, with_rowid: bool) -> None:
    """Copy the table into one keyed by `key`, which then takes its name (the old table's
    index goes with it)."""
    op.create_table(
        _REBUILT,
        sa.Column("card_number", sa.String(length=19), nullable=False),
        sa.Column("fencing_token", sa.BigInteger(), nullable=False),
        sa.Column("terminal_id", sa.String(length=200), nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("acquired_at", sa.BigInteger(), nullable=False),
        sa.Column("released_by_holder_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint(*key, name=_PK),
        sqlite_with_rowid=with_rowid,
    )
    # In the new key's order: each page is filled once.
    rows = sa.table("lock_history", *(sa.column(name) for name in _COLUMNS))
    copy = sa.table(_REBUILT, *(sa.column(name) for name in _COLUMNS))
    op.execute(copy.insert().from_select(
        _COLUMNS, sa.select(*rows.c).order_by(*(rows.c[name] for name in key))))
    op.drop_table("lock_history")
    op.rename_table(_REBUILT, "lock_history")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite(_BY_SALE, with_rowid=False)
        return
    op.drop_index(_INDEX, table_name="lock_history")
    op.drop_constraint(_PK, "lock_history", type_="primary")
    op.create_primary_key(_PK, "lock_history", _BY_SALE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_on_sqlite(_BY_CARD, with_rowid=True)
    else:
        op.drop_constraint(_PK, "lock_history", type_="primary")
        op.create_primary_key(_PK, "lock_history", _BY_CARD)
    op.create_index(_INDEX, "lock_history", ["terminal_id", "transaction_id"], unique=False)
