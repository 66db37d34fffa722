"""The seamless offline switch: a sale whose cards were locked completes without HQ."""

from __future__ import annotations

import time

import pytest
from in_process_hq import ANSWER_LOST, BLACK_HOLE, NORMAL

from storedvalue.terminal import (
    ConnectivityState,
    HQUnavailable,
    LineState,
    OfflineNotAllowed,
    SaleLine,
    SyncOutcome,
)
from storedvalue.v1 import common_pb2

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, eur, wait_until


def test_sale_completes_offline_when_link_drops_after_lock(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number, other = hq.add_card(balance=5000), hq.add_card(balance=5000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    terminal.add_tender(transaction_id="sale-2", card_number=other)
    hq.link.up = False
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(1200))]
    )
    assert result.completed_offline
    assert result.sequence_number == 1
    assert result.lines[0].completed_offline
    # UNAVAILABLE on a sent Redeem cannot tell "never arrived" from "answer lost".
    assert result.lines[0].online_redeem_attempted
    assert terminal.state is ConnectivityState.OFFLINE
    assert hq.card(number).balance == 5000
    calls = hq.link.calls("Redeem")
    second = terminal.complete_sale(
        transaction_id="sale-2", lines=[SaleLine("L1", other, eur(300))]
    )
    assert second.sequence_number == 2
    assert not second.lines[0].online_redeem_attempted, "already OFFLINE: nothing was sent"
    assert hq.link.calls("Redeem") == calls
    assert [entry.transaction_id for entry in terminal.outbox()] == ["sale-1", "sale-2"]
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    summary = terminal.sync_now()
    assert (summary.sent, summary.applied, summary.remaining) == (2, 2, 0)
    assert hq.card(number).balance == 3800
    assert hq.card(other).balance == 4700
    assert hq.card(number).lock is None
    assert hq.card(other).lock is None
    assert hq.synced_through("T1") == 2
    assert terminal.outbox() == ()


def test_link_drop_during_redeem_completes_offline_within_the_deadline(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.script("Redeem", BLACK_HOLE)
    started = time.monotonic()
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(700))]
    )
    elapsed = time.monotonic() - started
    assert result.completed_offline
    assert result.lines[0].online_redeem_attempted
    assert elapsed < MANUAL_SYNC.call_timeout_s + 0.25


def test_redeem_whose_answer_was_lost_is_synced_as_attempted_and_debited_once(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.script("Redeem", ANSWER_LOST)
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(700))]
    )
    assert result.completed_offline
    assert result.lines[0].online_redeem_attempted
    assert hq.card(number).balance == 4300, "HQ applied the redeem, the answer was lost"
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    assert terminal.sync_now().remaining == 0
    assert hq.card(number).balance == 4300
    sale = terminal.sale(transaction_id="sale-1")
    assert sale is not None
    assert [(line.state, line.hq_reason) for line in sale.lines] == [
        (LineState.APPLIED_AT_SYNC, "ALREADY_REDEEMED_ONLINE")
    ]


