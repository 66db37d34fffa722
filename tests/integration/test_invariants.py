"""The brief's invariants under random sequences of operations (hypothesis state machines),
on the in-memory fake and on a real SQLite database through the real services:

- conservation: every card's journal sums to its balance;
- a lock's fencing token only grows, and at most one live lock per card;
- online redemptions never overdraw (only offline sync can, and then the card is flagged);
- every offline transaction is applied exactly once, however often it is resent, reversals
  of lines (debited or not) included;
- a refused call changes nothing.
"""

from __future__ import annotations

import hashlib
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
from fakes import FakeStorage
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from service_loop import ServiceLoop

from storedvalue.hq import records
from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, luhn_check_digit
from storedvalue.hq.domain.errors import StoredValueError
from storedvalue.hq.domain.journal import JournalEntryKind, journal_balance
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineOutcome,
    OfflineRedeemLine,
    OfflineReversal,
    OfflineTransaction,
)
from storedvalue.hq.domain.parameters import ParametersChange
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.services.unit_of_work import Storage
from storedvalue.hq.storage import SqlStorage, upgrade_to_head

TILLS = ("till-1", "till-2")
START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
amounts = st.integers(min_value=1, max_value=6_000)


class StoredValueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.storage = self.open_storage()
        clock = lambda: self.now  # noqa: E731 - the services read the machine's clock
        # Deterministic card numbers: hypothesis replays draws, and which card a draw picks
        # must not depend on random numbers.
        serials = itertools.count(1)

        def new_card_number() -> str:
            body = f"7{next(serials):014d}"
            return body + luhn_check_digit(body)

        self.loop = ServiceLoop(self.storage)
        self.run = self.loop.run
        transactions = self.loop.transactions
        self.cards = CardService(transactions, clock=clock, new_card_number=new_card_number)
        self.offline = OfflineService(transactions, clock=clock, new_card_number=new_card_number)
        self.params = ParametersService(transactions, clock=clock)
        self.back_office = BackOfficeService(transactions, clock=clock)
        self.ids = itertools.count(1)
        self.run(self.params.ensure_initialized())
        self.params_version = self.run(self.params.update(
                     key=self.key("admin:test", "UpdateParameters"), updated_by="test",
                     change=ParametersChange(True, True, timedelta(minutes=30)), expected_version=0,
                 )).version
        for till in TILLS:
            self.run(self.back_office.register_terminal(
                key=self.key("admin:test", "RegisterTerminal"), terminal_id=till,
                display_name=""))
        self.numbers: list[str] = []
        self.held: dict[tuple[str, str], tuple[str, int]] = {}  # (till, card) -> (sale, token)
        self.highest_token: dict[str, int] = {}
        self.sent: dict[str, list[OfflineTransaction]] = {till: [] for till in TILLS}
        # Lines debited online, which the till may reverse: (till, sale) -> (card, amount).
        self.redeemed: dict[tuple[str, str], tuple[str, int]] = {}
        self.applied_offline_lines = 0

    def open_storage(self) -> Storage:
        return FakeStorage()

    def teardown(self) -> None:
        try:
            self.loop.close()
        finally:
            self.storage.close()

    def key(self, caller: str, operation: str) -> RequestKey:
        n = next(self.ids)
        return RequestKey(caller, f"r{n}", operation, hashlib.sha256(str(n).encode()).digest())

    def card(self, number: str) -> Card:
        return self.run(self.cards.get_card(caller="admin", card_number=number))

    def attempt(self, number: str, call: Any) -> None:
        """Run `call`; if HQ refuses it, the card must be exactly as before."""
        before = self.card(number)
        try:
            call()
        except StoredValueError:
            assert self.card(number) == before

    # -- rules ------------------------------------------------------------------------------

    @rule(kind=st.sampled_from(CardKind), amount=amounts)
    def issue(self, kind: CardKind, amount: int) -> None:
        card = self.run(self.cards.issue_card(
                     key=self.key("till-1", "IssueCard"), terminal_id="till-1", kind=kind,
                     initial_value=Money(amount, "EUR"), card_number="", transaction_id="issue"))
        self.numbers.append(card.card_number)

    @precondition(lambda self: self.numbers)
    @rule(data=st.data(), till=st.sampled_from(TILLS))
    def lock(self, data: st.DataObject, till: str) -> None:
        number = data.draw(st.sampled_from(self.numbers))
        sale = f"sale-{next(self.ids)}"
        try:
            lock = self.run(self.cards.lock_card(key=self.key(till, "LockCard"), terminal_id=till,
                                                 card_number=number, transaction_id=sale)).lock
        except StoredValueError:
            return
        assert lock.fencing_token > self.highest_token.get(number, 0)
        self.highest_token[number] = lock.fencing_token
        for other in TILLS:
            self.held.pop((other, number), None)
        self.held[(till, number)] = (sale, lock.fencing_token)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), amount=amounts)
    def redeem(self, data: st.DataObject, amount: int) -> None:
        till, number = data.draw(st.sampled_from(sorted(self.held)))
        sale, token = self.held[(till, number)]
        before = self.card(number)

        def run() -> None:
            self.run(self.cards.redeem(
                key=self.key(till, "Redeem"), terminal_id=till, card_number=number,
                transaction_id=sale, line_id="1", fencing_token=token,
                amount=Money(amount, "EUR")))
            self.held.pop((till, number))
            self.redeemed[(till, sale)] = (number, amount)

        self.attempt(number, run)
        after = self.card(number)
        if after.balance_minor != before.balance_minor:  # redeemed online: never overdrawn
            assert after.balance_minor >= 0

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def unlock(self, data: st.DataObject) -> None:
        till, number = data.draw(st.sampled_from(sorted(self.held)))
        sale, token = self.held.pop((till, number))
        self.attempt(number, lambda: self.run(self.cards.unlock_card(
                     key=self.key(till, "UnlockCard"), terminal_id=till, card_number=number,
                     transaction_id=sale, fencing_token=token)))

    @precondition(lambda self: self.numbers)
    @rule(data=st.data(), amount=amounts)
    def add_value(self, data: st.DataObject, amount: int) -> None:
        number = data.draw(st.sampled_from(self.numbers))
        self.attempt(number, lambda: self.run(self.cards.add_value(
                     key=self.key("till-2", "AddValue"), terminal_id="till-2", card_number=number,
                     amount=Money(amount, "EUR"), transaction_id="load")))

    @precondition(lambda self: self.numbers)
    @rule(data=st.data(), till=st.sampled_from(TILLS), amount=amounts)
    def complete_offline(self, data: st.DataObject, till: str, amount: int) -> None:
        """The till lost HQ and completed a sale offline (possibly overdrawing the card)."""
        number = data.draw(st.sampled_from(self.numbers))
        sale, token = self.held.pop((till, number), (f"sale-{next(self.ids)}", 0))
        seq = len(self.sent[till]) + 1
        draft = OfflineTransaction(
            transaction_id=sale, sequence_number=seq, completed_at=self.now,
            parameters_version=self.params_version,
            redeem_lines=(OfflineRedeemLine("1", number, None, Money(amount, "EUR"), token),))
        txn = OfflineTransaction(
            sale, seq, self.now, self.params_version, draft.redeem_lines, (),
            hashlib.sha256(records.dumps(draft).encode()).digest())
        self.sent[till].append(txn)

    @precondition(lambda self: self.held or self.redeemed)
    @rule(data=st.data())
    def reverse(self, data: st.DataObject) -> None:
        """The till gives up line "1" of a sale: debited online, or only locked (its Redeem
        may have been lost on the way). The reversal travels in the sale's offline
        transaction."""
        choices = [("held", key) for key in sorted(self.held)]
        choices += [("redeemed", key) for key in sorted(self.redeemed)]
        source, key = data.draw(st.sampled_from(choices))
        if source == "held":
            till, number = key
            sale, token = self.held.pop(key)
            amount = 100
        else:
            till, sale = key
            number, amount = self.redeemed.pop(key)
            token = 0
        seq = len(self.sent[till]) + 1
        reversal = OfflineReversal("1", number, Money(amount, "EUR"), token)
        draft = OfflineTransaction(sale, seq, self.now, self.params_version, (), (), b"",
                                   (reversal,))
        self.sent[till].append(OfflineTransaction(
            sale, seq, self.now, self.params_version, (), (),
            hashlib.sha256(records.dumps(draft).encode()).digest(), (reversal,)))

    @rule(till=st.sampled_from(TILLS), resend=st.booleans())
    def sync(self, till: str, resend: bool) -> None:
        """The till syncs its outbox; with `resend`, everything it ever sent goes again."""
        batch = self.sent[till] if resend else self.sent[till][-3:]
        if not batch:
            return
        outcome = self.run(self.offline.sync(
            key=self.key(till, "SyncOfflineBatch"), terminal_id=till, transactions=batch))
        for result in outcome.results:
            if result.outcome in (OfflineOutcome.APPLIED, OfflineOutcome.APPLIED_WITH_EXCEPTION):
                self.applied_offline_lines += sum(
                    1 for line in result.line_results if line.reason != "ALREADY_REDEEMED_ONLINE"
                )

    @precondition(lambda self: self.numbers)
    @rule(data=st.data())
    def force_unlock(self, data: st.DataObject) -> None:
        number = data.draw(st.sampled_from(self.numbers))
        self.run(self.back_office.force_unlock(key=self.key("admin:test", "ForceUnlockCard"),
                                               admin="alice", card_number=number, reason="stuck"))
        for till in TILLS:
            self.held.pop((till, number), None)

    @rule(minutes=st.integers(min_value=1, max_value=45))
    def time_passes(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def journals_sum_to_balances_and_overdrafts_are_flagged(self) -> None:
        offline_debits = 0
        for number in self.numbers:
            card = self.card(number)
            entries = self.run(self.back_office.list_journal(card_number=number, after_entry_id=0,
                                                             limit=10_000)).items
            assert journal_balance(entries) == card.balance_minor
            offline_debits += sum(
                1 for e in entries if e.kind is JournalEntryKind.REDEEM and e.offline)
            if card.balance_minor < 0:
                assert card.status is CardStatus.FLAGGED
        assert offline_debits == self.applied_offline_lines

    @invariant()
    def at_most_one_live_lock_per_card(self) -> None:
        locks = self.run(self.back_office.list_locks(terminal_id=None, include_expired=False,
                                                     after_card_number="", limit=10_000)).items
        numbers = [lock.card_number for lock in locks]
        assert len(numbers) == len(set(numbers))


class SqliteStoredValueMachine(StoredValueMachine):
    def open_storage(self) -> Storage:
        upgrade_to_head("sqlite://")  # each memory database is new: migrate the shared one
        storage = SqlStorage.from_url("sqlite://")
        upgrade_to_head(storage.engine)
        return storage


TestInvariantsOnTheFake = StoredValueMachine.TestCase
TestInvariantsOnTheFake.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestInvariantsOnSqlite = SqliteStoredValueMachine.TestCase
TestInvariantsOnSqlite.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
