"""Cards (with their locks), the lock history, the journal and applied redemptions, in bulk
statements: the offline sync applies tens of thousands of transactions a second through
these."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from functools import partial
from operator import itemgetter, neg
from typing import Any

import msgspec
from sqlalchemy import (
    and_,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    null,
    select,
    update,
)

from storedvalue.hq.domain.cards import Card, CardKind, Lock
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.offline import Redemption
from storedvalue.hq.domain.offline_common import (
    BalanceChange,
    CardBalance,
    CommonDebits,
    SaleLock,
    first_column,
    new_tuple,
)
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.services.unit_of_work import SeenCards
from storedvalue.hq.storage import rows
from storedvalue.hq.storage.statements import Statement, in_chunks
from storedvalue.hq.storage.tables import cards, journal, lock_history, redemptions
from storedvalue.hq.storage.transaction import Transaction

# A card's columns as rows.card_from_row reads them (not cards.last_entry_id: the journal's
# to keep, by its trigger, or by the writers that chain their entries themselves:
# JournaledDebits, OnlineChain).
_CARD_COLUMNS = tuple(cards.c[name] for name in rows.CARD_COLUMNS)
_CARD_SELECT = select(*_CARD_COLUMNS).where(cards.c.card_number == bindparam("card_number"))
_CARD = Statement(_CARD_SELECT)
_CARD_FOR_UPDATE = Statement(_CARD_SELECT.with_for_update())
# ORDER BY under FOR UPDATE: PostgreSQL locks the rows in that order, so two batches
# touching the same cards cannot deadlock.
_CARDS_FOR_UPDATE = Statement(
    select(*_CARD_COLUMNS)
    .where(cards.c.card_number.in_(bindparam("numbers", expanding=True)))
    .order_by(cards.c.card_number)
    .with_for_update(),
    in_list="numbers",
)
# An online Redeem's card (locked, on PostgreSQL) and whether its line is stored already, in
# one read: the line's recorded_at, NULL when there is none (every stored line has one). The
# line itself is read only then (a retry, or a line a sync applied): each column fetched
# costs the sqlite3 driver about 2,000 instructions, and nearly every Redeem is new.
_CARD_WITH_LINE_FOR_UPDATE = Statement(
    select(*_CARD_COLUMNS, redemptions.c.recorded_at.label("line_recorded_at"))
    .select_from(cards.outerjoin(redemptions, and_(
        redemptions.c.terminal_id == bindparam("terminal_id"),
        redemptions.c.transaction_id == bindparam("transaction_id"),
        redemptions.c.line_id == bindparam("line_id"),
    )))
    .where(cards.c.card_number == bindparam("card_number"))
    .with_for_update(of=cards)
)
# SQLite: the same two reads, the row as ONE column, a JSON array of its values (decoded
# into a list, which rows.card_from_row reads by position as a row). The sqlite3 driver
# costs about 500 instructions a column fetched (it lets go of the GIL for each) and as
# much again describing it (cursor.description, built on every execute): a card read as
# one column costs ~6,700 instructions less, json_array and the decoding included.
_CARD_ARRAY_FOR_UPDATE = Statement(
    select(func.json_array(*_CARD_COLUMNS)).where(cards.c.card_number == bindparam("card_number"))
)
# And the card's last journal entry, which the Redeem's entry chains to (OnlineChain).
def _card_array_with_line(*columns: Any, read_unheld: frozenset[str] = frozenset()
                          ) -> Statement:
    return Statement(
        select(func.json_array(*_CARD_COLUMNS, *columns, cards.c.last_entry_id,
                               redemptions.c.recorded_at))
        .select_from(cards.outerjoin(redemptions, and_(
            redemptions.c.terminal_id == bindparam("terminal_id"),
            redemptions.c.transaction_id == bindparam("transaction_id"),
            redemptions.c.line_id == bindparam("line_id"),
        )))
        .where(cards.c.card_number == bindparam("card_number")),
        read_unheld=read_unheld,
    )


_CARD_ARRAY_WITH_LINE_FOR_UPDATE = _card_array_with_line()
# ... and, before it, the journal's largest id, for the transaction's first Redeem (OnlineChain
# numbers its entries from it): in the same statement, not one of its own (~9K instructions
# a transaction: one Redeem a transaction at concurrency 1). Read only when the transaction
# holds back no journal entry (OnlineChain.wants_last_id), so nothing held back need be sent
# first for it to count (`read_unheld`).
_CARD_ARRAY_WITH_LINE_AND_LAST_ID_FOR_UPDATE = _card_array_with_line(
    select(func.coalesce(func.max(journal.c.entry_id), literal_column("0"))).scalar_subquery(),
    read_unheld=frozenset({journal.name}))
_decode_array = msgspec.json.Decoder(list[Any]).decode
# rows.card_from_row reads a card's columns by position.
if tuple(cards.c.keys())[:len(rows.CARD_COLUMNS)] != rows.CARD_COLUMNS:
    raise RuntimeError("rows.CARD_COLUMNS no longer lists the cards table's columns in order")
_INSERT_CARDS = Statement(insert(cards))
# A CardBalance's columns in order, read for one terminal: a gift card's balance (-1 for
# another kind) and its lock's sale when that terminal holds it. Four columns and the card
# number, not seven: the sqlite3 driver costs about 1,000 instructions a column of a row,
# holding the GIL.
_BALANCE_COLUMNS = (
    cards.c.currency,
    case((cards.c.kind == literal_column(f"'{CardKind.GIFT_CARD.value}'"),
          cards.c.balance_minor), else_=literal_column("-1")).label("balance_minor"),
    case((cards.c.lock_terminal_id == bindparam("terminal_id"),
          cards.c.lock_transaction_id)).label("lock_transaction_id"),
    cards.c.lock_fencing_token,
)
# (And, last, the card's last journal entry: PostgreSQL's common batch chains its entries
# to it, as SQLite's does from _BALANCES_BY_POSITION.)
_BALANCES_FOR_UPDATE = Statement(
    select(cards.c.card_number, *_BALANCE_COLUMNS, cards.c.last_entry_id)
    .where(cards.c.card_number.in_(bindparam("numbers", expanding=True)))
    .order_by(cards.c.card_number)
    .with_for_update(),
    in_list="numbers",
)
# SQLite: without the card number. The rows come in the order of the numbers asked for,
# sorted (SQLite's BINARY collation orders text as its UTF-8 bytes, which is the order of
# Python's str): when every card is found, row i is that of the i-th number. PostgreSQL
# orders by its database's collation, which may differ: it reads the numbers. And the
# card's last journal entry, which the batch's entries then chain to (JournaledDebits).
_BALANCES_BY_POSITION = Statement(
    select(*_BALANCE_COLUMNS, cards.c.last_entry_id)
    .where(cards.c.card_number.in_(bindparam("numbers", expanding=True)))
    .order_by(cards.c.card_number),
    in_list="numbers",
)
_numbered_balance, _numbered_last_entry = itemgetter(slice(1, 5)), itemgetter(5)
_balance_part, _last_entry_of = itemgetter(slice(0, 4)), itemgetter(4)
# A BalanceChange's release flag, and its (balance, number) as set_balances binds them.
_release_of, _balance_and_number = itemgetter(2), itemgetter(1, 0)
_card_balance = partial(new_tuple, CardBalance)
# set_balances: the balance, and with the lock released, the lock's columns cleared.
_BALANCE_KEYS = ("balance_minor", "key_card_number")
# ... and the card's last journal entry, that of the batch (JournaledDebits).
_CHAINED_BALANCE_KEYS = ("balance_minor", "last_entry_id", "key_card_number")


def _list_locks(by_terminal: bool, include_expired: bool) -> Statement:
    query = select(*_CARD_COLUMNS).where(
        cards.c.lock_terminal_id.is_not(None), cards.c.card_number > bindparam("after")
    )
    if by_terminal:
        query = query.where(cards.c.lock_terminal_id == bindparam("terminal_id"))
    if not include_expired:
        query = query.where(cards.c.lock_lease_expires_at > bindparam("now"))
    return Statement(query.order_by(cards.c.card_number).limit(bindparam("limit")))


# By (filtering by terminal, including expired leases).
_LIST_LOCKS = {
    (by_terminal, expired): _list_locks(by_terminal, expired)
    for by_terminal in (False, True)
    for expired in (False, True)
}
_SAVE_CARDS = Statement(
    update(cards).where(cards.c.card_number == bindparam("key_card_number"))
)
_SAVE_KEYS = (*rows.CARD_STATE_KEYS, "key_card_number")
_SAVE_RELEASING = Statement(
    update(cards).where(cards.c.card_number == bindparam("key_card_number")),
    constants={"lock_terminal_id": None, "lock_transaction_id": None,
               "lock_fencing_token": None, "lock_lease_expires_at": None,
               "lock_acquired_at": None},
)

# save() of a card without a lock: its state but the lock, whose columns are cleared.
_SAVE_UNLOCKED_KEYS = ("status", "balance_minor", "last_fencing_token", "key_card_number")
# ... and, a Redeem's entry chained by itself (OnlineChain), the card's new last entry.
_SAVE_UNLOCKED_CHAINED_KEYS = ("status", "balance_minor", "last_fencing_token",
                               "last_entry_id", "key_card_number")

_INSERT_GRANTS = Statement(insert(lock_history))
# A lock just handed out (not released yet), as LockCard records it.
_INSERT_NEW_GRANT = Statement(insert(lock_history), constants={"released_by_holder_at": None})
_NEW_GRANT_KEYS = rows.LOCK_GRANT_KEYS[:-1]
# By the table's key (tables.py: by sale).
_RELEASE_GRANTS = Statement(
    update(lock_history).where(
        lock_history.c.terminal_id == bindparam("key_terminal_id"),
        lock_history.c.transaction_id == bindparam("key_transaction_id"),
        lock_history.c.card_number == bindparam("key_card_number"),
        lock_history.c.fencing_token == bindparam("key_fencing_token"),
    )
)
_GRANTS_FOR_SALES = Statement(
    select(lock_history).where(
        lock_history.c.terminal_id == bindparam("terminal_id"),
        lock_history.c.transaction_id.in_(bindparam("transaction_ids", expanding=True)),
    ),
    in_list="transaction_ids",
)
_SALE_LOCKS = Statement(
    select(lock_history.c.transaction_id, lock_history.c.card_number,
           lock_history.c.fencing_token,
           lock_history.c.released_by_holder_at.is_not(None).label("released")).where(
        lock_history.c.terminal_id == bindparam("terminal_id"),
        lock_history.c.transaction_id.in_(bindparam("transaction_ids", expanding=True)),
    ),
    in_list="transaction_ids",
)

_INSERT_ENTRIES = Statement(insert(journal))
# Entries all of online calls: `offline` written into the SQL (a bool bound costs the
# sqlite3 driver an adapter call).
_INSERT_ONLINE_ENTRIES = Statement(insert(journal), constants={"offline": False})
_ONLINE_ENTRY_KEYS = tuple(key for key in rows.JOURNAL_KEYS if key != "offline")
# SQLite, while the transaction numbers its online entries (OnlineChain): each bound with
# its id, and its previous entry when it chains itself (NULL: the trigger chains it). In
# the table's column order, which the INSERT binds in (so that Transaction.append holds it).
_NUMBERED_ONLINE_ENTRY_KEYS = ("entry_id", *_ONLINE_ENTRY_KEYS, "previous_entry_id")
# append_offline_debits: an offline REDEEM without a note.
_INSERT_DEBIT_ENTRIES = Statement(
    insert(journal),
    constants={"kind": JournalEntryKind.REDEEM.value, "offline": True, "note": ""})
# (terminal_id and recorded_at are the same in every row: bound once.)
_DEBIT_ENTRY_KEYS = ("card_number", "amount_minor", "currency", "balance_after_minor",
                     "transaction_id", "line_id", "occurred_at")
_DEBIT_ENTRY_KEYS_ONE_CURRENCY = tuple(key for key in _DEBIT_ENTRY_KEYS if key != "currency")
# SQLite, a batch chained by itself (see JournaledDebits): each entry's previous one bound.
_CHAINED_ENTRY_KEYS = (*_DEBIT_ENTRY_KEYS, "previous_entry_id")
_CHAINED_ENTRY_KEYS_ONE_CURRENCY = (*_DEBIT_ENTRY_KEYS_ONE_CURRENCY, "previous_entry_id")
# ... and each card's new last entry.
_SET_LAST_ENTRIES = Statement(
    update(cards).where(cards.c.card_number == bindparam("key_card_number")))
_LAST_ENTRY_KEYS = ("last_entry_id", "key_card_number")
# SQLite: the journal's last entry id before a common batch's entries (the next ones are
# numbered after the largest: an INTEGER PRIMARY KEY without AUTOINCREMENT).
_LAST_ENTRY = Statement(select(func.coalesce(func.max(journal.c.entry_id), 0).label("last")))
# PostgreSQL: ids for a common batch's entries, drawn from the journal's sequence (with the
# batch's cards locked: above every entry of theirs, so ids still increase along a chain).
_NEW_ENTRY_IDS = Statement(
    select(func.nextval(func.pg_get_serial_sequence("journal", "entry_id")))
    .select_from(func.generate_series(1, bindparam("count")))
)
# ... bound with each entry, and its previous one (the trigger skips an entry that has one:
# migration 0009).
_NUMBERED_ENTRY_KEYS = (*_CHAINED_ENTRY_KEYS, "entry_id")
_NUMBERED_ENTRY_KEYS_ONE_CURRENCY = (*_CHAINED_ENTRY_KEYS_ONE_CURRENCY, "entry_id")
# A card's entries above `after`, oldest first: the chain walked back from the card's last
# entry over the journal's primary key, while the ids stay above `after` (ids increase
# along a chain: see tables.journal), then sorted. The cost is one primary-key lookup per
# entry of the card above the cursor, not per entry returned: a page of a card with
# thousands of entries after the cursor reads them all (milliseconds). The back office's
# history of a card pays that so that no entry written pays an index insert at a random
# page (migration 0008).
_chain = (
    select(cards.c.last_entry_id.label("entry_id"))
    .where(cards.c.card_number == bindparam("card_number"),
           cards.c.last_entry_id > bindparam("after"))
    .cte("chain", recursive=True)
)
_previous = journal.alias("previous")
_chain = _chain.union_all(
    select(_previous.c.previous_entry_id)
    .where(_previous.c.entry_id == _chain.c.entry_id,
           _previous.c.previous_entry_id > bindparam("after"))
)
_JOURNAL_PAGE = Statement(
    select(journal)
    .join(_chain, journal.c.entry_id == _chain.c.entry_id)
    .order_by(journal.c.entry_id)
    .limit(bindparam("limit"))
)

_REDEMPTIONS = Statement(
    select(redemptions).where(
        redemptions.c.terminal_id == bindparam("terminal_id"),
        redemptions.c.transaction_id.in_(bindparam("transaction_ids", expanding=True)),
    ),
    in_list="transaction_ids",
)
_REDEMPTION = Statement(
    select(redemptions).where(
        redemptions.c.terminal_id == bindparam("terminal_id"),
        redemptions.c.transaction_id == bindparam("transaction_id"),
        redemptions.c.line_id == bindparam("line_id"),
    )
)
_INSERT_REDEMPTIONS = Statement(insert(redemptions))
# An online Redeem's line: applied online, not reversed (fixed values written into the SQL).
_INSERT_ONLINE_REDEMPTION = Statement(
    insert(redemptions),
    constants={"offline": False, "reversal": None, "reversed_at": None})
_ONLINE_REDEMPTION_KEYS = ("terminal_id", "transaction_id", "line_id", "card_number",
                           "amount_minor", "currency", "remainder_card_number", "recorded_at")
# add_offline_debits: an offline debit without remainder, not reversed.
_INSERT_DEBIT_REDEMPTIONS = Statement(
    insert(redemptions),
    constants={"remainder_card_number": "", "offline": True, "reversal": None,
               "reversed_at": None})
# (terminal_id and recorded_at are the same in every row: bound once.)
_DEBIT_REDEMPTION_KEYS = ("transaction_id", "line_id", "card_number", "amount_minor",
                          "currency")
_DEBIT_REDEMPTION_KEYS_ONE_CURRENCY = _DEBIT_REDEMPTION_KEYS[:-1]
# SQLite: the same rows, selected from their journal entries, just written (every value is
# in them: the amount is the entry's negated), in the journal's order: no bind a row (a
# batch's redemptions cost the writer ~3,500 instructions a transaction less; sorting them
# into the primary key's order first cost SQLite more than it saved the inserts).
_DEBIT_REDEMPTIONS_FROM_JOURNAL = Statement(insert(redemptions).from_select(
    ["terminal_id", "transaction_id", "line_id", "card_number", "amount_minor", "currency",
     "remainder_card_number", "offline", "recorded_at", "reversal", "reversed_at"],
    select(journal.c.terminal_id, journal.c.transaction_id, journal.c.line_id,
           journal.c.card_number, -journal.c.amount_minor, journal.c.currency,
           literal_column("''"), journal.c.offline, journal.c.recorded_at, null(), null())
    .where(journal.c.entry_id > bindparam("after"))))


def _one_currency(currencies: list[str]) -> str | None:
    """The currency of every one of a batch's debits when they have one, else None."""
    first = currencies[0] if currencies else None
    return first if first is not None and currencies.count(first) == len(currencies) else None
