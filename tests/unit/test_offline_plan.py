"""The rules for applying offline transactions, on the pure planner (no database)."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from datetime import UTC, datetime, timedelta

from storedvalue.hq import records
from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, generate_card_number, issue_card
from storedvalue.hq.domain.journal import journal_balance
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineBatchPlan,
    OfflineExceptionKind,
    OfflineLineOutcome,
    OfflineOutcome,
    OfflineRecord,
    OfflineRedeemLine,
    OfflineTransaction,
    OfflineUnlock,
    Redemption,
    plan_offline_batch,
)
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.domain.parameters import Parameters, initial_parameters

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
LEASE = timedelta(hours=4)
T1 = "till-1"


def allowing(gift: bool = True, memo: bool = True) -> dict[int, Parameters]:
    base = initial_parameters(NOW)
    return {
        1: base,
        2: Parameters(2, gift, memo, LEASE, NOW, "test"),
    }


def new_card(kind: CardKind = CardKind.GIFT_CARD, amount: int = 10_000) -> Card:
    card = issue_card(card_number=generate_card_number(), kind=kind, value=Money(amount, "EUR"),
                      terminal_id="hq", transaction_id="issue", now=NOW)
    card.pending_entries.clear()
    return card


def txn(seq: int, *lines: OfflineRedeemLine, unlocks: tuple[OfflineUnlock, ...] = (),
        transaction_id: str | None = None, params_version: int = 2) -> OfflineTransaction:
    draft = OfflineTransaction(
        transaction_id=transaction_id or f"sale-{seq}", sequence_number=seq, completed_at=NOW,
        parameters_version=params_version, redeem_lines=lines, unlocks=unlocks,
    )
    digest = hashlib.sha256(records.dumps(draft).encode()).digest()
    return dataclasses.replace(draft, fingerprint=digest)


def line(card: Card, amount: int, line_id: str = "l1", token: int = 1) -> OfflineRedeemLine:
    return OfflineRedeemLine(line_id=line_id, card_number=card.card_number, card_kind=card.kind,
                             amount=Money(amount, card.currency), fencing_token=token)


_numbers = itertools.count(1)


def plan(transactions: list[OfflineTransaction], cards: list[Card], *,
         known: dict[str, OfflineRecord] | None = None,
         redemptions: dict[tuple[str, str, str], Redemption] | None = None,
         parameters: dict[int, Parameters] | None = None,
         owners: dict[int, str] | None = None, highest_sequence_seen: int = 0,
         unknown_card_budget: int = 20, history: list[LockGrant] | None = None
         ) -> OfflineBatchPlan:
    """The lock history holds `history` and the locks the cards hold now (as `lock_for`
    takes them)."""
    return plan_offline_batch(
        terminal_id=T1, transactions=transactions, cards={c.card_number: c for c in cards},
        known=known or {}, sequence_owners=owners or {}, redemptions=redemptions or {},
        parameters=parameters if parameters is not None else allowing(),
        lock_grants=[*(history or ()),
                     *(LockGrant.of(c.lock) for c in cards if c.lock is not None)],
        highest_sequence_seen=highest_sequence_seen, unknown_card_budget=unknown_card_budget,
        now=NOW, new_card_number=generate_card_number,
    )


def lock_for(card: Card, transaction_id: str, terminal_id: str = T1) -> int:
    return card.acquire_lock(terminal_id=terminal_id, transaction_id=transaction_id, now=NOW,
                             lease=LEASE).fencing_token


def test_an_allowed_offline_sale_is_applied_and_unlocks_the_card() -> None:
    card = new_card()
    token = lock_for(card, "sale-1")
    result = plan([txn(1, line(card, 2_500, token=token))], [card])
    (outcome,) = result.results
    assert outcome.outcome is OfflineOutcome.APPLIED and outcome.reason == ""
    assert outcome.line_results[0].balance_after == Money(7_500, "EUR")
    assert card.balance_minor == 7_500 and card.lock is None
    assert [r.key for r in result.redemptions] == [(T1, "sale-1", "l1")]
    assert not result.exceptions


def test_a_resent_transaction_is_already_applied_with_its_first_outcome() -> None:
    card = new_card()
    first_txn = txn(1, line(card, 2_500))
    first = plan([first_txn], [card])
    again = plan([first_txn], [card], known={"sale-1": first.records[0]})
    (outcome,) = again.results
    assert outcome.outcome is OfflineOutcome.ALREADY_APPLIED
    assert outcome.original_outcome is first.results[0].outcome
    assert outcome.line_results == first.results[0].line_results
    assert card.balance_minor == 7_500  # debited once
    assert not again.records and not again.redemptions


def test_the_same_transaction_id_with_other_content_is_kept_for_review_not_applied() -> None:
    card = new_card()
    first = plan([txn(1, line(card, 2_500))], [card])
    changed = txn(1, line(card, 9_000))
    conflict = plan([changed], [card], known={"sale-1": first.records[0]})
    (outcome,) = conflict.results
    assert outcome.outcome is OfflineOutcome.REJECTED and outcome.reason == "TRANSACTION_CONFLICT"
    (kept,) = conflict.exceptions
    assert kept.kind is OfflineExceptionKind.CONFLICT and kept.transaction == changed
    assert card.balance_minor == 7_500


def test_a_line_already_redeemed_online_is_not_applied_again() -> None:
    card = new_card()
    online = Redemption(T1, "sale-1", "l1", card.card_number, 2_500, "EUR", "", False, NOW)
    card.balance_minor = 7_500  # the online Redeem whose answer never reached the till
    result = plan([txn(1, line(card, 2_500))], [card], redemptions={online.key: online})
    (outcome,) = result.results
    assert outcome.outcome is OfflineOutcome.APPLIED
    assert outcome.line_results[0].outcome is OfflineLineOutcome.ALREADY_REDEEMED_ONLINE
    assert card.balance_minor == 7_500 and not result.redemptions


def test_an_offline_overdraft_is_applied_flags_the_card_and_records_an_exception() -> None:
    card = new_card(amount=1_000)
    token = lock_for(card, "sale-1")
    result = plan([txn(1, line(card, 4_000, token=token))], [card])
    (outcome,) = result.results
    assert outcome.outcome is OfflineOutcome.APPLIED_WITH_EXCEPTION
    assert outcome.reason == "OFFLINE_OVERDRAFT"
    assert card.balance_minor == -3_000 and card.status is CardStatus.FLAGGED
    (exc,) = result.exceptions
    assert exc.kind is OfflineExceptionKind.OVERDRAFT and exc.card_number == card.card_number
    assert outcome.exception_ids == (exc.exception_id,)


def test_a_kind_the_applied_parameters_did_not_allow_is_applied_and_recorded() -> None:
    memo = new_card(CardKind.CREDIT_MEMO, 3_000)
    token = lock_for(memo, "sale-1")
    result = plan([txn(1, line(memo, 3_000, token=token))], [memo],
                  parameters=allowing(memo=False))
    (outcome,) = result.results
    assert outcome.outcome is OfflineOutcome.APPLIED_WITH_EXCEPTION
    assert outcome.reason == "OFFLINE_NOT_ALLOWED"
    assert memo.balance_minor == 0
    assert [e.kind for e in result.exceptions] == [OfflineExceptionKind.OFFLINE_NOT_ALLOWED]


def test_a_parameters_version_hq_never_issued_allows_nothing() -> None:
    card = new_card()
    result = plan([txn(1, line(card, 100), params_version=0)], [card])
    assert result.results[0].reason == "OFFLINE_NOT_ALLOWED"


def test_an_unknown_card_rejects_the_whole_transaction_and_keeps_it_for_review() -> None:
    known_card = new_card()
    ghost = new_card()
    bad = txn(1, line(known_card, 100, "l1"), line(ghost, 100, "l2"))
    result = plan([bad], [known_card])  # the ghost card is not in the database
    (outcome,) = result.results
    assert outcome.outcome is OfflineOutcome.REJECTED and outcome.reason == "CARD_NOT_FOUND"
    assert known_card.balance_minor == 10_000  # all-or-nothing: the good line was not applied
    (kept,) = result.exceptions
    assert kept.kind is OfflineExceptionKind.REJECTED and kept.transaction == bad
    assert result.records[0].result.outcome is OfflineOutcome.REJECTED  # not silently dropped


def test_a_malformed_line_is_rejected_with_its_reason() -> None:
    card = new_card()
    zero = OfflineRedeemLine("l1", card.card_number, card.kind, Money(0, "EUR"), 1)
    wrong_currency = OfflineRedeemLine("l1", card.card_number, card.kind, Money(5, "USD"), 1)
    bad_number = OfflineRedeemLine("l1", "1234", card.kind, Money(5, "EUR"), 1)
    result = plan([txn(1, zero), txn(2, wrong_currency), txn(3, bad_number)], [card])
    assert [r.reason for r in result.results] == [
        "INVALID_AMOUNT", "CURRENCY_MISMATCH", "INVALID_CARD_NUMBER"]
    assert all(r.outcome is OfflineOutcome.REJECTED for r in result.results)
    assert card.balance_minor == 10_000


def test_someone_elses_lock_is_left_alone_and_queued_unlocks_are_applied() -> None:
    spent = new_card()
    ours = LockGrant.of(spent.acquire_lock(terminal_id=T1, transaction_id="sale-1", now=NOW,
                                           lease=LEASE))
    spent.acquire_lock(terminal_id="till-2", transaction_id="sale-9", now=NOW + 2 * LEASE,
                       lease=LEASE)  # taken over after our lease ended
    abandoned = new_card()
    lock_for(abandoned, "sale-0")
    result = plan([txn(1, line(spent, 100, token=ours.fencing_token),
                       unlocks=(OfflineUnlock(abandoned.card_number, "sale-0", 1),))],
                  [spent, abandoned], history=[ours])
    assert result.results[0].outcome is OfflineOutcome.APPLIED
    assert spent.lock is not None and spent.lock.terminal_id == "till-2"
    assert abandoned.lock is None


def test_a_credit_memo_redeemed_for_less_offline_gets_its_remainder_memo() -> None:
    memo = new_card(CardKind.CREDIT_MEMO, 5_000)
    result = plan([txn(1, line(memo, 1_500))], [memo])
    (line_result,) = result.results[0].line_results
    (remainder,) = result.new_cards
    assert line_result.remainder_credit_memo_number == remainder.card_number
    assert remainder.balance_minor == 3_500 and remainder.kind is CardKind.CREDIT_MEMO
    assert remainder.remainder_of_card_number == memo.card_number
    assert memo.balance_minor == 0 and memo.status is CardStatus.REDEEMED
    assert journal_balance(memo.pending_entries) == -5_000
    assert journal_balance(remainder.pending_entries) == 3_500


def test_a_sequence_number_taken_by_another_transaction_is_a_conflict() -> None:
    card = new_card()
    result = plan([txn(1, line(card, 100), transaction_id="sale-x")], [card],
                  owners={1: "sale-1"})
    assert result.results[0].reason == "TRANSACTION_CONFLICT"
    assert card.balance_minor == 10_000


def test_later_items_of_a_batch_see_earlier_items_and_duplicates_apply_once() -> None:
    card = new_card(amount=1_000)
    first = txn(1, line(card, 600, token=lock_for(card, "sale-1")))
    result = plan([first, txn(2, line(card, 600)), first], [card])
    assert [r.outcome for r in result.results] == [
        OfflineOutcome.APPLIED, OfflineOutcome.APPLIED_WITH_EXCEPTION,
        OfflineOutcome.ALREADY_APPLIED]
    assert card.balance_minor == -200
    assert journal_balance(card.pending_entries) == -1_200


def test_an_unlock_of_an_unknown_card_releases_nothing_and_does_not_reject_the_sale() -> None:
    card = new_card()
    ghost = new_card()
    token = lock_for(card, "sale-1")
    result = plan([txn(1, line(card, 100, token=token),
                       unlocks=(OfflineUnlock(ghost.card_number, "s", 0),))], [card])
    assert result.results[0].outcome is OfflineOutcome.APPLIED
    assert card.balance_minor == 9_900
