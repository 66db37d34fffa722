"""The offline lock rule (issue 9), on every storage backend: an offline line is trusted only
under the lock its till held for that sale with that token, live, or the one it held when the
lease ran out or the back office released it. Any other line is applied (the goods left the
store) with a LOCK_NOT_HELD exception, and never releases someone else's lock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from offline_scenarios import HQ, TILL, line, offline

from storedvalue.hq.domain.offline import (
    OfflineExceptionKind,
    OfflineLineOutcome,
    OfflineOutcome,
    OfflineTransactionResult,
    OfflineUnlock,
)
from storedvalue.hq.services.unit_of_work import Storage

LEASE = timedelta(hours=4)  # the default lock lease


@pytest.fixture
def hq(storage: Storage) -> Iterator[HQ]:
    hq = HQ(storage)
    try:
        yield hq
        hq.assert_conservation()
    finally:
        hq.close()


def assert_trusted(result: OfflineTransactionResult) -> None:
    assert (result.outcome, result.reason) == (OfflineOutcome.APPLIED, "")
    assert [r.outcome for r in result.line_results] == [OfflineLineOutcome.APPLIED]


def assert_lock_not_held(hq: HQ, result: OfflineTransactionResult, card: str) -> None:
    """Applied (the goods left the store), with one exception the back office sees."""
    assert (result.outcome, result.reason) == (
        OfflineOutcome.APPLIED_WITH_EXCEPTION, "LOCK_NOT_HELD")
    assert [(r.outcome, r.reason) for r in result.line_results] == [
        (OfflineLineOutcome.APPLIED_WITH_EXCEPTION, "LOCK_NOT_HELD")]
    (exception,) = hq.open_exceptions(card)
    assert exception.kind is OfflineExceptionKind.LOCK_NOT_HELD
    assert (exception.terminal_id, exception.transaction_id) == (TILL, result.transaction_id)
    assert exception.exception_id in result.exception_ids


def test_a_line_under_the_tills_own_live_lock_is_trusted(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    assert_trusted(hq.sync(offline(1, line(card, 2_500, token=token))).results[0])
    assert hq.lock_holder(card) is None


def test_a_line_showing_another_tills_token_is_an_exception_and_leaves_its_lock(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    theirs = hq.lock(card, "their-sale", till="till-2")  # GetCard shows it to anyone

    (result,) = hq.sync(offline(1, line(card, 2_500, token=theirs))).results

    assert_lock_not_held(hq, result, card)
    assert hq.balance(card) == 7_500
    assert hq.lock_holder(card) == ("till-2", "their-sale", theirs)


def test_a_made_up_token_on_a_free_card_is_an_exception(hq: HQ) -> None:
    card = hq.issue(10_000)
    (result,) = hq.sync(offline(1, line(card, 2_500, token=7))).results
    assert_lock_not_held(hq, result, card)
    assert hq.balance(card) == 7_500


def test_a_line_without_a_token_is_an_exception(hq: HQ) -> None:
    card = hq.issue(10_000)
    hq.lock(card, "sale-1")
    (result,) = hq.sync(offline(1, line(card, 2_500, token=0))).results
    assert_lock_not_held(hq, result, card)
    assert hq.lock_holder(card) is None  # its own sale's lock is still released


def test_the_tills_lock_for_another_sale_is_an_exception_and_stays_locked(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    (result,) = hq.sync(offline(1, line(card, 2_500, token=token), sale="sale-2")).results
    assert_lock_not_held(hq, result, card)
    assert hq.lock_holder(card) == (TILL, "sale-1", token)


def test_the_lock_held_when_the_lease_ran_out_is_trusted_after_a_takeover(hq: HQ) -> None:
    card = hq.issue(10_000)
    mine = hq.lock(card, "sale-1")
    hq.clock.advance(LEASE + timedelta(minutes=1))
    theirs = hq.lock(card, "their-sale", till="till-2")  # the lease ended: taken over

    assert_trusted(hq.sync(offline(1, line(card, 2_500, token=mine))).results[0])
    assert hq.lock_holder(card) == ("till-2", "their-sale", theirs)


def test_the_lock_the_back_office_released_is_trusted(hq: HQ) -> None:
    card = hq.issue(10_000)
    mine = hq.lock(card, "sale-1")
    hq.force_unlock(card)
    assert_trusted(hq.sync(offline(1, line(card, 2_500, token=mine))).results[0])


def test_a_stale_token_superseded_by_the_tills_own_relock_is_an_exception(hq: HQ) -> None:
    card = hq.issue(10_000)
    first = hq.lock(card, "sale-1")
    hq.clock.advance(LEASE + timedelta(minutes=1))
    other = hq.lock(card, "their-sale", till="till-2")
    hq.unlock(card, "their-sale", other, till="till-2")
    latest = hq.lock(card, "sale-1")
    assert first < other < latest

    (result,) = hq.sync(offline(1, line(card, 2_500, token=first))).results

    assert_lock_not_held(hq, result, card)
    assert hq.lock_holder(card) is None  # the sale's own (latest) lock is released


def test_a_lock_the_till_released_before_completing_offline_is_an_exception(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    hq.unlock(card, "sale-1", token)  # the line was removed from the sale
    (result,) = hq.sync(offline(1, line(card, 2_500, token=token))).results
    assert_lock_not_held(hq, result, card)


def test_a_lock_released_by_an_earlier_offline_unlock_is_not_trusted_later_in_the_batch(
    hq: HQ,
) -> None:
    card, other = hq.issue(10_000), hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    other_token = hq.lock(other, "sale-9")
    abandon = offline(1, line(other, 100, token=other_token), sale="sale-9",
                      unlocks=(OfflineUnlock(card, "sale-1", token),))
    late_sale = offline(2, line(card, 2_500, token=token), sale="sale-1")

    first, late = hq.sync(abandon, late_sale).results

    assert_trusted(first)
    assert_lock_not_held(hq, late, card)


def test_a_lock_released_by_an_offline_unlock_is_not_trusted_in_a_later_sync(hq: HQ) -> None:
    # The unlock was queued in another sale's transaction: the history notes the release
    # of the lock it names (sale-1's), which a later batch then finds.
    card, other = hq.issue(10_000), hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    other_token = hq.lock(other, "sale-9")
    abandon = offline(1, line(other, 100, token=other_token), sale="sale-9",
                      unlocks=(OfflineUnlock(card, "sale-1", token),))
    assert_trusted(hq.sync(abandon).results[0])

    (late,) = hq.sync(offline(2, line(card, 2_500, token=token), sale="sale-1")).results

    assert_lock_not_held(hq, late, card)


def test_an_overdraft_under_a_stale_token_records_both_exceptions(hq: HQ) -> None:
    card = hq.issue(1_000)
    hq.lock(card, "their-sale", till="till-2")
    (result,) = hq.sync(offline(1, line(card, 3_000, token=99))).results
    assert result.outcome is OfflineOutcome.APPLIED_WITH_EXCEPTION
    kinds = sorted(e.kind.value for e in hq.open_exceptions(card))
    assert kinds == ["LOCK_NOT_HELD", "OVERDRAFT"]
    holder = hq.lock_holder(card)
    assert holder is not None and holder[0] == "till-2"
