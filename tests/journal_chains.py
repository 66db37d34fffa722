"""Each card's history as the back office pages it: the chain from the card's last journal
entry (cards.last_entry_id) back over journal.previous_entry_id. Read from a SQLite file by
the tests of the writers that chain entries themselves and by scripts/fault_harness.py."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def _connect(database: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True)


def card_entries(database: Path) -> dict[str, list[int]]:
    """Each card's journal entries, by id."""
    with closing(_connect(database)) as db:
        found: dict[str, list[int]] = {}
        for card, entry_id in db.execute(
                "SELECT card_number, entry_id FROM journal ORDER BY entry_id"):
            found.setdefault(card, []).append(entry_id)
        return found


def broken_histories(database: Path) -> dict[str, str]:
    """Cards whose chain is not exactly their journal entries with ids rising along it, each
    entry's balance after it the one before plus its amount, the last the card's balance;
    with what is wrong. Empty when every history is whole."""
    broken = {}
    with closing(_connect(database)) as db:
        for card, last, balance in db.execute(
                "SELECT card_number, last_entry_id, balance_minor FROM cards"):
            entries = {row[0]: row[1:] for row in db.execute(
                "SELECT entry_id, previous_entry_id, amount_minor, balance_after_minor"
                " FROM journal WHERE card_number = ?", (card,))}
            chain: list[int] = []
            at = last
            while at is not None and at in entries and len(chain) <= len(entries):
                chain.append(at)
                at = entries[at][0]
            chain.reverse()
            running = 0
            for entry_id in chain:
                running += entries[entry_id][1]
                if entries[entry_id][2] != running:
                    broken[card] = (f"entry {entry_id}: balance after {entries[entry_id][2]}, "
                                    f"entries add up to {running}")
                    break
            if card in broken:
                continue
            if at is not None or chain != sorted(entries):
                broken[card] = f"chain {chain} against entries {sorted(entries)}"
            elif running != balance:
                broken[card] = f"entries add up to {running}, balance {balance}"
    return broken
