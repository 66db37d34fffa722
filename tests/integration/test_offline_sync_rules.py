"""Every rule of applying offline transactions (issue 4), through the offline service on every
storage backend: the in-memory fake, SQLite file, SQLite memory and PostgreSQL. Each test ends
by checking conservation: every card's journal sums to its balance."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import replace

import pytest
from held_row import Held, card_row_held
from offline_scenarios import HQ, NOW, TILL, line, offline

from storedvalue.hq import records
from storedvalue.hq.domain.cards import CardKind, CardStatus
from storedvalue.hq.domain.errors import LimitExceeded, LineReversed
from storedvalue.hq.domain.journal import JournalEntryKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineExceptionKind,
    OfflineLineOutcome,
    OfflineOutcome,
    OfflineRedeemLine,
    OfflineReversal,
    OfflineTransaction,
    OfflineUnlock,
    ReversalOutcome,
)
from storedvalue.hq.domain.terminals import SequenceGap
from storedvalue.hq.services.cards import RedeemResult
from storedvalue.hq.services.offline import SyncOutcome
from storedvalue.hq.services.unit_of_work import Storage


@pytest.fixture
def hq(storage: Storage) -> Iterator[HQ]:
    hq = HQ(storage)
    try:
        yield hq
        hq.assert_conservation()
    finally:
        hq.close()


def test_an_offline_sale_is_debited_and_its_lock_released(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    (result,) = hq.sync(offline(1, line(card, 2_500, token=token))).results
    assert result.outcome is OfflineOutcome.APPLIED
    assert hq.balance(card) == 7_500
    hq.lock(card, "sale-9", till="till-2")  # unlocked: another till can take it


def test_a_transaction_delivered_three_times_is_applied_once(hq: HQ) -> None:
    cards = [hq.issue(10_000), hq.issue(10_000)]
    txns = [offline(n, line(card, 1_000, token=hq.lock(card, f"sale-{n}")))
            for n, card in enumerate(cards, start=1)]
    first = hq.sync(*txns)
    for _ in range(2):
        again = hq.sync(*txns)
        assert [r.outcome for r in again.results] == [OfflineOutcome.ALREADY_APPLIED] * 2
        assert [r.original_outcome for r in again.results] == [OfflineOutcome.APPLIED] * 2
        assert [r.line_results for r in again.results] == [r.line_results for r in first.results]
    assert [hq.balance(card) for card in cards] == [9_000, 9_000]


def test_the_same_id_with_other_content_is_kept_for_review_and_not_applied(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    hq.sync(offline(1, line(card, 1_000, token=token)))
    changed = offline(1, line(card, 9_000, token=token))
    (result,) = hq.sync(changed).results
    assert (result.outcome, result.reason) == (OfflineOutcome.REJECTED, "TRANSACTION_CONFLICT")
    exceptions = hq.run(hq.back_office.list_exceptions(
        include_resolved=False, terminal_id=TILL, card_number=None, after_position=0,
        limit=10)).items
    (kept,) = exceptions
    assert kept.kind is OfflineExceptionKind.CONFLICT and kept.transaction == changed
    assert hq.balance(card) == 9_000


def test_a_line_already_redeemed_online_is_not_debited_again(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    hq.run(hq.cards.redeem(key=hq.key(TILL, "Redeem"), terminal_id=TILL, card_number=card,
                           transaction_id="sale-1", line_id="1", fencing_token=token,
                           amount=Money(2_500, "EUR")))  # its answer never reached the till
    (result,) = hq.sync(offline(1, line(card, 2_500, token=token))).results
    assert result.line_results[0].outcome is OfflineLineOutcome.ALREADY_REDEEMED_ONLINE
    assert hq.balance(card) == 7_500


@pytest.mark.parametrize("sync_first", [False, True], ids=["redeem-first", "sync-first"])
def test_a_line_redeemed_online_and_synced_at_once_is_debited_once(
    hq: HQ, storage: Storage, sync_first: bool
) -> None:
    """The till's online Redeem of a line and its sync of the same sale completed offline
    arrive together (the Redeem's answer was late): whichever applies the line first, it is
    debited once, the Redeem gets its result and the sync says how the line was applied.
    (PostgreSQL: the later one waits for the card's row lock, then reads the line the first
    committed; the Redeem was LOCK_NOT_HELD there once.)"""
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    redeem = hq.cards.redeem(key=hq.key(TILL, "Redeem"), terminal_id=TILL, card_number=card,
                             transaction_id="sale-1", line_id="1", fencing_token=token,
                             amount=Money(2_500, "EUR"))
    sync = hq.offline.sync(key=hq.key(TILL, "SyncOfflineBatch"), terminal_id=TILL,
                           transactions=[offline(1, line(card, 2_500, token=token))])

    async def both(held: Held) -> tuple[RedeemResult, SyncOutcome]:
        # The first queues for the card's row before the second is sent (PostgreSQL).
        if sync_first:
            syncing = asyncio.ensure_future(sync)
            await held.waiting(1)
            redeemed = await redeem
            return redeemed, await syncing
        redeeming = asyncio.ensure_future(redeem)
        await held.waiting(1)
        synced = await sync
        return await redeeming, synced

    with card_row_held(storage, card, until_waiting=2) as held:
        redeemed, synced = hq.run(both(held))
    assert (redeemed.debited, redeemed.card.balance_minor) == (Money(2_500, "EUR"), 7_500)
    (result,) = synced.results
    assert result.line_results[0].outcome in (
        OfflineLineOutcome.APPLIED, OfflineLineOutcome.ALREADY_REDEEMED_ONLINE)
    assert hq.balance(card) == 7_500
    assert hq.lock_holder(card) is None


def test_an_overdraft_is_applied_flagged_and_recorded(hq: HQ) -> None:
    card = hq.issue(1_000)
    token = hq.lock(card, "sale-1")
    (result,) = hq.sync(offline(1, line(card, 3_000, token=token))).results
    assert (result.outcome, result.reason) == (
        OfflineOutcome.APPLIED_WITH_EXCEPTION, "OFFLINE_OVERDRAFT")
    state = hq.run(hq.cards.get_card(caller=TILL, card_number=card))
    assert (state.balance_minor, state.status) == (-2_000, CardStatus.FLAGGED)
    exceptions = hq.run(hq.back_office.list_exceptions(
        include_resolved=False, terminal_id=None, card_number=card, after_position=0,
        limit=10)).items
    assert [e.kind for e in exceptions] == [OfflineExceptionKind.OVERDRAFT]


def test_a_kind_the_applied_parameters_did_not_allow_is_applied_with_an_exception(
    hq: HQ,
) -> None:
    memo = hq.issue(3_000, CardKind.CREDIT_MEMO)
    token = hq.lock(memo, "sale-1")
    memo_line = OfflineRedeemLine("1", memo, CardKind.CREDIT_MEMO, Money(3_000, "EUR"), token)
    (result,) = hq.sync(offline(1, memo_line, version=hq.version_allowing_gift_cards_only)
                        ).results
    assert (result.outcome, result.reason) == (
        OfflineOutcome.APPLIED_WITH_EXCEPTION, "OFFLINE_NOT_ALLOWED")
    assert hq.balance(memo) == 0


def test_an_unknown_card_or_malformed_line_rejects_and_keeps_the_transaction(hq: HQ) -> None:
    card = hq.issue(10_000)
    unknown = offline(1, line(card, 100, "1"), line("79927398713", 100, "2"))
    malformed = offline(2, line(card, 0))
    results = hq.sync(unknown, malformed).results
    assert [(r.outcome, r.reason) for r in results] == [
        (OfflineOutcome.REJECTED, "CARD_NOT_FOUND"), (OfflineOutcome.REJECTED, "INVALID_AMOUNT")]
    exceptions = hq.run(hq.back_office.list_exceptions(
        include_resolved=False, terminal_id=TILL, card_number=None, after_position=0,
        limit=10)).items
    assert [e.transaction for e in exceptions] == [unknown, malformed]
    assert hq.balance(card) == 10_000


def test_someone_elses_lock_is_left_alone_and_queued_unlocks_are_applied(hq: HQ) -> None:
    taken, abandoned = hq.issue(10_000), hq.issue(10_000)
    hq.lock(taken, "other-sale", till="till-2")
    hq.lock(abandoned, "sale-0")
    hq.sync(offline(1, line(taken, 100), unlocks=(OfflineUnlock(abandoned, "sale-0", 0),)))
    locks = hq.run(hq.back_office.list_locks(terminal_id=None, include_expired=True,
                                             after_card_number="", limit=10)).items
    assert [(lk.card_number, lk.terminal_id) for lk in locks] == [(taken, "till-2")]


def test_a_credit_memo_redeemed_for_less_offline_gets_a_remainder_memo(hq: HQ) -> None:
    memo = hq.issue(5_000, CardKind.CREDIT_MEMO)
    memo_line = OfflineRedeemLine("1", memo, CardKind.CREDIT_MEMO, Money(1_500, "EUR"), 1)
    (result,) = hq.sync(offline(1, memo_line, version=1)).results
    remainder = result.line_results[0].remainder_credit_memo_number
    hq.issued.append(remainder)
    assert hq.balance(remainder) == 3_500
    assert hq.run(hq.cards.get_card(caller=TILL, card_number=memo)).status is CardStatus.REDEEMED


def test_sequence_gaps_are_reported_until_filled(hq: HQ) -> None:
    card = hq.issue(10_000)
    txns = [offline(n, line(card, 10)) for n in range(1, 6)]
    assert hq.sync(txns[0], txns[4]).status.gaps == (SequenceGap(2, 4),)
    assert hq.run(hq.back_office.get_sync_status(terminal_id=TILL)).gaps == (SequenceGap(2, 4),)
    status = hq.sync(*txns[1:4]).status
    assert (status.gaps, status.highest_contiguous_sequence) == ((), 5)


def test_over_the_batch_limit_nothing_of_the_batch_is_applied(hq: HQ) -> None:
    card = hq.issue(10_000)
    with pytest.raises(LimitExceeded):
        hq.sync(*[offline(n, line(card, 1)) for n in range(1, 22)])
    assert hq.balance(card) == 10_000
    assert hq.run(hq.back_office.get_sync_status(terminal_id=TILL)).highest_sequence_seen == 0


# -- reversals (issue 8) --------------------------------------------------------------------


def reversal(number: str, amount: int, line_id: str = "1") -> OfflineReversal:
    return OfflineReversal(line_id, number, Money(amount, "EUR"), 1)


def reversing(seq: int, *reversals: OfflineReversal, sale: str,
              lines: tuple[OfflineRedeemLine, ...] = ()) -> OfflineTransaction:
    draft = OfflineTransaction(sale, seq, NOW, 2, lines, (), b"", reversals)
    return replace(draft, fingerprint=hashlib.sha256(records.dumps(draft).encode()).digest())


def redeem_online(hq: HQ, number: str, sale: str, amount: int, *, line_id: str = "1",
                  request_id: str | None = None) -> RedeemResult:
    token = hq.lock(number, sale)
    key = hq.key(TILL, "Redeem")
    if request_id is not None:
        key = replace(key, request_id=request_id)
    return hq.run(hq.cards.redeem(
        key=key, terminal_id=TILL, card_number=number, transaction_id=sale, line_id=line_id,
        fencing_token=token, amount=Money(amount, "EUR")))


def journal_kinds(hq: HQ, number: str) -> list[tuple[JournalEntryKind, int]]:
    entries = hq.run(hq.back_office.list_journal(card_number=number, after_entry_id=0,
                                                 limit=100)).items
    return [(entry.kind, entry.amount_minor) for entry in entries]


def test_a_reversed_online_debit_is_credited_back_once_with_its_own_journal_entry(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    redeem_online(hq, card, "sale-1", 2_500)  # its answer never reached the till
    txn = reversing(1, reversal(card, 2_500), sale="sale-1")

    (result,) = hq.sync(txn).results
    (again,) = hq.sync(txn).results

    assert result.outcome is OfflineOutcome.APPLIED
    (reversed_line,) = result.reversal_results
    assert (reversed_line.outcome, reversed_line.balance_after) == (
        ReversalOutcome.REVERSED, Money(10_000, "EUR"))
    assert again.outcome is OfflineOutcome.ALREADY_APPLIED
    assert again.reversal_results == result.reversal_results
    assert hq.balance(card) == 10_000
    assert journal_kinds(hq, card) == [(JournalEntryKind.ISSUE, 10_000),
                                       (JournalEntryKind.REDEEM, -2_500),
                                       (JournalEntryKind.REVERSAL, 2_500)]


def test_a_reversed_memo_gets_its_whole_value_back_and_its_unused_remainder_is_voided(
    hq: HQ,
) -> None:
    memo = hq.issue(2_000, CardKind.CREDIT_MEMO)
    remainder = redeem_online(hq, memo, "sale-1", 500).remainder_credit_memo
    assert remainder is not None
    hq.issued.append(remainder.card_number)

    (result,) = hq.sync(reversing(1, reversal(memo, 500), sale="sale-1")).results

    (reversed_line,) = result.reversal_results
    assert reversed_line.voided_credit_memo_number == remainder.card_number
    assert reversed_line.remainder_credit_memo_number == ""
    restored = hq.run(hq.cards.get_card(caller=TILL, card_number=memo))
    assert (restored.balance_minor, restored.status) == (2_000, CardStatus.ACTIVE)
    voided = hq.run(hq.cards.get_card(caller=TILL, card_number=remainder.card_number))
    assert (voided.balance_minor, voided.status) == (0, CardStatus.REDEEMED)
    assert journal_kinds(hq, remainder.card_number) == [
        (JournalEntryKind.REMAINDER_IN, 1_500), (JournalEntryKind.REVERSAL, -1_500)]
    token = hq.lock(memo, "sale-2")  # usable again, for its whole value
    hq.run(hq.cards.redeem(key=hq.key(TILL, "Redeem"), terminal_id=TILL, card_number=memo,
                           transaction_id="sale-2", line_id="1", fencing_token=token,
                           amount=Money(2_000, "EUR")))


def test_a_remainder_memo_in_use_stays_valid_and_the_back_office_is_told(hq: HQ) -> None:
    memo = hq.issue(2_000, CardKind.CREDIT_MEMO)
    remainder = redeem_online(hq, memo, "sale-1", 500).remainder_credit_memo
    assert remainder is not None
    hq.issued.append(remainder.card_number)
    hq.lock(remainder.card_number, "sale-7", till="till-2")  # someone holds it now

    (result,) = hq.sync(reversing(1, reversal(memo, 500), sale="sale-1")).results

    assert (result.outcome, result.reason) == (
        OfflineOutcome.APPLIED_WITH_EXCEPTION, "REMAINDER_MEMO_IN_USE")
    (reversed_line,) = result.reversal_results
    assert reversed_line.remainder_credit_memo_number == remainder.card_number
    # Charged once: the memo got the debit back, the remainder memo keeps the rest.
    assert (hq.balance(memo), hq.balance(remainder.card_number)) == (500, 1_500)
    exceptions = hq.run(hq.back_office.list_exceptions(
        include_resolved=False, terminal_id=TILL, card_number=memo, after_position=0,
        limit=10)).items
    assert [(e.kind, e.reason) for e in exceptions] == [
        (OfflineExceptionKind.REVERSAL, "REMAINDER_MEMO_IN_USE")]
    assert list(result.exception_ids) == [e.exception_id for e in exceptions]


def test_a_line_reversed_before_any_debit_is_never_applied_and_its_lock_is_released(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")

    (result,) = hq.sync(reversing(1, reversal(card, 2_500), sale="sale-1")).results

    assert [r.outcome for r in result.reversal_results] == [ReversalOutcome.NEVER_APPLIED]
    assert hq.run(hq.cards.get_card(caller=TILL, card_number=card)).lock is None
    # The Redeem whose answer "never came" arrives now, late: refused, nothing debited.
    with pytest.raises(LineReversed) as refused:
        hq.run(hq.cards.redeem(key=hq.key(TILL, "Redeem"), terminal_id=TILL, card_number=card,
                               transaction_id="sale-1", line_id="1", fencing_token=token,
                               amount=Money(2_500, "EUR")))
    assert refused.value.metadata["reversal"] == "NEVER_APPLIED"
    assert hq.balance(card) == 10_000


def test_resending_a_redeem_that_was_reversed_since_is_refused_not_replayed(hq: HQ) -> None:
    card = hq.issue(10_000)
    redeem_online(hq, card, "sale-1", 2_500, request_id="redeem-1")
    hq.sync(reversing(1, reversal(card, 2_500), sale="sale-1"))

    with pytest.raises(LineReversed):
        hq.run(hq.cards.redeem(key=replace(hq.key(TILL, "Redeem"), request_id="redeem-1"),
                               terminal_id=TILL, card_number=card, transaction_id="sale-1",
                               line_id="1", fencing_token=1, amount=Money(2_500, "EUR")))
    assert hq.balance(card) == 10_000


def test_a_later_record_of_a_reversed_line_is_kept_for_review_and_not_applied(hq: HQ) -> None:
    card = hq.issue(10_000)
    hq.lock(card, "sale-1")
    hq.sync(reversing(1, reversal(card, 2_500), sale="sale-1"))

    (late,) = hq.sync(offline(2, line(card, 2_500), sale="sale-1")).results

    assert (late.outcome, late.reason) == (OfflineOutcome.REJECTED, "TRANSACTION_CONFLICT")
    assert hq.balance(card) == 10_000


def test_a_sale_completed_offline_without_its_unknown_line_debits_one_and_reverses_the_other(
    hq: HQ,
) -> None:
    """The issue's checkout: memo line L0 was redeemed online (answer lost), then the sale was
    completed offline with gift card line L1 only, L0 paid another way."""
    memo, gift = hq.issue(2_000, CardKind.CREDIT_MEMO), hq.issue(5_000)
    remainder = redeem_online(hq, memo, "sale-1", 500, line_id="L0").remainder_credit_memo
    assert remainder is not None
    hq.issued.append(remainder.card_number)
    gift_token = hq.lock(gift, "sale-1")
    txn = reversing(1, reversal(memo, 500, "L0"), sale="sale-1",
                    lines=(line(gift, 700, "L1", token=gift_token),))

    (result,) = hq.sync(txn).results

    assert result.outcome is OfflineOutcome.APPLIED
    assert [r.outcome for r in result.line_results] == [OfflineLineOutcome.APPLIED]
    assert [r.outcome for r in result.reversal_results] == [ReversalOutcome.REVERSED]
    assert (hq.balance(memo), hq.balance(remainder.card_number), hq.balance(gift)) == (
        2_000, 0, 4_300)
    locks = hq.run(hq.back_office.list_locks(terminal_id=None, include_expired=True,
                                             after_card_number="", limit=10)).items
    assert locks == ()


def test_a_reversal_naming_another_amount_reverses_what_was_debited_and_says_so(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    redeem_online(hq, card, "sale-1", 2_500)

    (result,) = hq.sync(reversing(1, reversal(card, 9_999), sale="sale-1")).results

    assert (result.outcome, result.reason) == (
        OfflineOutcome.APPLIED_WITH_EXCEPTION, "REVERSAL_MISMATCH")
    assert hq.balance(card) == 10_000


def test_a_line_both_debited_and_reversed_by_one_transaction_rejects_it(hq: HQ) -> None:
    card = hq.issue(10_000)
    txn = reversing(1, reversal(card, 100, "1"), sale="sale-1", lines=(line(card, 100, "1"),))

    (result,) = hq.sync(txn).results

    assert (result.outcome, result.reason) == (OfflineOutcome.REJECTED, "INVALID_FIELD")
    assert [r.outcome for r in result.reversal_results] == [ReversalOutcome.REJECTED]
    assert hq.balance(card) == 10_000


def test_a_transaction_over_the_line_limit_is_rejected_alone(hq: HQ) -> None:
    card = hq.issue(10_000)
    too_long = offline(1, *[line(card, 1, str(i)) for i in range(4)])
    results = hq.sync(too_long, offline(2, line(card, 1))).results
    assert [(r.outcome, r.reason) for r in results] == [
        (OfflineOutcome.REJECTED, "LIMIT_EXCEEDED"), (OfflineOutcome.APPLIED_WITH_EXCEPTION,
                                                      "LOCK_NOT_HELD")]
    assert hq.balance(card) == 9_999
