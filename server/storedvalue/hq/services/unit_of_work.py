"""The storage contract the services depend on.

Storage backends (SQLite file, SQLite memory, PostgreSQL, and the in-memory fake used by the
service tests) implement these protocols; one contract test suite runs against each. A unit
of work rolls back unless `commit()` is called. The services themselves never open one: they
hand a closure over the `Repositories` to the transaction executor (`transactions.py`),
which runs it in a transaction of its choosing.

Concurrency contract: `*_for_update` reads lock what they return until the unit of work ends
(PostgreSQL `SELECT ... FOR UPDATE`; SQLite holds its write lock from `BEGIN IMMEDIATE`), so
callers lock the terminal row first, then cards in card-number order. A write that loses a
race (unique key taken, serialization failure, deadlock) raises `ConcurrentUpdate`: the
service retries the whole unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, TypeVar

from storedvalue.hq.domain.cards import Card, Lock
from storedvalue.hq.domain.journal import JournalEntry
from storedvalue.hq.domain.offline import OfflineException, OfflineRecord, Redemption
from storedvalue.hq.domain.offline_common import (
    BalanceChange,
    CardBalance,
    CommonDebits,
    SaleLock,
)
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.domain.parameters import ParameterSet
from storedvalue.hq.domain.terminal_reports import ReceivedReport
from storedvalue.hq.domain.terminals import Terminal
from storedvalue.hq.domain.value_objects import value_object

T = TypeVar("T")


class ConcurrentUpdate(Exception):
    """Another transaction got there first; retrying the unit of work is safe."""


@value_object
class StoredResponse:
    """The first result of an idempotent request (AIP-155), kept with its request's digest."""

    caller: str  # terminal id, or "admin:<name>"
    request_id: str
    operation: str  # the RPC name, so one id cannot be replayed against another RPC
    fingerprint: bytes  # the request's without its request_id (idempotency.RequestKey)
    result_json: str  # the service's result, as encoded by storedvalue.hq.records
    created_at: datetime


class SeenCards:
    """The cards one unit of work loaded for update or added, in that order. As the unit
    commits, the journal entries their rules recorded (`Card.pending_entries`) are appended,
    each once (`append_journal`): no use case has to remember to (cosmicpython's `seen` and
    `collect_new_events`)."""

    __slots__ = ("_cards",)

    def __init__(self) -> None:
        self._cards: list[Card] = []

    def add(self, card: Card) -> None:
        self._cards.append(card)

    def extend(self, cards: Iterable[Card]) -> None:
        self._cards.extend(cards)

    def clear(self) -> None:
        """Forget the cards of a unit that did not commit."""
        self._cards.clear()

    def append_journal(self, journal: JournalRepository) -> None:
        cards, self._cards = self._cards, []
        entries = [entry for card in cards for entry in card.pending_entries]
        if entries:
            journal.append(entries)
        for card in cards:
            card.pending_entries.clear()


class CardRepository(Protocol):
    """Cards handed out for update and cards added are seen by the unit of work, which
    appends their recorded journal entries as it commits."""

    def get(self, card_number: str) -> Card | None: ...
    def get_for_update(self, card_number: str) -> Card | None: ...
    def get_for_update_with_line(
        self, card_number: str, line: tuple[str, str, str]
    ) -> tuple[Card | None, Redemption | None]:
        """`get_for_update`, and the redemption stored under `line` (terminal, transaction
        and line ids) if any: an online Redeem's two reads in one. (None, None) for an
        unknown card."""
        ...
    def get_many_for_update(self, card_numbers: Collection[str]) -> dict[str, Card]:
        """Locks in card-number order; unknown numbers are absent from the result."""
        ...
    def add(self, cards: Iterable[Card]) -> None:
        """Insert new cards (a taken number raises ConcurrentUpdate)."""
        ...
    def save(self, cards: Iterable[Card]) -> None:
        """Write back status, balance, fencing counter and lock of loaded cards."""
        ...
    def balances_for_update(self, card_numbers: Collection[str], terminal_id: str
                            ) -> dict[str, CardBalance]:
        """As `get_many_for_update` (same locks, same order), only balances and which of
        `terminal_id`'s sales holds each lock (see CardBalance); the cards are not seen by
        the unit of work (their journal is the caller's)."""
        ...
    def set_balances(self, changes: Iterable[BalanceChange]) -> None:
        """Write the new balances of cards read by `balances_for_update`, releasing the lock
        of those marked so; nothing else of the card changes."""
        ...
    def list_locks(
        self,
        *,
        now: datetime,
        terminal_id: str | None,
        include_expired: bool,
        after_card_number: str,
        limit: int,
    ) -> list[Lock]:
        """Locks ordered by card number, strictly after `after_card_number`."""
        ...