_MARK_REVERSED = Statement(
    update(redemptions).where(
        redemptions.c.terminal_id == bindparam("key_terminal_id"),
        redemptions.c.transaction_id == bindparam("key_transaction_id"),
        redemptions.c.line_id == bindparam("key_line_id"),
    )
)


class OnlineChain:
    """SQLite: an online Redeem's journal entry chained by the Redeem itself, as a common
    offline batch's are (JournaledDebits), rather than by the journal's trigger (two more
    statements an entry: in `bench/hq_online_cpu.py` under callgrind, SQLite's own work
    ~12K instructions a call less at concurrency 16, the whole process ~7K): the entry is
    bound with its card's last entry (read by the Redeem's card SELECT) as its previous one,
    so the trigger skips it, and the card's new last entry is written in the UPDATE of its
    balance (save).

    That UPDATE runs before the entry is written (an append, held back till the group's end:
    Transaction.append), so the entry's id is given, not left to SQLite: the transaction
    numbers its online entries itself, after the journal's largest id, read once a
    transaction (`Transaction.begun`: another HQ process may have written since the last),
    by its first Redeem's card SELECT. While it does, every online entry appended gets its
    id so (a card's first one, or another call's, chained by the trigger then), in one
    statement held back in order; an entry written any other way (several at once, an
    offline batch's) stops it, to be read again. An id given wrongly could only make the
    INSERT fail (the primary key), not fork a chain: the group then runs again, its appends
    written at once.

    A card whose entry the trigger is to chain, held back in this transaction, has a last
    entry in its row that is not the last any more: a Redeem of it in the same transaction
    leaves its entry to the trigger too (which runs at the INSERT, in order)."""

    __slots__ = ("_begun", "_next", "_tx", "_unchained", "_unchained_begun", "chained",
                 "chained_id", "chained_previous", "read_card", "read_last", "read_last_id")

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self._begun = -1  # the transaction `_next` is valid in (Transaction.begun)
        self._next = 0
        # Cards with an entry the trigger chains held back, in transaction _unchained_begun.
        self._unchained: set[str] = set()
        self._unchained_begun = -1
        self.read_card: Card | None = None
        """The card the last Redeem read (for update), and its last entry (`read_last`)."""
        self.read_last: int | None = None
        self.read_last_id: int | None = None
        """The journal's largest id, when that read read it (`wants_last_id`)."""
        self.chained: JournalEntry | None = None
        """The entry `chain` numbered (for `append`): its id and its previous entry."""
        self.chained_id = 0
        self.chained_previous = 0

    def chain(self, card: Card) -> int | None:
        """The id of the one entry `card`, the card the last Redeem read, recorded, chained
        to its last entry, when it can chain itself; else None (the trigger will chain
        it)."""
        self.read_card = None
        last = self.read_last
        entries = card.pending_entries
        if last is None or len(entries) != 1:  # (a card's first entry: the trigger's)
            return None
        begun = self._tx.begun
        if self._unchained and card.card_number in self._unchained and (
                self._unchained_begun == begun):
            return None
        if self._begun != begun:
            top = self.read_last_id
            if top is None:  # (what is held back is sent first, and counted)
                top = self._tx.fetch_tuples(_LAST_ENTRY, {})[0][0]
            self._next = top + 1
            self._begun = begun
        entry_id = self._next
        self._next = entry_id + 1
        self.chained = entries[0]
        self.chained_id = entry_id
        self.chained_previous = last
        return entry_id

    def wants_last_id(self) -> bool:
        """Whether the Redeem's card read should read the journal's largest id too: the
        transaction does not number its entries yet, and holds none back."""
        begun = self._tx.begun
        return self._begun != begun and not (self._unchained and self._unchained_begun == begun)

    def number(self, card_number: str) -> int | None:
        """The id of an online entry of `card_number` that the trigger is to chain, while
        the transaction numbers them (else None: SQLite does)."""
        tx = self._tx
        if tx.hold_appends:
            if self._unchained_begun != tx.begun:
                self._unchained.clear()
                self._unchained_begun = tx.begun
            self._unchained.add(card_number)
        if self._begun != tx.begun:
            return None
        entry_id = self._next
        self._next = entry_id + 1
        return entry_id

    def stop(self) -> None:
        """Entries were written numbered by SQLite: the next id is to be read again."""
        self._begun = -1


