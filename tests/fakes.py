"""An in-memory Storage for fast service tests: dicts, same contract as the SQL backends
(tests/integration/test_storage_contract.py runs against both).

A unit of work works on a copy of the committed state: commit keeps it, anything else
discards it. Units of work run one at a time (like SQLite's single writer), so services can
be tested from several threads. Mutable domain objects are copied in and out, as a database
would: changing a loaded card changes nothing until `save`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Self, TypeVar

from storedvalue.hq.domain.cards import Card, CardKind, Lock
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.moments import moment_from_epoch
from storedvalue.hq.domain.offline import OfflineException, OfflineRecord, Redemption
from storedvalue.hq.domain.offline_common import (
    BalanceChange,
    CardBalance,
    CommonDebits,
    SaleLock,
    applied_result,
)
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.domain.parameters import ParameterSet
from storedvalue.hq.domain.terminal_reports import ReceivedReport
from storedvalue.hq.domain.terminals import Terminal
from storedvalue.hq.services.unit_of_work import (
    CardRepository,
    ConcurrentUpdate,
    JournalRepository,
    LockHistoryRepository,
    OfflineExceptionRepository,
    OfflineRecordRepository,
    ParametersRepository,
    RedemptionRepository,
    RequestLog,
    SeenCards,
    StoredResponse,
    TerminalReportRepository,
    TerminalRepository,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

LineKey = tuple[str, str, str]
T = TypeVar("T", bound="DataclassInstance")
R = TypeVar("R")


@dataclass
class _State:
    cards: dict[str, Card] = field(default_factory=dict)
    # By the table's key: (terminal_id, transaction_id, card_number, fencing_token).
    lock_history: dict[tuple[str, str, str, int], LockGrant] = field(default_factory=dict)
    journal: list[JournalEntry] = field(default_factory=list)
    redemptions: dict[LineKey, Redemption] = field(default_factory=dict)
    requests: dict[tuple[str, str], StoredResponse] = field(default_factory=dict)
    offline: dict[tuple[str, str], OfflineRecord] = field(default_factory=dict)
    sequence_owners: dict[tuple[str, int], str] = field(default_factory=dict)
    # exception_id -> (insertion position, exception); the position is the list cursor.
    exceptions: dict[str, tuple[int, OfflineException]] = field(default_factory=dict)
    last_exception_position: int = 0
    parameters: dict[int, ParameterSet] = field(default_factory=dict)
    terminals: dict[str, Terminal] = field(default_factory=dict)
    token_owners: dict[str, str] = field(default_factory=dict)
    reports: dict[str, ReceivedReport] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(
            cards=dict(self.cards),
            lock_history=dict(self.lock_history),
            journal=list(self.journal),
            redemptions=dict(self.redemptions),
            requests=dict(self.requests),
            offline=dict(self.offline),
            sequence_owners=dict(self.sequence_owners),
            exceptions=dict(self.exceptions),
            last_exception_position=self.last_exception_position,
            parameters=dict(self.parameters),
            terminals=dict(self.terminals),
            token_owners=dict(self.token_owners),
            reports=dict(self.reports),
        )


def _stored(value: T) -> T:
    """What a row gives back: timestamps as UTC (naive ones refused, as the SQL backends
    refuse them), a card's lock included. Parts the SQL backends keep as JSON are left as
    they are."""
    changes: dict[str, object] = {}
    for f in fields(value):
        current = getattr(value, f.name)
        if isinstance(current, datetime):
            if current.tzinfo is None:
                raise ValueError(f"naive datetime in {f.name}: HQ stores aware UTC moments only")
            changes[f.name] = current.astimezone(UTC)
        elif isinstance(current, Lock):
            changes[f.name] = _stored(current)
    return replace(value, **changes)


def _detached(card: Card) -> Card:
    """A copy, as a database row would give (expired locks included: storage keeps them)."""
    return replace(card, pending_entries=[])


def _taken(what: str) -> ConcurrentUpdate:
    return ConcurrentUpdate(f"unique key taken: {what}")


class FakeCardRepository:
    def __init__(self, state: _State, seen: SeenCards) -> None:
        self._state = state
        self._seen = seen

    def get(self, card_number: str) -> Card | None:
        card = self._state.cards.get(card_number)
        return None if card is None else _detached(card)

    def get_for_update(self, card_number: str) -> Card | None:
        card = self.get(card_number)
        if card is not None:
            self._seen.add(card)
        return card

    def get_for_update_with_line(
        self, card_number: str, line: LineKey
    ) -> tuple[Card | None, Redemption | None]:
        card = self.get_for_update(card_number)
        return (None, None) if card is None else (card, self._state.redemptions.get(line))

    def get_many_for_update(self, card_numbers: Collection[str]) -> dict[str, Card]:
        found = {
            number: _detached(self._state.cards[number])
            for number in sorted(set(card_numbers))
            if number in self._state.cards
        }
        self._seen.extend(found.values())
        return found

    def add(self, cards: Iterable[Card]) -> None:
        cards = list(cards)
        new = [_stored(_detached(card)) for card in cards]
        numbers = [card.card_number for card in new]
        if len(set(numbers)) != len(numbers) or any(n in self._state.cards for n in numbers):
            raise _taken("cards.card_number")
        self._state.cards.update((card.card_number, card) for card in new)
        self._seen.extend(cards)

    def save(self, cards: Iterable[Card]) -> None:
        for card in cards:
            stored = self._state.cards.get(card.card_number)
            if stored is not None:  # like UPDATE ... WHERE: an unknown card changes nothing
                self._state.cards[card.card_number] = replace(
                    stored,
                    status=card.status,
                    balance_minor=card.balance_minor,
                    last_fencing_token=card.last_fencing_token,
                    lock=None if card.lock is None else _stored(card.lock),
                    pending_entries=[],
                )

    def balances_for_update(self, card_numbers: Collection[str], terminal_id: str
                            ) -> dict[str, CardBalance]:
        found = {}
        for number in sorted(set(card_numbers)):
            card = self._state.cards.get(number)
            if card is not None:
                lock = card.lock
                found[number] = CardBalance(
                    card.currency,
                    card.balance_minor if card.kind is CardKind.GIFT_CARD else -1,
                    lock.transaction_id if lock and lock.terminal_id == terminal_id else None,
                    lock.fencing_token if lock else None)
        return found

    def set_balances(self, changes: Iterable[BalanceChange]) -> None:
        for number, balance, release in changes:
            stored = self._state.cards.get(number)
            if stored is not None:
                self._state.cards[number] = replace(
                    stored, balance_minor=balance, lock=None if release else stored.lock,
                    pending_entries=[])

    def list_locks(
        self,
        *,
        now: datetime,
        terminal_id: str | None,
        include_expired: bool,
        after_card_number: str,
        limit: int,
    ) -> list[Lock]:
        locks = [
            card.lock
            for number, card in sorted(self._state.cards.items())
            if number > after_card_number
            and card.lock is not None
            and (terminal_id is None or card.lock.terminal_id == terminal_id)
            and (include_expired or card.lock.is_live(now))
        ]
        return locks[: max(limit, 0)]


class FakeLockHistoryRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def add(self, grants: Iterable[LockGrant]) -> None:
        new = [_stored(grant) for grant in grants]
        keys = [(grant.terminal_id, grant.transaction_id, grant.card_number,
                 grant.fencing_token) for grant in new]
        if len(set(keys)) != len(keys) or any(k in self._state.lock_history for k in keys):
            raise _taken("lock_history primary key")
        self._state.lock_history.update(zip(keys, new, strict=True))

    def mark_released_by_holder(self, locks: Iterable[Lock], at: datetime) -> None:
        for lock in locks:
            key = (lock.terminal_id, lock.transaction_id, lock.card_number, lock.fencing_token)
            grant = self._state.lock_history.get(key)
            if grant is not None:
                self._state.lock_history[key] = _stored(grant.released_by_holder(at))

    def for_sales(self, terminal_id: str, transaction_ids: Collection[str]
                  ) -> list[LockGrant]:
        wanted = set(transaction_ids)
        return [
            grant
            for grant in self._state.lock_history.values()
            if grant.terminal_id == terminal_id and grant.transaction_id in wanted
        ]

    def sale_locks(self, terminal_id: str, transaction_ids: Collection[str]
                   ) -> list[SaleLock]:
        return [SaleLock(grant.transaction_id, grant.card_number, grant.fencing_token,
                         grant.released_by_holder_at is not None)
                for grant in self.for_sales(terminal_id, transaction_ids)]


class FakeJournalRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def append(self, entries: Iterable[JournalEntry]) -> None:
        journal = self._state.journal
        for entry in entries:
            journal.append(_stored(replace(entry, entry_id=len(journal) + 1)))

    def list_for_card(
        self, card_number: str, *, after_entry_id: int, limit: int
    ) -> list[JournalEntry]:
        found = [
            entry
            for entry in self._state.journal[max(after_entry_id, 0) :]
            if entry.card_number == card_number
        ]
        return found[: max(limit, 0)]


    def append_offline_debits(self, terminal_id: str, debits: CommonDebits,
                              now: datetime) -> None:
        self.append(
            JournalEntry(
                card_number=d.card_number, kind=JournalEntryKind.REDEEM,
                amount_minor=-d.amount_minor, currency=d.currency,
                balance_after_minor=d.balance_after_minor, terminal_id=terminal_id,
                transaction_id=d.transaction_id, line_id=d.line_id, offline=True,
                occurred_at=_moment(d.occurred_at_micros), recorded_at=now)
            for d in sorted(debits, key=lambda d: d.card_number))

def _moment(micros: int) -> datetime:
    moment = moment_from_epoch(micros // 1_000_000, micros % 1_000_000 * 1000)
    assert moment is not None
    return moment


class FakeRedemptionRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def get_many(self, keys: Collection[LineKey]) -> dict[LineKey, Redemption]:
        stored = self._state.redemptions
        return {key: stored[key] for key in keys if key in stored}

    def add(self, redemptions: Iterable[Redemption]) -> None:
        new = [_stored(r) for r in redemptions]
        keys = [r.key for r in new]
        if len(set(keys)) != len(keys) or any(k in self._state.redemptions for k in keys):
            raise _taken("redemptions primary key")
        self._state.redemptions.update((r.key, r) for r in new)

    def mark_reversed(self, redemptions: Iterable[Redemption]) -> None:
        stored = self._state.redemptions
        for line in redemptions:
            if line.key in stored:
                stored[line.key] = replace(
                    stored[line.key], reversal=line.reversal,
                    reversed_at=_stored(line).reversed_at,
                )


    def add_offline_debits(self, terminal_id: str, debits: CommonDebits,
                           now: datetime) -> None:
        self.add(
            Redemption(
                terminal_id=terminal_id, transaction_id=d.transaction_id, line_id=d.line_id,
                card_number=d.card_number, amount_minor=d.amount_minor, currency=d.currency,
                remainder_card_number="", offline=True, recorded_at=now)
            for d in debits)

class FakeRequestLog:
    def __init__(self, state: _State) -> None:
        self._state = state

    def get(self, caller: str, request_id: str) -> StoredResponse | None:
        return self._state.requests.get((caller, request_id))

    def add(self, response: StoredResponse) -> None:
        key = (response.caller, response.request_id)
        if key in self._state.requests:
            raise _taken("request_log primary key")
        self._state.requests[key] = _stored(response)


class FakeOfflineRecordRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def get_many(
        self, terminal_id: str, transaction_ids: Collection[str]
    ) -> dict[str, OfflineRecord]:
        stored = self._state.offline
        return {
            txn: stored[(terminal_id, txn)]
            for txn in transaction_ids
            if (terminal_id, txn) in stored
        }

    def sequence_owners(
        self, terminal_id: str, sequence_numbers: Collection[int]
    ) -> dict[int, str]:
        owners = self._state.sequence_owners
        return {
            seq: owners[(terminal_id, seq)]
            for seq in sequence_numbers
            if (terminal_id, seq) in owners
        }

    def sequences_above(self, terminal_id: str, mark: int) -> list[int]:
        return sorted(
            seq
            for (terminal, seq) in self._state.sequence_owners
            if terminal == terminal_id and seq > mark
        )

    def add(self, records: Iterable[OfflineRecord]) -> None:
        new = [_stored(r) for r in records]
        keys = [(r.terminal_id, r.transaction_id) for r in new]
        sequences = [(r.terminal_id, r.sequence_number) for r in new]
        if (
            len(set(keys)) != len(keys)
            or len(set(sequences)) != len(sequences)
            or any(k in self._state.offline for k in keys)
            or any(s in self._state.sequence_owners for s in sequences)
        ):
            raise _taken("offline_records primary key or (terminal_id, sequence_number)")
        for record in new:
            self._state.offline[(record.terminal_id, record.transaction_id)] = record
            self._state.sequence_owners[(record.terminal_id, record.sequence_number)] = (
                record.transaction_id
            )


    def if_first_delivery(self, terminal_id: str, transaction_ids: Sequence[str],
                          line_ids: Sequence[str], apply: Callable[[], R | None]
                          ) -> R | None:
        if self.get_many(terminal_id, transaction_ids) or any(
                (terminal_id, txn_id, line_id) in self._state.redemptions
                for txn_id, line_id in zip(transaction_ids, line_ids, strict=True)):
            return None
        return apply()

    def add_offline_debits(self, terminal_id: str, debits: CommonDebits,
                           now: datetime) -> None:
        self.add(
            OfflineRecord(
                terminal_id=terminal_id, transaction_id=d.transaction_id,
                sequence_number=d.sequence_number, fingerprint=d.fingerprint,
                result=applied_result(d),
                received_at=now)
            for d in debits)

class FakeOfflineExceptionRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def add(self, exceptions: Iterable[OfflineException]) -> None:
        new = [_stored(exc) for exc in exceptions]
        ids = [exc.exception_id for exc in new]
        if len(set(ids)) != len(ids) or any(i in self._state.exceptions for i in ids):
            raise _taken("offline_exceptions.exception_id")
        for exc in new:
            self._state.last_exception_position += 1
            self._state.exceptions[exc.exception_id] = (
                self._state.last_exception_position,
                exc,
            )

    def get_for_update(self, exception_id: str) -> OfflineException | None:
        found = self._state.exceptions.get(exception_id)
        return None if found is None else replace(found[1])

    def save(self, exception: OfflineException) -> None:
        found = self._state.exceptions.get(exception.exception_id)
        if found is not None:
            position, stored = found
            self._state.exceptions[exception.exception_id] = (
                position,
                _stored(replace(exception, created_at=stored.created_at)),
            )

    def count_open_for_card(self, card_number: str) -> int:
        return sum(
            1
            for _, exc in self._state.exceptions.values()
            if exc.card_number == card_number and exc.is_open
        )

    def list(
        self,
        *,
        include_resolved: bool,
        terminal_id: str | None,
        card_number: str | None,
        after_position: int,
        limit: int,
    ) -> list[tuple[int, OfflineException]]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        found = sorted(
            (position, exc)
            for position, exc in self._state.exceptions.values()
            if position > after_position
            and (include_resolved or exc.is_open)
            and (terminal_id is None or exc.terminal_id == terminal_id)
            and (card_number is None or exc.card_number == card_number)
        )
        return [(position, replace(exc)) for position, exc in found[:limit]]


class FakeParametersRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def latest_version(self) -> int:
        return max(self._state.parameters, default=0)

    def as_of(self, store_id: str, version: int) -> ParameterSet | None:
        stored = self._state.parameters
        found = [v for v, s in stored.items() if s.store_id == store_id and v <= version]
        return stored[max(found)] if found else None

    def latest(self, store_id: str) -> ParameterSet | None:
        return self.as_of(store_id, 2**62)

    def latest_overrides(self) -> list[ParameterSet]:
        newest: dict[str, ParameterSet] = {}
        for version in sorted(self._state.parameters):
            made = self._state.parameters[version]
            if made.store_id:
                newest[made.store_id] = made
        return [newest[store] for store in sorted(newest)]

    def add(self, parameter_set: ParameterSet) -> None:
        if parameter_set.version in self._state.parameters:
            raise _taken("parameters.version")
        self._state.parameters[parameter_set.version] = _stored(parameter_set)

    def list(self, *, store_id: str | None, before_version: int, limit: int
             ) -> list[ParameterSet]:
        versions = sorted(
            (v for v, s in self._state.parameters.items()
             if (before_version <= 0 or v < before_version)
             and (store_id is None or s.store_id == store_id)),
            reverse=True,
        )
        return [self._state.parameters[v] for v in versions[: max(limit, 0)]]


class FakeTerminalReportRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def get_many(self, terminal_ids: Collection[str]) -> dict[str, ReceivedReport]:
        reports = self._state.reports
        return {t: reports[t] for t in terminal_ids if t in reports}

    def save(self, terminal_id: str, received: ReceivedReport) -> bool:
        held = self._state.reports.get(terminal_id)
        if held is not None and held.report.reported_at > received.report.reported_at:
            return False
        self._state.reports[terminal_id] = received
        return True


class FakeTerminalRepository:
    def __init__(self, state: _State) -> None:
        self._state = state

    def get(self, terminal_id: str) -> Terminal | None:
        terminal = self._state.terminals.get(terminal_id)
        return None if terminal is None else replace(terminal)

    def get_for_update(self, terminal_id: str) -> Terminal | None:
        return self.get(terminal_id)

    def get_by_token_hash(self, token_hash: str) -> Terminal | None:
        owner = self._state.token_owners.get(token_hash)
        return None if owner is None else self.get(owner)

    def add(self, terminal: Terminal) -> None:
        if (
            terminal.terminal_id in self._state.terminals
            or terminal.token_hash in self._state.token_owners
        ):
            raise _taken("terminals.terminal_id or terminals.token_hash")
        self._state.terminals[terminal.terminal_id] = _stored(terminal)
        self._state.token_owners[terminal.token_hash] = terminal.terminal_id

    def save(self, terminal: Terminal) -> None:
        stored = self._state.terminals.get(terminal.terminal_id)
        if stored is None:
            return
        owner = self._state.token_owners.get(terminal.token_hash)
        if owner is not None and owner != terminal.terminal_id:
            raise _taken("terminals.token_hash")
        del self._state.token_owners[stored.token_hash]
        self._state.token_owners[terminal.token_hash] = terminal.terminal_id
        self._state.terminals[terminal.terminal_id] = _stored(
            replace(terminal, registered_at=stored.registered_at)
        )

    def announce(self, terminal_id: str) -> None:
        """One process: nobody else to tell."""

    def list(self, *, after_terminal_id: str, limit: int) -> list[Terminal]:
        ids = sorted(t for t in self._state.terminals if t > after_terminal_id)
        return [replace(self._state.terminals[t]) for t in ids[: max(limit, 0)]]


class FakeUnitOfWork:
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

    def __init__(self, storage: FakeStorage) -> None:
        self._storage = storage
        self._state: _State | None = None

    def __enter__(self) -> Self:
        self._storage.gate.acquire()
        self._begin()
        return self

    def _begin(self) -> None:
        state = self._state = self._storage.committed.copy()
        self._seen = SeenCards()
        self.cards = FakeCardRepository(state, self._seen)
        self.lock_history = FakeLockHistoryRepository(state)
        self.journal = FakeJournalRepository(state)
        self.redemptions = FakeRedemptionRepository(state)
        self.requests = FakeRequestLog(state)
        self.offline = FakeOfflineRecordRepository(state)
        self.exceptions = FakeOfflineExceptionRepository(state)
        self.parameters = FakeParametersRepository(state)
        self.terminals = FakeTerminalRepository(state)
        self.reports = FakeTerminalReportRepository(state)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = None  # whatever was not committed is dropped
        self._storage.gate.release()

    def commit(self) -> None:
        if self._state is None:
            raise RuntimeError("commit() outside the unit of work's `with` block")
        self._seen.append_journal(self.journal)
        self._storage.committed = self._state
        self._begin()  # work after a commit goes on in a new transaction


class FakeStorage:
    """`FakeStorage()`: an empty database. Units of work take turns (one at a time)."""

    def __init__(self) -> None:
        self.committed = _State()
        self.gate = threading.RLock()

    def unit_of_work(self, *, write: bool) -> FakeUnitOfWork:
        return FakeUnitOfWork(self)

    def close(self) -> None:
        pass
