"""A card's journal entries chained from the card, instead of indexed by (card, entry).

Revision ID: 0008_journal_chain
Revises: 0007_local_lock_index
Create Date: 2026-12-04

The journal's (card_number, entry_id) index served one read, a card's history page, and
cost every entry written an insert at a random page of it (cards are used at random): in a
sync of 20,000 sales, ~0.35 WAL pages a sale (dbstat), and the bench's writer ~13 us a
transaction less without it. Each entry now names the card's previous entry
(`journal.previous_entry_id`, NULL for its first) and the card its last
(`cards.last_entry_id`): the history walks back from the card over the journal's primary
key. Both are kept by a trigger on the journal (every writer keeps the chain, whatever its
INSERT), which reads and updates the card's row: a row the writer has locked and written in
the same transaction already (its balance, its lock), so no page is written that was not.
On SQLite an entry written with its previous one (a common batch's, which chains itself:
card_repositories.JournaledDebits) skips the trigger; the writer sets the card's last.

On PostgreSQL the trigger locks the card's row (FOR UPDATE) before reading its last entry:
two HQ processes appending to one card take turns, and the chain cannot fork. An entry
numbered (by the sequence, before the trigger) below the card's last entry, which only a
writer that had not locked the card first could cause, is numbered again once the lock is
held: ids along a chain always increase, which the history's `after` cursor relies on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_journal_chain"
down_revision = "0007_local_lock_index"
branch_labels = None
depends_on = None

_INDEX = "ix_journal_card_number_entry_id"

_SQLITE_TRIGGER = """
CREATE TRIGGER journal_chain AFTER INSERT ON journal FOR EACH ROW
WHEN NEW.previous_entry_id IS NULL BEGIN
    UPDATE journal SET previous_entry_id = (
        SELECT last_entry_id FROM cards WHERE card_number = NEW.card_number)
    WHERE entry_id = NEW.entry_id;
    UPDATE cards SET last_entry_id = NEW.entry_id WHERE card_number = NEW.card_number;
END
"""

_POSTGRESQL_FUNCTION = """
CREATE FUNCTION journal_chain() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT last_entry_id INTO NEW.previous_entry_id FROM cards
    WHERE card_number = NEW.card_number FOR UPDATE;
    IF NEW.previous_entry_id >= NEW.entry_id THEN
        NEW.entry_id := nextval(pg_get_serial_sequence('journal', 'entry_id'));
    END IF;
    UPDATE cards SET last_entry_id = NEW.entry_id WHERE card_number = NEW.card_number;
    RETURN NEW;
END
$$
"""
_POSTGRESQL_TRIGGER = (
    "CREATE TRIGGER journal_chain BEFORE INSERT ON journal "
    "FOR EACH ROW EXECUTE FUNCTION journal_chain()"
)


def upgrade() -> None:
    op.add_column("journal", sa.Column("previous_entry_id", sa.BigInteger(), nullable=True))
    op.add_column("cards", sa.Column("last_entry_id", sa.BigInteger(), nullable=True))
    # Backfilled while the index still serves the per-card reads.
    op.execute(sa.text(
        "UPDATE cards SET last_entry_id = (SELECT max(entry_id) FROM journal "
        "WHERE journal.card_number = cards.card_number)"))
    op.execute(sa.text(
        "UPDATE journal SET previous_entry_id = chained.previous FROM ("
        "SELECT entry_id AS entry, lag(entry_id) OVER "
        "(PARTITION BY card_number ORDER BY entry_id) AS previous FROM journal) AS chained "
        "WHERE chained.entry = journal.entry_id AND chained.previous IS NOT NULL"))
    op.drop_index(op.f(_INDEX), table_name="journal")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text(_POSTGRESQL_FUNCTION))
        op.execute(sa.text(_POSTGRESQL_TRIGGER))
    else:
        op.execute(sa.text(_SQLITE_TRIGGER))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text("DROP TRIGGER journal_chain ON journal"))
        op.execute(sa.text("DROP FUNCTION journal_chain()"))
    else:
        op.execute(sa.text("DROP TRIGGER journal_chain"))
    op.create_index(op.f(_INDEX), "journal", ["card_number", "entry_id"], unique=False)
    # ALTER TABLE ... DROP COLUMN: PostgreSQL, and SQLite since 3.35 (no table rebuilt).
    op.execute(sa.text("ALTER TABLE cards DROP COLUMN last_entry_id"))
    op.execute(sa.text("ALTER TABLE journal DROP COLUMN previous_entry_id"))