class JournaledDebits:
    """SQLite: the common batch whose debits `SqlJournalRepository.append_offline_debits`
    has just written in the journal, and where: `SqlRedemptionRepository.add_offline_debits`
    then selects their redemptions from those entries, in the same transaction, rather than
    binding the same values again (each text value bound costs the sqlite3 driver ~800
    instructions, holding the GIL). Shared by a unit's repositories.

    And the last journal entry of each card `SqlCardRepository.balances_for_update` read
    (`last_entries`), so that the batch's entries chain themselves: each entry bound with
    its previous one, and each card's new last entry (`new_last_entries`) written by
    `SqlCardRepository.set_balances`, in the UPDATE of its balance, rather than the
    journal's trigger doing both row by row (two statements, three B-tree lookups and two
    row rewrites an entry: ~17K instructions a synced sale in `bench/hq_sync_cpu.py`; in
    an UPDATE of their own, ~13K). Any other journal entry appended meanwhile forgets
    `last_entries` (they would no longer be last); new last entries that no set_balances
    took are written as the unit ends (`write_new_last_entries`)."""

    __slots__ = ("_after", "_debits", "_recorded_at", "_terminal_id", "_tx", "last_entries",
                 "new_last_entries", "online")

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx
        self.online = OnlineChain(tx)
        """SQLite: online Redeems' entries, chained by themselves (see OnlineChain)."""
        self._debits: CommonDebits | None = None
        self._terminal_id = ""
        self._recorded_at = 0
        self._after = 0
        self.last_entries: dict[str, int | None] | None = None
        self.new_last_entries: dict[str, int] | None = None

    def write_new_last_entries(self) -> None:
        """Write the cards' new last entries no set_balances took (the unit ends)."""
        new, self.new_last_entries = self.new_last_entries, None
        if new:
            self._tx.write_rows(_SET_LAST_ENTRIES, _LAST_ENTRY_KEYS,
                          [(entry_id, number) for number, entry_id in new.items()])

    def note(self, debits: CommonDebits, terminal_id: str, recorded_at: int,
             after: int) -> None:
        """`debits` are being written as the journal's entries above id `after`."""
        self._debits, self._terminal_id = debits, terminal_id
        self._recorded_at, self._after = recorded_at, after

    def take(self, debits: CommonDebits, terminal_id: str, recorded_at: int) -> int | None:
        """The id above which `debits`' entries (of `terminal_id`, recorded at
        `recorded_at`) are, if they are the batch noted last (forgotten then); else None."""
        if (self._debits is not debits or self._terminal_id != terminal_id
                or self._recorded_at != recorded_at):
            return None
        self._debits = None
        return self._after