class LockHistoryRepository(Protocol):
    def add(self, grants: Iterable[LockGrant]) -> None:
        """Record locks just handed out (one recorded already, same sale, card and token,
        raises ConcurrentUpdate). Nothing checks that a card's token is recorded once: the
        card's row hands each token out once (Card.acquire_lock bumps its last)."""
        ...
    def mark_released_by_holder(self, locks: Iterable[Lock], at: datetime) -> None:
        """Note that the holders of these locks released them themselves; a lock is found
        by its sale (terminal and transaction), card and fencing token, and unknown locks
        are ignored."""
        ...
    def for_sales(self, terminal_id: str, transaction_ids: Collection[str]
                  ) -> list[LockGrant]:
        """Every lock this terminal got for these sales, whatever card."""
        ...
    def sale_locks(self, terminal_id: str, transaction_ids: Collection[str]
                   ) -> list[SaleLock]:
        """The same locks as `for_sales`, without their times."""
        ...


class JournalRepository(Protocol):
    """Entries of stored cards only (added before, in this unit of work or an earlier one):
    a card's entries are chained from its row (SQL storage: see tables.journal)."""

    def append(self, entries: Iterable[JournalEntry]) -> None: ...
    def append_offline_debits(self, terminal_id: str, debits: CommonDebits,
                              now: datetime) -> None:
        """The REDEEM entry of each debit, in card-number order: the order a unit of work
        appends the entries of the cards it loaded (by number), so that entry ids come out
        as on the general path."""
        ...
    def list_for_card(
        self, card_number: str, *, after_entry_id: int, limit: int
    ) -> list[JournalEntry]:
        """Entries oldest first, with their storage-assigned `entry_id`."""
        ...


class RedemptionRepository(Protocol):
    def get_many(
        self, keys: Collection[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], Redemption]:
        """By (terminal_id, transaction_id, line_id)."""
        ...
    def add(self, redemptions: Iterable[Redemption]) -> None:
        """Insert lines not stored yet (a taken key raises ConcurrentUpdate)."""
        ...
    def mark_reversed(self, redemptions: Iterable[Redemption]) -> None:
        """Write the reversal state (`reversal`, `reversed_at`) of lines already stored."""
        ...
    def add_offline_debits(self, terminal_id: str, debits: CommonDebits,
                           now: datetime) -> None:
        """Insert the line of each debit, applied offline at `now` (as `add` would)."""
        ...


class RequestLog(Protocol):
    def get(self, caller: str, request_id: str) -> StoredResponse | None: ...
    def add(self, response: StoredResponse) -> None:
        """A taken (caller, request_id) raises ConcurrentUpdate."""
        ...


class OfflineRecordRepository(Protocol):
    def get_many(self, terminal_id: str, transaction_ids: Collection[str]
                 ) -> dict[str, OfflineRecord]: ...
    def sequence_owners(self, terminal_id: str, sequence_numbers: Collection[int]
                        ) -> dict[int, str]:
        """Which transaction id holds each of these sequence numbers, if any."""
        ...
    def sequences_above(self, terminal_id: str, mark: int) -> list[int]:
        """Every sequence number held above `mark`, ascending."""
        ...
    def add(self, records: Iterable[OfflineRecord]) -> None: ...
    def add_offline_debits(self, terminal_id: str, debits: CommonDebits,
                           now: datetime) -> None:
        """Insert the record of each debit's transaction, received at `now` (as `add`)."""
        ...
    def if_first_delivery(self, terminal_id: str, transaction_ids: Sequence[str],
                          line_ids: Sequence[str], apply: Callable[[], T | None]
                          ) -> T | None:
        """`apply()`, which writes the records of these transactions and the redemptions of
        these lines (the line `line_ids[i]` of the transaction `transaction_ids[i]`), when
        none of them is stored yet; else None, with nothing of it
        written (whether it ran or not). None from `apply` also leaves nothing of it
        written."""
        ...


