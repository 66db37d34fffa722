"""HQ's services on one storage backend, driven the way tills and the back office drive them,
for the offline sync rule tests (tests/integration/test_offline_*.py)."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service_loop import ServiceLoop

from storedvalue.hq import records
from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.journal import journal_balance
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineException,
    OfflineRedeemLine,
    OfflineTransaction,
    OfflineUnlock,
)
from storedvalue.hq.domain.parameters import ParametersChange
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.offline import OfflineService, SyncLimits, SyncOutcome
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.services.throttle import UnknownCardThrottle
from storedvalue.hq.services.unit_of_work import Storage

NOW = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
TILL = "till-1"


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: timedelta) -> None:
        self.now += by


class HQ:
    """The HQ's services on one storage backend, with the card numbers it issued."""

    def __init__(self, storage: Storage, *, throttle: UnknownCardThrottle | None = None
                 ) -> None:
        self.storage = storage
        self.loop = ServiceLoop(storage)
        self.run = self.loop.run
        transactions = self.transactions = self.loop.transactions
        self.ids = itertools.count(1)
        self.clock = Clock()
        self.throttle = throttle or UnknownCardThrottle()
        self.cards = CardService(transactions, clock=self.clock, throttle=self.throttle)
        self.offline = OfflineService(
            transactions, clock=self.clock, throttle=self.throttle,
            limits=SyncLimits(max_transactions_per_batch=20, max_lines_per_transaction=3),
        )
        self.back_office = BackOfficeService(transactions, clock=self.clock)
        params = ParametersService(transactions, clock=self.clock)
        self.run(params.ensure_initialized())
        self.version_allowing_gift_cards_only = self.run(params.update(
            key=self.key("admin:t", "UpdateParameters"), updated_by="t",
            change=ParametersChange(True, False), expected_version=0)).version
        for till in (TILL, "till-2"):
            self.run(self.back_office.register_terminal(
                key=self.key("admin:t", "RegisterTerminal"), terminal_id=till, display_name=""))
        self.issued: list[str] = []

    def close(self) -> None:
        self.loop.close()

    def key(self, caller: str, operation: str) -> RequestKey:
        n = next(self.ids)
        return RequestKey(caller, f"r{n}", operation, hashlib.sha256(str(n).encode()).digest())

    def issue(self, amount: int, kind: CardKind = CardKind.GIFT_CARD) -> str:
        number = self.run(self.cards.issue_card(
            key=self.key(TILL, "IssueCard"), terminal_id=TILL, kind=kind,
            initial_value=Money(amount, "EUR"), card_number="", transaction_id="")).card_number
        self.issued.append(number)
        return number

    def lock(self, number: str, sale: str, till: str = TILL) -> int:
        return self.run(self.cards.lock_card(
            key=self.key(till, "LockCard"), terminal_id=till, card_number=number,
            transaction_id=sale)).lock.fencing_token

    def unlock(self, number: str, sale: str, token: int, till: str = TILL) -> None:
        self.run(self.cards.unlock_card(
            key=self.key(till, "UnlockCard"), terminal_id=till, card_number=number,
            transaction_id=sale, fencing_token=token))

    def force_unlock(self, number: str) -> None:
        self.run(self.back_office.force_unlock(
            key=self.key("admin:t", "ForceUnlockCard"), admin="t", card_number=number,
            reason="till stolen"))

    def lock_holder(self, number: str) -> tuple[str, str, int] | None:
        """Who holds the card's lock (ended leases included): terminal, sale, token."""
        locks = self.run(self.back_office.list_locks(terminal_id=None, include_expired=True,
                                                     after_card_number="", limit=1_000)).items
        for lock in locks:
            if lock.card_number == number:
                return lock.terminal_id, lock.transaction_id, lock.fencing_token
        return None

    def balance(self, number: str) -> int:
        """As the database holds it (no till's lookup limit in the way)."""
        card = self.run(self.transactions.read(lambda uow: uow.cards.get(number)))
        assert card is not None, number
        return card.balance_minor

    def sync(self, *transactions: OfflineTransaction, till: str = TILL) -> SyncOutcome:
        return self.run(self.offline.sync(
            key=self.key(till, "SyncOfflineBatch"), terminal_id=till,
            transactions=list(transactions)))

    def open_exceptions(self, card_number: str | None = None) -> tuple[OfflineException, ...]:
        return self.run(self.back_office.list_exceptions(
            include_resolved=False, terminal_id=None, card_number=card_number, after_position=0,
            limit=500)).items

    def assert_conservation(self) -> None:
        for number in self.issued:
            entries = self.run(self.back_office.list_journal(card_number=number, after_entry_id=0,
                                                             limit=1_000)).items
            assert journal_balance(entries) == self.balance(number), number


def offline(seq: int, *lines: OfflineRedeemLine, sale: str | None = None, version: int = 2,
            unlocks: tuple[OfflineUnlock, ...] = ()) -> OfflineTransaction:
    draft = OfflineTransaction(sale or f"sale-{seq}", seq, NOW, version, lines, unlocks)
    return OfflineTransaction(draft.transaction_id, seq, NOW, version, lines, unlocks,
                              fingerprint=hashlib.sha256(records.dumps(draft).encode()).digest())


def line(number: str, amount: int, line_id: str = "1", token: int = 1,
         currency: str = "EUR") -> OfflineRedeemLine:
    return OfflineRedeemLine(line_id, number, CardKind.GIFT_CARD, Money(amount, currency), token)