class SqlCardRepository:
    def __init__(self, tx: Transaction, seen: SeenCards,
                 journaled: JournaledDebits | None = None) -> None:
        self._tx = tx
        self._seen = seen
        self._journaled = journaled
        # A card's row read as a JSON array: SQLite with its JSON functions built in (3.38+).
        self._arrays = tx.dialect.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 38)
        # (And then a Redeem's entry chained by itself.)
        self._online = journaled.online if journaled is not None and self._arrays else None

    def get(self, card_number: str) -> Card | None:
        found = self._tx.fetch_tuples(_CARD, {"card_number": card_number})
        return rows.card_from_row(found[0]) if found else None

    def get_for_update(self, card_number: str) -> Card | None:
        if self._arrays:
            found = self._tx.fetch_tuples(_CARD_ARRAY_FOR_UPDATE, {"card_number": card_number})
            if not found:
                return None
            card = rows.card_from_row(_decode_array(found[0][0]))
            self._seen.add(card)
            return card
        found = self._tx.fetch_tuples(_CARD_FOR_UPDATE, {"card_number": card_number})
        if not found:
            return None
        card = rows.card_from_row(found[0])
        self._seen.add(card)
        return card

    def get_for_update_with_line(
        self, card_number: str, line: tuple[str, str, str]
    ) -> tuple[Card | None, Redemption | None]:
        terminal_id, transaction_id, line_id = line
        params = {"card_number": card_number, "terminal_id": terminal_id,
                  "transaction_id": transaction_id, "line_id": line_id}
        online = self._online
        if self._arrays:
            last_id = online is not None and online.wants_last_id()
            found = self._tx.fetch_tuples(_CARD_ARRAY_WITH_LINE_AND_LAST_ID_FOR_UPDATE if last_id
                                          else _CARD_ARRAY_WITH_LINE_FOR_UPDATE, params)
            if not found:
                return None, None
            row: Sequence[Any] = _decode_array(found[0][0])
            if online is not None:
                online.read_last_id = row[-3] if last_id else None
        else:
            found = self._tx.fetch_tuples(_CARD_WITH_LINE_FOR_UPDATE, params)
            if not found:
                return None, None
            row = found[0]
            if row[-1] is None and not self._tx.is_sqlite:
                card = rows.card_from_row(row)
                self._seen.add(card)
                lock = card.lock
                if lock is not None and lock.is_held_by(terminal_id, transaction_id):
                    return card, None
                # PostgreSQL, the card's lock gone (or another sale's): perhaps released by
                # a Redeem or sync of this very line that committed while this statement
                # waited for the card's row lock. READ COMMITTED then rechecks the locked
                # row at its latest version but keeps the outer-joined line as the
                # statement's snapshot had it (none): the line is read again in a statement
                # of its own (a new snapshot), taken after the row lock.
                stored = self._tx.fetch_first(_REDEMPTION, {
                    "terminal_id": terminal_id, "transaction_id": transaction_id,
                    "line_id": line_id})
                return card, None if stored is None else rows.redemption_from_row(stored)
        card = rows.card_from_row(row)
        self._seen.add(card)
        if online is not None:  # (a row read as an array: the card's last entry is in it)
            online.read_card, online.read_last = card, row[-2]
        if row[-1] is None:  # line_recorded_at: no such line
            return card, None
        stored = self._tx.fetch_first(_REDEMPTION, {
            "terminal_id": terminal_id, "transaction_id": transaction_id, "line_id": line_id})
        return card, None if stored is None else rows.redemption_from_row(stored)

    def get_many_for_update(self, card_numbers: Collection[str]) -> dict[str, Card]:
        found: dict[str, Card] = {}
        for chunk in in_chunks(card_numbers):
            for row in self._tx.fetch(_CARDS_FOR_UPDATE, {"numbers": chunk}):
                found[row.card_number] = rows.card_from_row(row)
        self._seen.extend(found.values())
        return found

    def add(self, cards: Iterable[Card]) -> None:
        cards = list(cards)
        self._tx.write(_INSERT_CARDS, [rows.card_values(card) for card in cards])
        self._seen.extend(cards)

    def save(self, cards: Iterable[Card]) -> None:
        if type(cards) is list and len(cards) == 1:  # an online call's one card
            self._save_one(cards[0])
            return
        # One row per card, the last state wins: a bulk UPDATE on PostgreSQL would apply an
        # arbitrary one of two rows with the same key (SQLite and the fake keep the last).
        latest = {card.card_number: card for card in cards}
        if len(latest) == 1:
            self._save_one(next(iter(latest.values())))
            return
        self._tx.write_tuples(_SAVE_CARDS, _SAVE_KEYS, [
            (*rows.card_state_row(card), number) for number, card in latest.items()])

    def _save_one(self, card: Card) -> None:
        lock = card.lock
        if lock is None:  # Redeem's: the lock's columns cleared in the SQL
            online = self._online
            entry_id = None
            if online is not None and online.read_card is card:
                entry_id = online.chain(card)
            if entry_id is not None:  # and its entry's id, chained by itself
                self._tx.write_tuples(_SAVE_RELEASING, _SAVE_UNLOCKED_CHAINED_KEYS, [
                    (card.status._value_, card.balance_minor, card.last_fencing_token,
                     entry_id, card.card_number)])
                return
            self._tx.write_tuples(_SAVE_RELEASING, _SAVE_UNLOCKED_KEYS, [
                (card.status._value_, card.balance_minor, card.last_fencing_token,
                 card.card_number)])
            return
        # As rows.card_state_row, and the key.
        self._tx.write_tuples(_SAVE_CARDS, _SAVE_KEYS, [(
            card.status._value_, card.balance_minor, card.last_fencing_token,
            lock.terminal_id, lock.transaction_id, lock.fencing_token,
            rows.to_micros(lock.lease_expires_at), rows.to_micros(lock.acquired_at),
            card.card_number)])

    def balances_for_update(self, card_numbers: Collection[str], terminal_id: str
                            ) -> dict[str, CardBalance]:
        found: dict[str, CardBalance] = {}
        tx = self._tx
        journaled = self._journaled
        last_entries: dict[str, int | None] | None = {} if journaled is not None else None
        for chunk in in_chunks(card_numbers):
            params = {"numbers": chunk, "terminal_id": terminal_id}
            if tx.is_sqlite:
                fetched = tx.fetch_tuples(_BALANCES_BY_POSITION, params)
                if len(fetched) == len(chunk):  # every card found: row i is chunk[i]'s
                    # Each row holds a CardBalance's fields in order, then the card's last
                    # entry: made in C, no Python code a row.
                    found.update(zip(chunk, map(_card_balance, map(_balance_part, fetched)),
                                     strict=True))
                    if last_entries is not None:
                        last_entries.update(zip(chunk, map(_last_entry_of, fetched), strict=True))
                    continue
                last_entries = None
            fetched = tx.fetch_tuples(_BALANCES_FOR_UPDATE, params)
            numbers = list(map(first_column, fetched))
            found.update(zip(numbers, map(_card_balance, map(_numbered_balance, fetched)),
                             strict=True))
            if last_entries is not None:  # PostgreSQL (SQLite's found every card above)
                last_entries.update(zip(numbers, map(_numbered_last_entry, fetched), strict=True))
        if journaled is not None:
            journaled.last_entries = last_entries
        return found

    def set_balances(self, changes: Iterable[BalanceChange]) -> None:
        changes = list(changes)
        journaled = self._journaled
        if journaled is not None and journaled.new_last_entries is not None:
            new = journaled.new_last_entries
            if len(new) == len(changes) and all(number in new for number, _b, _r in changes):
                journaled.new_last_entries = None
                self._set_balances_chained(changes, new)
                return
            journaled.write_new_last_entries()
        kept: list[tuple[int, str]] = []
        released: list[tuple[int, str]]
        if all(map(_release_of, changes)):  # a synced batch's: every sale held its card's lock
            released = list(map(_balance_and_number, changes))
        else:
            released = []
            for number, balance, release in changes:
                (released if release else kept).append((balance, number))
        self._tx.write_rows(_SAVE_RELEASING, _BALANCE_KEYS, released)
        self._tx.write_rows(_SAVE_CARDS, _BALANCE_KEYS, kept)

    def _set_balances_chained(self, changes: list[BalanceChange], new: dict[str, int]
                              ) -> None:
        """`set_balances` of the cards of a common batch whose journal entries were just
        appended: each card's new last entry in the same UPDATE (see JournaledDebits)."""
        kept: list[tuple[int, int, str]] = []
        released: list[tuple[int, int, str]] = []
        for number, balance, release in changes:
            (released if release else kept).append((balance, new[number], number))
        self._tx.write_rows(_SAVE_RELEASING, _CHAINED_BALANCE_KEYS, released)
        self._tx.write_rows(_SAVE_CARDS, _CHAINED_BALANCE_KEYS, kept)

    def list_locks(
        self,
        *,
        now: datetime,
        terminal_id: str | None,
        include_expired: bool,
        after_card_number: str,
        limit: int,
    ) -> list[Lock]:
        statement = _LIST_LOCKS[(terminal_id is not None, include_expired)]
        params = {
            "after": after_card_number,
            "terminal_id": terminal_id,
            "now": rows.to_micros(now),
            "limit": limit,
        }
        return [rows.lock_from_row(row) for row in self._tx.fetch(statement, params)]


