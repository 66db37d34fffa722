"""Use cases end to end on the in-memory fake storage: idempotency, journal conservation,
offline sync with sequence gaps. No database, no network."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fakes import FakeStorage
from service_loop import ServiceLoop

from storedvalue.hq import records
from storedvalue.hq.domain.cards import CardKind, CardStatus
from storedvalue.hq.domain.errors import (
    CardLocked,
    CardNotFound,
    InsufficientFunds,
    InvalidField,
    LimitExceeded,
    ParametersVersionConflict,
    RateLimited,
    RequestIdReused,
)
from storedvalue.hq.domain.journal import journal_balance
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineOutcome,
    OfflineRedeemLine,
    OfflineTransaction,
    OfflineUnlock,
)
from storedvalue.hq.domain.parameters import ParametersChange
from storedvalue.hq.domain.terminals import SequenceGap
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.offline import OfflineService, SyncLimits, SyncOutcome
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.services.throttle import UnknownCardThrottle

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        return self.now


@dataclass
class HQ:
    storage: FakeStorage = field(default_factory=FakeStorage)
    clock: Clock = field(default_factory=Clock)
    counter: int = 0

    def __post_init__(self) -> None:
        self.loop = ServiceLoop(self.storage)
        self.run = self.loop.run
        self.transactions = self.loop.transactions
        self.cards = CardService(self.transactions, clock=self.clock)
        self.offline = OfflineService(self.transactions, clock=self.clock,
                                      limits=SyncLimits(max_transactions_per_batch=50))
        self.params = ParametersService(self.transactions, clock=self.clock)
        self.back_office = BackOfficeService(self.transactions, clock=self.clock)
        self.run(self.params.ensure_initialized())
        for terminal_id in ("till-1", "till-2"):
            self.run(self.back_office.register_terminal(
                key=self.key("admin:test", "RegisterTerminal", terminal_id),
                terminal_id=terminal_id, display_name=""))

    def key(self, caller: str, operation: str, content: object = None,
            request_id: str | None = None) -> RequestKey:
        self.counter += 1
        return RequestKey(caller, request_id or f"req-{self.counter}", operation,
                          hashlib.sha256(repr(content).encode()).digest())

    def sync_offline(self, terminal_id: str, transactions: list[OfflineTransaction]
                     ) -> SyncOutcome:
        return self.run(self.offline.sync(key=self.key(terminal_id, "SyncOfflineBatch"),
                                          terminal_id=terminal_id, transactions=transactions))

    def allow_offline(self) -> int:
        return self.run(self.params.update(
            key=self.key("admin:test", "UpdateParameters"), updated_by="test",
            change=ParametersChange(True, True), expected_version=0,
        )).version

    def gift_card(self, amount: int = 10_000) -> str:
        return self.run(self.cards.issue_card(
            key=self.key("till-1", "IssueCard"), terminal_id="till-1",
            kind=CardKind.GIFT_CARD, initial_value=Money(amount, "EUR"), card_number="",
            transaction_id="sale-issue")).card_number

    def lock(self, card_number: str, transaction_id: str, terminal_id: str = "till-1") -> int:
        return self.run(self.cards.lock_card(
            key=self.key(terminal_id, "LockCard"), terminal_id=terminal_id,
            card_number=card_number, transaction_id=transaction_id)).lock.fencing_token

    def journal_sum(self, card_number: str) -> int:
        entries = self.run(self.back_office.list_journal(card_number=card_number, after_entry_id=0,
                                                         limit=1000)).items
        return journal_balance(entries)


@pytest.fixture
def hq() -> Iterator[HQ]:
    services = HQ()
    yield services
    services.loop.close()


def offline_txn(seq: int, card: str, amount: int, *, params_version: int, token: int = 1,
                transaction_id: str | None = None) -> OfflineTransaction:
    draft = OfflineTransaction(
        transaction_id=transaction_id or f"off-{seq}", sequence_number=seq, completed_at=START,
        parameters_version=params_version,
        redeem_lines=(OfflineRedeemLine("l1", card, CardKind.GIFT_CARD, Money(amount, "EUR"),
                                        token),),
    )
    digest = hashlib.sha256(records.dumps(draft).encode()).digest()
    return OfflineTransaction(draft.transaction_id, seq, START, params_version,
                              draft.redeem_lines, (), digest)


def test_a_retried_request_returns_its_first_result_and_changes_nothing_more(hq: HQ) -> None:
    card = hq.gift_card(10_000)
    lock = hq.run(hq.cards.lock_card(
        key=hq.key("till-1", "LockCard", "x", "r-lock"), terminal_id="till-1",
        card_number=card, transaction_id="s1")).lock
    redeem_key = hq.key("till-1", "Redeem", ("s1", 2_500), "r-redeem")
    first = hq.run(hq.cards.redeem(
        key=redeem_key, terminal_id="till-1", card_number=card, transaction_id="s1",
        line_id="l1", fencing_token=lock.fencing_token, amount=Money(2_500, "EUR")))
    again = hq.run(hq.cards.redeem(
        key=redeem_key, terminal_id="till-1", card_number=card, transaction_id="s1",
        line_id="l1", fencing_token=lock.fencing_token, amount=Money(2_500, "EUR")))
    assert again == first
    assert hq.run(hq.cards.get_card(caller="till-1", card_number=card)).balance_minor == 7_500
    assert hq.journal_sum(card) == 7_500


def test_a_request_id_reused_with_other_content_is_refused_and_changes_nothing(hq: HQ) -> None:
    card = hq.gift_card(10_000)
    hq.run(hq.cards.add_value(key=hq.key("till-1", "AddValue", 100, "r-1"), terminal_id="till-1",
                              card_number=card, amount=Money(100, "EUR"), transaction_id="s"))
    with pytest.raises(RequestIdReused):
        hq.run(hq.cards.add_value(
            key=hq.key("till-1", "AddValue", 999, "r-1"), terminal_id="till-1",
            card_number=card, amount=Money(999, "EUR"), transaction_id="s"))
    assert hq.run(hq.cards.get_card(caller="till-1", card_number=card)).balance_minor == 10_100


def test_a_failed_redeem_changes_nothing_and_keeps_the_lock(hq: HQ) -> None:
    card = hq.gift_card(1_000)
    lock = hq.run(hq.cards.lock_card(key=hq.key("till-1", "LockCard"), terminal_id="till-1",
                                     card_number=card, transaction_id="s1")).lock
    with pytest.raises(InsufficientFunds):
        hq.run(hq.cards.redeem(
            key=hq.key("till-1", "Redeem"), terminal_id="till-1", card_number=card,
            transaction_id="s1", line_id="l1", fencing_token=lock.fencing_token,
            amount=Money(5_000, "EUR")))
    seen = hq.run(hq.cards.get_card(caller="till-1", card_number=card))
    assert seen.balance_minor == 1_000
    assert seen.lock is not None and seen.lock.fencing_token == lock.fencing_token


def test_the_lock_lease_comes_from_the_parameters_and_expires(hq: HQ) -> None:
    card = hq.gift_card()
    hq.run(hq.params.update(key=hq.key("admin:test", "UpdateParameters"), updated_by="test",
                            change=ParametersChange(lock_lease=timedelta(minutes=10)),
                            expected_version=0))
    lock = hq.run(hq.cards.lock_card(key=hq.key("till-1", "LockCard"), terminal_id="till-1",
                                     card_number=card, transaction_id="s1")).lock
    assert lock.lease_expires_at == START + timedelta(minutes=10)
    with pytest.raises(CardLocked):
        hq.run(hq.cards.lock_card(key=hq.key("till-2", "LockCard"), terminal_id="till-2",
                                  card_number=card, transaction_id="s2"))
    hq.clock.now = START + timedelta(minutes=11)
    taken = hq.run(hq.cards.lock_card(key=hq.key("till-2", "LockCard"), terminal_id="till-2",
                                      card_number=card, transaction_id="s2")).lock
    assert taken.fencing_token > lock.fencing_token


def test_parameters_updates_are_versioned_and_checked_against_the_expected_version(hq: HQ) -> None:
    v2 = hq.allow_offline()
    assert hq.run(hq.params.current()).version == v2 == 2
    with pytest.raises(ParametersVersionConflict):
        hq.run(hq.params.update(key=hq.key("admin:test", "UpdateParameters"), updated_by="test",
                                change=ParametersChange(False), expected_version=1))
    with pytest.raises(InvalidField):
        hq.run(hq.params.update(key=hq.key("admin:test", "UpdateParameters"), updated_by="test",
                                change=ParametersChange(lock_lease=timedelta(seconds=5)),
                                expected_version=0))
    latest = hq.params.feed.latest()
    assert latest is not None and latest.version == 2


def test_the_same_batch_delivered_three_times_changes_nothing_after_the_first(hq: HQ) -> None:
    version = hq.allow_offline()
    cards = [hq.gift_card(10_000) for _ in range(3)]
    batch = [offline_txn(n, card, 1_000, params_version=version,
                         token=hq.lock(card, f"off-{n}"))
             for n, card in enumerate(cards, start=1)]
    first = hq.sync_offline("till-1", batch)
    assert [r.outcome for r in first.results] == [OfflineOutcome.APPLIED] * 3
    for _ in range(2):
        again = hq.sync_offline("till-1", batch)
        assert [r.outcome for r in again.results] == [OfflineOutcome.ALREADY_APPLIED] * 3
        assert [r.line_results for r in again.results] == [r.line_results for r in first.results]
    for card in cards:
        assert hq.run(hq.cards.get_card(caller="till-1", card_number=card)).balance_minor == 9_000
        assert hq.journal_sum(card) == 9_000
    assert first.status.highest_contiguous_sequence == 3


def test_sequence_gaps_are_reported_until_the_missing_transaction_arrives(hq: HQ) -> None:
    version = hq.allow_offline()
    card = hq.gift_card(10_000)
    txns = [offline_txn(n, card, 100, params_version=version) for n in range(1, 6)]
    first = hq.sync_offline("till-1", [txns[0], txns[3], txns[4]])
    assert first.status.gaps == (SequenceGap(2, 3),)
    assert first.status.highest_contiguous_sequence == 1
    assert hq.run(hq.back_office.get_sync_status(terminal_id="till-1")).gaps == (SequenceGap(2, 3),)
    filled = hq.sync_offline("till-1", [txns[1], txns[2]])
    assert filled.status.gaps == ()
    assert filled.status.highest_contiguous_sequence == 5


def test_over_the_batch_limit_nothing_of_the_batch_is_applied(hq: HQ) -> None:
    version = hq.allow_offline()
    card = hq.gift_card(10_000)
    batch = [offline_txn(n, card, 1, params_version=version) for n in range(1, 52)]
    with pytest.raises(LimitExceeded):
        hq.sync_offline("till-1", batch)
    assert hq.run(hq.cards.get_card(caller="till-1", card_number=card)).balance_minor == 10_000


def test_an_offline_overdraft_flags_the_card_until_the_back_office_resolves_it(hq: HQ) -> None:
    version = hq.allow_offline()
    card = hq.gift_card(1_000)
    token = hq.lock(card, "off-1")
    outcome = hq.sync_offline("till-1", [
        offline_txn(1, card, 3_000, params_version=version, token=token)])
    (result,) = outcome.results
    assert result.outcome is OfflineOutcome.APPLIED_WITH_EXCEPTION
    assert hq.run(hq.cards.get_card(caller="till-1", card_number=card)).status is CardStatus.FLAGGED
    assert hq.journal_sum(card) == -2_000
    (exc_id,) = result.exception_ids
    resolved = hq.run(hq.back_office.resolve_exception(
        key=hq.key("admin:test", "ResolveOfflineException"), admin="alice",
        exception_id=exc_id, resolution="customer paid the difference"))
    assert resolved.card is not None and resolved.card.status is CardStatus.ACTIVE
    assert resolved.exception.resolved_by == "alice"


def test_sync_releases_the_terminals_lock_and_applies_queued_unlocks(hq: HQ) -> None:
    version = hq.allow_offline()
    sold, abandoned = hq.gift_card(), hq.gift_card()
    lock = hq.run(hq.cards.lock_card(key=hq.key("till-1", "LockCard"), terminal_id="till-1",
                                     card_number=sold, transaction_id="off-1")).lock
    hq.run(hq.cards.lock_card(key=hq.key("till-1", "LockCard"), terminal_id="till-1",
                              card_number=abandoned, transaction_id="sale-x"))
    txn = offline_txn(1, sold, 500, params_version=version, token=lock.fencing_token)
    txn = OfflineTransaction(txn.transaction_id, 1, START, version, txn.redeem_lines,
                             (OfflineUnlock(abandoned, "sale-x", 1),), b"digest")
    hq.sync_offline("till-1", [txn])
    locks = hq.run(hq.back_office.list_locks(terminal_id="till-1", include_expired=True,
                                             after_card_number="", limit=10)).items
    assert locks == ()
    # Another terminal can now use both cards.
    hq.run(hq.cards.lock_card(key=hq.key("till-2", "LockCard"), terminal_id="till-2",
                              card_number=sold, transaction_id="s9"))


def test_every_card_journal_sums_to_its_balance_after_a_mixed_day(hq: HQ) -> None:
    version = hq.allow_offline()
    memo = hq.run(hq.cards.issue_card(key=hq.key("till-1", "IssueCard"), terminal_id="till-1",
                                      kind=CardKind.CREDIT_MEMO, initial_value=Money(5_000, "EUR"),
                                      card_number="", transaction_id="return-1")).card_number
    gift = hq.gift_card(2_000)
    lock = hq.run(hq.cards.lock_card(key=hq.key("till-1", "LockCard"), terminal_id="till-1",
                                     card_number=memo, transaction_id="s1")).lock
    redeemed = hq.run(hq.cards.redeem(key=hq.key("till-1", "Redeem"), terminal_id="till-1",
                                      card_number=memo, transaction_id="s1", line_id="l1",
                                      fencing_token=lock.fencing_token, amount=Money(1_500, "EUR")))
    assert redeemed.remainder_credit_memo is not None
    remainder = redeemed.remainder_credit_memo.card_number
    hq.sync_offline("till-2", [offline_txn(1, gift, 2_600, params_version=version)])
    hq.run(hq.cards.add_value(
        key=hq.key("till-1", "AddValue"), terminal_id="till-1", card_number=gift,
        amount=Money(900, "EUR"), transaction_id="s3"))
    for number in (memo, gift, remainder):
        balance = hq.run(hq.cards.get_card(caller="till-1", card_number=number)).balance_minor
        assert hq.journal_sum(number) == balance
    assert hq.run(hq.cards.get_card(caller="till-1", card_number=remainder)).balance_minor == 3_500


def test_probing_unknown_cards_through_redeem_is_rate_limited_too(hq: HQ) -> None:
    hq.cards = CardService(hq.transactions, clock=hq.clock,
                           throttle=UnknownCardThrottle(limit=2, window_seconds=60))
    unknown = "79927398713"
    for _ in range(2):
        with pytest.raises(CardNotFound):
            hq.run(hq.cards.redeem(key=hq.key("till-1", "Redeem"), terminal_id="till-1",
                                   card_number=unknown, transaction_id="s", line_id="1",
                                   fencing_token=1, amount=Money(1, "EUR")))
    with pytest.raises(RateLimited):
        hq.run(hq.cards.unlock_card(key=hq.key("till-1", "UnlockCard"), terminal_id="till-1",
                                    card_number=unknown, transaction_id="s", fencing_token=1))


def test_a_display_name_longer_than_its_column_is_refused_before_anything_is_stored(hq: HQ) -> None:
    with pytest.raises(InvalidField):
        hq.run(hq.back_office.register_terminal(key=hq.key("admin:test", "RegisterTerminal"),
                                                terminal_id="till-9", display_name="x" * 201))
    assert [t.terminal.terminal_id for t in hq.run(hq.back_office.list_terminals(
        after_terminal_id="", limit=10)).items] == ["till-1", "till-2"]


def test_a_registered_terminal_gets_its_token_once_and_a_retry_gets_none(hq: HQ) -> None:
    key = hq.key("admin:test", "RegisterTerminal", "till-9")
    first = hq.run(hq.back_office.register_terminal(key=key, terminal_id="till-9", display_name=""))
    again = hq.run(hq.back_office.register_terminal(key=key, terminal_id="till-9", display_name=""))
    assert first.bearer_token.startswith("svt_")
    assert again.bearer_token == ""
    assert again.terminal == first.terminal


def test_a_batch_that_arrives_before_the_one_it_follows_waits_for_it(hq: HQ) -> None:
    # A till keeps two batches in flight; the later one can reach HQ first. Applied first,
    # it would be judged against a highest sequence number the earlier batch has not raised
    # yet: with a jump limit of 2, transactions 4 and 5 would be rejected after 1.
    version = hq.allow_offline()
    offline = OfflineService(hq.transactions, clock=hq.clock,
                             limits=SyncLimits(max_sequence_jump=2))
    cards = [hq.gift_card(10_000) for _ in range(5)]
    txns = [offline_txn(n, cards[n - 1], 100, params_version=version) for n in range(1, 6)]

    def sync(batch: list[OfflineTransaction]) -> Coroutine[Any, Any, SyncOutcome]:
        return offline.sync(key=hq.key("till-1", "SyncOfflineBatch", batch),
                            terminal_id="till-1", transactions=batch)

    hq.run(sync(txns[:1]))

    async def later_first() -> tuple[SyncOutcome, SyncOutcome]:
        later = asyncio.create_task(sync(txns[3:]))
        await asyncio.sleep(0)  # the later batch runs up to where it waits
        earlier = await sync(txns[1:3])
        return earlier, await later

    earlier, later = hq.run(later_first())
    outcomes = [r.outcome for r in [*earlier.results, *later.results]]
    assert OfflineOutcome.REJECTED not in outcomes
    assert later.status.highest_contiguous_sequence == 5
    entries = {number: hq.run(hq.back_office.list_journal(
        card_number=number, after_entry_id=0, limit=10)).items[-1].entry_id for number in cards}
    # In the ledger, the batches in the till's order (within one, in card-number order).
    assert entries[cards[0]] < min(entries[n] for n in cards[1:3]) < min(
        entries[n] for n in cards[3:])
    assert max(entries[n] for n in cards[1:3]) < min(entries[n] for n in cards[3:])