class OfflineExceptionRepository(Protocol):
    def add(self, exceptions: Iterable[OfflineException]) -> None: ...
    def get_for_update(self, exception_id: str) -> OfflineException | None: ...
    def save(self, exception: OfflineException) -> None: ...
    def count_open_for_card(self, card_number: str) -> int: ...
    def list(
        self,
        *,
        include_resolved: bool,
        terminal_id: str | None,
        card_number: str | None,
        after_position: int,
        limit: int,
    ) -> list[tuple[int, OfflineException]]:
        """Up to `limit` exceptions, each with its insertion position, oldest first, strictly
        after `after_position` (0 for the start)."""
        ...


class ParametersRepository(Protocol):
    """Parameter changes, one row (`ParameterSet`) per version, of any scope."""

    def latest_version(self) -> int:
        """The highest version of any scope; 0 on a new database."""
        ...
    def as_of(self, store_id: str, version: int) -> ParameterSet | None:
        """The scope's newest set at or before `version` (GLOBAL, or a store's override)."""
        ...
    def latest(self, store_id: str) -> ParameterSet | None: ...
    def latest_overrides(self) -> list[ParameterSet]:
        """Every store's newest override, by store id."""
        ...
    def add(self, parameter_set: ParameterSet) -> None:
        """A taken version raises ConcurrentUpdate."""
        ...
    def list(self, *, store_id: str | None, before_version: int, limit: int
             ) -> list[ParameterSet]:
        """Newest first, versions strictly below `before_version` (0 = no bound): one scope's,
        or every scope's when `store_id` is None."""
        ...


class TerminalReportRepository(Protocol):
    def get_many(self, terminal_ids: Collection[str]) -> dict[str, ReceivedReport]: ...
    def save(self, terminal_id: str, received: ReceivedReport) -> bool:
        """Keep the report unless the one held is newer (by the terminal's `reported_at`);
        whether it was kept."""
        ...


class TerminalRepository(Protocol):
    def get(self, terminal_id: str) -> Terminal | None: ...
    def get_for_update(self, terminal_id: str) -> Terminal | None: ...
    def get_by_token_hash(self, token_hash: str) -> Terminal | None: ...
    def add(self, terminal: Terminal) -> None:
        """A taken id raises ConcurrentUpdate."""
        ...
    def save(self, terminal: Terminal) -> None: ...
    def announce(self, terminal_id: str) -> None:
        """Tell the other HQ replicas, once this transaction commits, that the terminal was
        revoked or moved to another store (PostgreSQL NOTIFY; nothing to tell on SQLite)."""
        ...
    def list(self, *, after_terminal_id: str, limit: int) -> list[Terminal]: ...


class Repositories(Protocol):
    """What a unit of work's closure reads and writes, inside one transaction."""

    cards: CardRepository
    lock_history: LockHistoryRepository
    journal: JournalRepository
    redemptions: RedemptionRepository
    requests: RequestLog
    offline: OfflineRecordRepository
    exceptions: OfflineExceptionRepository
    parameters: ParametersRepository
    terminals: TerminalRepository
    reports: TerminalReportRepository


class UnitOfWork(Repositories, Protocol):
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Rolls back whatever was not committed."""
        ...
    def commit(self) -> None:
        """Append the journal entries its cards recorded, then commit. May raise
        ConcurrentUpdate."""
        ...


class Storage(Protocol):
    """Opens units of work on one database."""

    def unit_of_work(self, *, write: bool) -> UnitOfWork:
        """`write=True` takes the write lock at once on SQLite (BEGIN IMMEDIATE)."""
        ...
    def close(self) -> None: ...