class SqlLockHistoryRepository:
    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def add(self, grants: Iterable[LockGrant]) -> None:
        grants = list(grants)
        if len(grants) == 1 and grants[0].released_by_holder_at is None:  # LockCard's
            (grant,) = grants
            self._tx.append(_INSERT_NEW_GRANT, _NEW_GRANT_KEYS, [(
                grant.card_number, grant.fencing_token, grant.terminal_id,
                grant.transaction_id, rows.to_micros(grant.acquired_at))])
            return
        self._tx.write_tuples(_INSERT_GRANTS, rows.LOCK_GRANT_KEYS,
                              [rows.lock_grant_row(g) for g in grants])

    def mark_released_by_holder(self, locks: Iterable[Lock], at: datetime) -> None:
        when = rows.to_micros(at)
        self._tx.write(_RELEASE_GRANTS, [
            {"released_by_holder_at": when, "key_terminal_id": terminal_id,
             "key_transaction_id": transaction_id, "key_card_number": card_number,
             "key_fencing_token": token}
            for terminal_id, transaction_id, card_number, token in sorted({
                (lock.terminal_id, lock.transaction_id, lock.card_number, lock.fencing_token)
                for lock in locks})
        ])

    def for_sales(self, terminal_id: str, transaction_ids: Collection[str]
                  ) -> list[LockGrant]:
        found: list[LockGrant] = []
        for chunk in in_chunks(transaction_ids):
            params = {"terminal_id": terminal_id, "transaction_ids": chunk}
            found.extend(rows.lock_grant_from_row(row)
                         for row in self._tx.fetch(_GRANTS_FOR_SALES, params))
        return found

    def sale_locks(self, terminal_id: str, transaction_ids: Collection[str]
                   ) -> list[SaleLock]:
        found: list[SaleLock] = []
        for chunk in in_chunks(transaction_ids):
            params = {"terminal_id": terminal_id, "transaction_ids": chunk}
            found.extend(new_tuple(SaleLock, (sale, card_number, token, bool(released)))
                         for sale, card_number, token, released
                         in self._tx.fetch_tuples(_SALE_LOCKS, params))
        return found


