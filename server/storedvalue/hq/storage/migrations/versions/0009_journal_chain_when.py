"""PostgreSQL: the journal's chain trigger skips an entry written with its previous one.

Revision ID: 0009_journal_chain_when
Revises: 0008_journal_chain
Create Date: 2026-12-05

A common offline batch on PostgreSQL now chains its own entries, as SQLite's has since 0008
(storage.card_repositories, `SqlJournalRepository._append_numbered`): each entry is bound
with its id (drawn from the journal's sequence with the cards locked) and its card's last
entry, and each card's new last entry is written in the UPDATE of its balance. The trigger
did the same row by row, a function call, a locking read and a second rewrite of the card's
row an entry. Now, as on SQLite, it runs only for an entry written without its previous one
(`WHEN`: the function is not even called). An entry with NULL there (every other writer's,
and a card's first) is chained by the trigger as before. SQLite: nothing to change.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_journal_chain_when"
down_revision = "0008_journal_chain"
branch_labels = None
depends_on = None

_CREATE = ("CREATE TRIGGER journal_chain BEFORE INSERT ON journal FOR EACH ROW {when}"
           "EXECUTE FUNCTION journal_chain()")


def _recreate(when: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(sa.text("DROP TRIGGER journal_chain ON journal"))
    op.execute(sa.text(_CREATE.format(when=when)))


def upgrade() -> None:
    _recreate("WHEN (NEW.previous_entry_id IS NULL) ")


def downgrade() -> None:
    _recreate("")