def test_partly_completed_sale_puts_only_the_lines_not_yet_debited_offline(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    first, second, third = (hq.add_card(balance=1000) for _ in range(3))
    terminal = make_terminal(config=MANUAL_SYNC)
    for number in (first, second, third):
        terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.script("Redeem", NORMAL, ANSWER_LOST)
    lines = [
        SaleLine("L1", first, eur(100)),
        SaleLine("L2", second, eur(200)),
        SaleLine("L3", third, eur(300)),
    ]
    result = terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert result.completed_offline
    assert [(line.line_id, line.completed_offline) for line in result.lines] == [
        ("L1", False),
        ("L2", True),
        ("L3", True),
    ]
    assert [line.online_redeem_attempted for line in result.lines] == [False, True, False]
    assert result.lines[0].balance_after == eur(900)
    (entry,) = terminal.outbox()
    assert entry.redeem_line_count == 2
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    assert terminal.sync_now().remaining == 0
    assert [hq.card(n).balance for n in (first, second, third)] == [900, 800, 700]
    assert all(hq.card(n).lock is None for n in (first, second, third))


def test_offline_is_refused_for_a_kind_the_parameters_forbid_and_the_sale_stays_open(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    gift = hq.add_card(balance=1000)
    memo = hq.add_card(balance=1000, kind=common_pb2.CARD_KIND_CREDIT_MEMO)
    version = hq.set_parameters(gift_card=True, credit_memo=False)
    terminal = make_terminal(config=MANUAL_SYNC)
    assert terminal.parameters.version == version
    terminal.add_tender(transaction_id="sale-1", card_number=gift)
    terminal.add_tender(transaction_id="sale-1", card_number=memo)
    hq.link.up = False
    lines = [SaleLine("G", gift, eur(100)), SaleLine("M", memo, eur(100))]
    with pytest.raises(OfflineNotAllowed) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert refused.value.line_ids == ("M",)
    assert refused.value.line_id == "M"
    assert refused.value.refusals[0].why == "KIND_NOT_ALLOWED"
    assert terminal.outbox() == ()
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    result = terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert not result.completed_offline
    assert hq.card(gift).balance == 900
    assert hq.card(memo).balance == 0, "a credit memo is used once"
    remainder = result.lines[1].remainder_credit_memo
    assert remainder is not None and hq.card(remainder.card_number).balance == 900


def test_card_never_locked_cannot_be_accepted_offline(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    locked, unanswered, unlocked = (hq.add_card(balance=1000) for _ in range(3))
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=locked)
    hq.link.up = False
    with pytest.raises(HQUnavailable) as sent:
        terminal.add_tender(transaction_id="sale-1", card_number=unanswered)
    assert sent.value.request_sent, "UNAVAILABLE cannot tell whether HQ locked the card"
    with pytest.raises(HQUnavailable) as not_sent:
        terminal.add_tender(transaction_id="sale-1", card_number=unlocked)
    assert not not_sent.value.request_sent, "already OFFLINE: LockCard was not even sent"
    lines = [
        SaleLine("A", locked, eur(10)),
        SaleLine("B", unanswered, eur(10)),
        SaleLine("C", unlocked, eur(10)),
    ]
    with pytest.raises(OfflineNotAllowed) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert [(r.line_id, r.why) for r in refused.value.refusals] == [
        ("B", "LOCK_UNCONFIRMED"),
        ("C", "NOT_LOCKED"),
    ]


def test_offline_line_over_the_balance_seen_at_lock_time_is_refused(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    with pytest.raises(OfflineNotAllowed) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("A", number, eur(1001))])
    assert refused.value.refusals[0].why == "OVER_BALANCE"


def test_tender_removed_offline_is_released_when_the_link_returns(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal()
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    assert terminal.remove_tender(transaction_id="sale-1", card_number=number) is False
    assert hq.card(number).lock is not None
    hq.link.up = True
    wait_until(lambda: hq.card(number).lock is None)


def test_abandoned_sale_offline_queues_its_unlocks_in_the_outbox(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    first, second = hq.add_card(balance=1000), hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=first)
    terminal.add_tender(transaction_id="sale-1", card_number=second)
    hq.link.up = False
    terminal.abandon_sale(transaction_id="sale-1")
    (entry,) = terminal.outbox()
    assert (entry.redeem_line_count, entry.unlock_count) == (0, 2)
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    summary = terminal.sync_now()
    assert summary.applied == 1
    assert hq.card(first).lock is None
    assert hq.card(second).lock is None
    assert hq.card(first).balance == 1000


def test_offline_overdraft_is_recorded_as_a_sync_report(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("A", number, eur(800))])
    hq.desk.spend(number, 500)  # spent elsewhere after the back office freed the card
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    summary = terminal.sync_now()
    assert (summary.applied_with_exception, summary.remaining) == (1, 0)
    (report,) = terminal.sync_reports()
    assert report.outcome is SyncOutcome.APPLIED_WITH_EXCEPTION
    assert (hq.card(number).balance, hq.card(number).status) == (-300, "CARD_STATUS_FLAGGED")
    assert report.exception_ids
    terminal.dismiss_sync_report(sequence_number=report.sequence_number)
    assert terminal.sync_reports() == ()


def test_a_remainder_memo_issued_at_sync_is_kept_as_a_sync_report(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    memo = hq.add_card(balance=1000, kind=common_pb2.CARD_KIND_CREDIT_MEMO)
    plain = hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    for sale, number in (("sale-1", memo), ("sale-2", plain)):
        terminal.add_tender(transaction_id=sale, card_number=number)
    hq.link.up = False
    terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("A", memo, eur(300))])
    terminal.complete_sale(transaction_id="sale-2", lines=[SaleLine("A", plain, eur(300))])
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)

    assert (terminal.sync_now().applied, terminal.outbox()) == (2, ())

    (report,) = terminal.sync_reports()  # the clean sale-2 is no report
    assert (report.transaction_id, report.outcome) == ("sale-1", SyncOutcome.APPLIED)
    (remainder,) = report.remainder_credit_memo_numbers
    synced = terminal.sale(transaction_id="sale-1")
    assert synced is not None
    assert [(line.state, line.remainder_credit_memo_number) for line in synced.lines] == [
        (LineState.APPLIED_AT_SYNC, remainder)]
    assert hq.card(remainder).balance == 700