class SqlJournalRepository:
    def __init__(self, tx: Transaction, journaled: JournaledDebits | None = None) -> None:
        self._tx = tx
        self._journaled = journaled
        self._online = journaled.online if journaled is not None and tx.is_sqlite else None

    def append(self, entries: Iterable[JournalEntry]) -> None:
        entries = list(entries)
        journaled = self._journaled
        if journaled is not None:
            journaled.last_entries = None  # (no longer last, perhaps)
        if len(entries) == 1 and not entries[0].offline:  # an online call's
            entry = entries[0]
            online = self._online
            if online is not None:
                if online.chained is entry:  # a Redeem's, chained by itself (OnlineChain)
                    online.chained = None
                    self._tx.append(_INSERT_ONLINE_ENTRIES, _NUMBERED_ONLINE_ENTRY_KEYS, [(
                        online.chained_id, *rows.online_journal_row(entry),
                        online.chained_previous)])
                    return
                entry_id = online.number(entry.card_number)
                if entry_id is not None:
                    self._tx.append(_INSERT_ONLINE_ENTRIES, _NUMBERED_ONLINE_ENTRY_KEYS, [
                        (entry_id, *rows.online_journal_row(entry), None)])
                    return
            self._tx.append(_INSERT_ONLINE_ENTRIES, _ONLINE_ENTRY_KEYS,
                            [rows.online_journal_row(entry)])
            return
        if self._online is not None:
            self._online.stop()
        self._tx.write_tuples(_INSERT_ENTRIES, rows.JOURNAL_KEYS,
                              [rows.journal_row(entry) for entry in entries])

    def append_offline_debits(self, terminal_id: str, debits: CommonDebits,
                              now: datetime) -> None:
        # The rows zipped from the columns (no Python code a row), sorted by card number (the
        # first column: each card once, so nothing else is compared).
        sales = debits.sales
        recorded_at = rows.to_micros(now)
        shared = {"terminal_id": terminal_id, "recorded_at": recorded_at}
        journaled = self._journaled
        if self._online is not None:
            self._online.stop()  # (numbered by SQLite)
        if journaled is not None and self._tx.is_sqlite:  # (nothing inserts in between)
            after = self._tx.fetch_tuples(_LAST_ENTRY, {})[0][0]
            journaled.note(debits, terminal_id, recorded_at, after)
            last_entries, journaled.last_entries = journaled.last_entries, None
            if last_entries is not None and last_entries.keys() >= set(sales.card_numbers):
                self._append_chained(debits, shared, after, last_entries)
                return
        if journaled is not None and not self._tx.is_sqlite:
            last_entries, journaled.last_entries = journaled.last_entries, None
            if last_entries is not None and last_entries.keys() >= set(sales.card_numbers):
                self._append_numbered(debits, shared, last_entries)
                return
        currency = _one_currency(sales.currencies)
        if currency is None:
            self._tx.write_rows(_INSERT_DEBIT_ENTRIES, _DEBIT_ENTRY_KEYS, sorted(zip(
                sales.card_numbers, map(neg, sales.amounts_minor), sales.currencies,
                debits.balances_after_minor, sales.transaction_ids, sales.line_ids,
                sales.completed_micros, strict=True), key=first_column), shared)
            return
        # The usual batch, in one currency: bound once a statement.
        self._tx.write_rows(_INSERT_DEBIT_ENTRIES, _DEBIT_ENTRY_KEYS_ONE_CURRENCY, sorted(zip(
            sales.card_numbers, map(neg, sales.amounts_minor), debits.balances_after_minor,
            sales.transaction_ids, sales.line_ids, sales.completed_micros, strict=True),
            key=first_column), {**shared, "currency": currency})

    def _append_chained(self, debits: CommonDebits, shared: dict[str, Any], after: int,
                        last_entries: dict[str, int | None]) -> None:
        """SQLite: `append_offline_debits`' entries, numbered after `after` in card-number
        order (each card once), each bound with its card's last entry as its previous one
        (the trigger skips an entry that has one); each card's new last entry is left to
        `SqlCardRepository.set_balances` (or the unit's end)."""
        sales = debits.sales
        numbers = sales.card_numbers
        previous = map(last_entries.__getitem__, numbers)
        currency = _one_currency(sales.currencies)
        if currency is None:
            rows = sorted(zip(
                numbers, map(neg, sales.amounts_minor), sales.currencies,
                debits.balances_after_minor, sales.transaction_ids, sales.line_ids,
                sales.completed_micros, previous, strict=True), key=first_column)
            self._tx.write_rows(_INSERT_DEBIT_ENTRIES, _CHAINED_ENTRY_KEYS, rows, shared)
        else:
            rows = sorted(zip(
                numbers, map(neg, sales.amounts_minor), debits.balances_after_minor,
                sales.transaction_ids, sales.line_ids, sales.completed_micros, previous,
                strict=True), key=first_column)
            self._tx.write_rows(_INSERT_DEBIT_ENTRIES, _CHAINED_ENTRY_KEYS_ONE_CURRENCY, rows,
                                {**shared, "currency": currency})
        assert self._journaled is not None
        self._journaled.new_last_entries = dict(zip(
            map(first_column, rows), range(after + 1, after + 1 + len(rows)), strict=True))

    def _append_numbered(self, debits: CommonDebits, shared: dict[str, Any],
                         last_entries: dict[str, int | None]) -> None:
        """PostgreSQL: `append_offline_debits`' entries chained by the batch itself, as
        SQLite's `_append_chained`, numbered from the journal's sequence (one round trip a
        batch) in card-number order. Through the trigger, each entry cost the database a
        function call, a locking read and a second rewrite of its card's row (on top of
        set_balances'): ~45 us of PostgreSQL's CPU a synced sale, 2,300 against 7,900 tx/s
        in-process (`bench/hq_sync_cpu.py`, 4,000 transactions, the trigger disabled)."""
        sales = debits.sales
        numbers = sales.card_numbers
        previous = map(last_entries.__getitem__, numbers)
        ids = sorted(map(first_column, self._tx.fetch_tuples(
            _NEW_ENTRY_IDS, {"count": len(numbers)})))
        currency = _one_currency(sales.currencies)
        if currency is None:
            rows = [(*row, entry_id) for row, entry_id in zip(sorted(zip(
                numbers, map(neg, sales.amounts_minor), sales.currencies,
                debits.balances_after_minor, sales.transaction_ids, sales.line_ids,
                sales.completed_micros, previous, strict=True), key=first_column), ids,
                strict=True)]
            self._tx.write_rows(_INSERT_DEBIT_ENTRIES, _NUMBERED_ENTRY_KEYS, rows, shared)
        else:
            rows = [(*row, entry_id) for row, entry_id in zip(sorted(zip(
                numbers, map(neg, sales.amounts_minor), debits.balances_after_minor,
                sales.transaction_ids, sales.line_ids, sales.completed_micros, previous,
                strict=True), key=first_column), ids, strict=True)]
            self._tx.write_rows(_INSERT_DEBIT_ENTRIES, _NUMBERED_ENTRY_KEYS_ONE_CURRENCY, rows,
                                {**shared, "currency": currency})
        assert self._journaled is not None
        self._journaled.new_last_entries = dict(zip(map(first_column, rows), ids, strict=True))

    def list_for_card(
        self, card_number: str, *, after_entry_id: int, limit: int
    ) -> list[JournalEntry]:
        params = {"card_number": card_number, "after": after_entry_id, "limit": limit}
        return [rows.journal_from_row(row) for row in self._tx.fetch(_JOURNAL_PAGE, params)]


class SqlRedemptionRepository:
    def __init__(self, tx: Transaction, journaled: JournaledDebits | None = None) -> None:
        self._tx = tx
        self._journaled = journaled

    def get_many(
        self, keys: Collection[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Redemption]:
        # By terminal, then the transactions' lines through the primary key's prefix;
        # lines nobody asked for are dropped here.
        wanted = set(keys)
        if len(wanted) == 1:  # one line (a one-transaction sync), by its primary key
            ((terminal_id, transaction_id, line_id),) = wanted
            line = {
                "terminal_id": terminal_id, "transaction_id": transaction_id, "line_id": line_id
            }
            row = self._tx.fetch_first(_REDEMPTION, line)
            return {} if row is None else {(terminal_id, transaction_id, line_id):
                                            rows.redemption_from_row(row)}
        by_terminal: dict[str, set[str]] = defaultdict(set)
        for terminal_id, transaction_id, _line_id in wanted:
            by_terminal[terminal_id].add(transaction_id)
        found: dict[tuple[str, str, str], Redemption] = {}
        for terminal_id, transaction_ids in sorted(by_terminal.items()):
            for chunk in in_chunks(transaction_ids):
                params = {"terminal_id": terminal_id, "transaction_ids": chunk}
                for row in self._tx.fetch(_REDEMPTIONS, params):
                    redemption = rows.redemption_from_row(row)
                    if redemption.key in wanted:
                        found[redemption.key] = redemption
        return found

    def add(self, redemptions: Iterable[Redemption]) -> None:
        redemptions = list(redemptions)
        if len(redemptions) == 1:
            (line,) = redemptions
            if not line.offline and line.reversal is None and line.reversed_at is None:
                self._tx.write_tuples(_INSERT_ONLINE_REDEMPTION, _ONLINE_REDEMPTION_KEYS, [(
                    line.terminal_id, line.transaction_id, line.line_id, line.card_number,
                    line.amount_minor, line.currency, line.remainder_card_number,
                    rows.to_micros(line.recorded_at))])
                return
        self._tx.write_tuples(_INSERT_REDEMPTIONS, rows.REDEMPTION_KEYS,
                              [rows.redemption_row(r) for r in redemptions])

    def add_offline_debits(self, terminal_id: str, debits: CommonDebits,
                           now: datetime) -> None:
        sales = debits.sales
        recorded_at = rows.to_micros(now)
        journaled = self._journaled
        after = None if journaled is None else journaled.take(debits, terminal_id, recorded_at)
        if after is not None:
            inserted = self._tx.insert_selected(_DEBIT_REDEMPTIONS_FROM_JOURNAL,
                                                {"after": after})
            if inserted != len(debits):
                raise RuntimeError(f"{inserted} journal entries for {len(debits)} debits")
            return
        shared = {"terminal_id": terminal_id, "recorded_at": recorded_at}
        currency = _one_currency(sales.currencies)
        if currency is None:
            self._tx.write_rows(_INSERT_DEBIT_REDEMPTIONS, _DEBIT_REDEMPTION_KEYS, list(zip(
                sales.transaction_ids, sales.line_ids, sales.card_numbers, sales.amounts_minor,
                sales.currencies, strict=True)), shared)
            return
        self._tx.write_rows(
            _INSERT_DEBIT_REDEMPTIONS, _DEBIT_REDEMPTION_KEYS_ONE_CURRENCY, list(zip(
                sales.transaction_ids, sales.line_ids, sales.card_numbers, sales.amounts_minor,
                strict=True)),
            {**shared, "currency": currency})

    def mark_reversed(self, redemptions: Iterable[Redemption]) -> None:
        self._tx.write(
            _MARK_REVERSED, [rows.redemption_reversal_values(r) for r in redemptions]
        )
