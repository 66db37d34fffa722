"""Guards around a sale's end: no lock taken for a sale already completed offline, no lock
forgotten when HQ refuses an unlock, no debit HQ may have made left behind by an abandon,
and no re-added tender deleted by the sync of its earlier offline removal."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from in_process_hq import ANSWER_LOST, refuse

from storedvalue.cli import terminal as cli
from storedvalue.terminal import (
    ConnectivityState,
    HQUnavailable,
    InvalidArgument,
    LineState,
    OfflineNotAllowed,
    RateLimited,
    RedeemOutcomeUnknown,
    SaleAlreadyCompleted,
    SaleLine,
    SaleStatus,
    TenderNotFound,
    Terminal,
)
from storedvalue.v1 import offline_pb2

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, card_number, eur


def new_card(hq: StoreHQ, balance: int = 1000) -> str:
    return hq.add_card(balance=balance)


def reconnect(hq: StoreHQ, terminal: Terminal) -> None:
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)


def go_offline(hq: StoreHQ, terminal: Terminal) -> None:
    """Cut the link and let the terminal notice it with a call that redeems nothing."""
    hq.link.up = False
    with pytest.raises(HQUnavailable):
        terminal.balance(card_number=card_number())
    assert terminal.state is ConnectivityState.OFFLINE


def queued_redeem_lines(hq: StoreHQ, terminal: Terminal) -> list[offline_pb2.OfflineRedeemLine]:
    """The redeem lines of the one offline transaction the terminal queued, as HQ got them."""
    reconnect(hq, terminal)
    summary = terminal.sync_now()
    assert (summary.applied, summary.remaining) == (1, 0)
    (sent,) = hq.sent_offline("sale-1")
    return list(sent.redeem_lines)


# -- a sale completed offline takes no new tender --------------------------------------


def test_adding_a_tender_to_a_sale_completed_offline_is_refused_and_locks_nothing(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    first, second = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=first)
    hq.link.up = False
    terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", first, eur(100))])
    reconnect(hq, terminal)

    with pytest.raises(SaleAlreadyCompleted):
        terminal.add_tender(transaction_id="sale-1", card_number=second)

    assert hq.card(second).lock is None, "no orphan lock at HQ"
    (entry,) = terminal.outbox()
    assert entry.transaction_id == "sale-1"


def test_cli_sale_of_a_sale_completed_offline_is_still_a_usage_error_with_its_message(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number, other = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", number, eur(100))])
    reconnect(hq, terminal)
    args = argparse.Namespace(transaction="sale-1", line=[f"{other}:1.00:EUR"])

    with pytest.raises(cli.UsageError, match="already completed offline"):
        cli.sale(terminal, args)

    assert hq.card(other).lock is None


# -- an unlock HQ refuses is queued, not forgotten -------------------------------------


def test_unlock_refused_by_hq_when_abandoning_is_queued_and_released_at_sync(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.script("UnlockCard", refuse("RATE_LIMITED"))

    terminal.abandon_sale(transaction_id="sale-1")

    (entry,) = terminal.outbox()
    assert (entry.transaction_id, entry.redeem_line_count, entry.unlock_count) == ("sale-1", 0, 1)
    assert hq.card(number).lock is not None, "HQ hears of the release only at sync"
    summary = terminal.sync_now()
    assert (summary.applied, summary.remaining) == (1, 0)
    assert hq.card(number).lock is None
    assert hq.card(number).balance == 1000


# -- a Redeem whose answer was lost is completed or reversed, never forgotten ----------


def lose_redeem_answer(hq: StoreHQ, terminal: Terminal, number: str) -> list[SaleLine]:
    """Offline completion forbidden; T1's Redeem of 3.00 on ``number`` reaches HQ, which
    debits it, and the answer is lost. Returns the sale's lines."""
    version = hq.set_parameters(gift_card=False, credit_memo=False)
    assert terminal.wait_for_parameters(version=version, timeout_s=5)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.script("Redeem", ANSWER_LOST)
    lines = [SaleLine("L1", number, eur(300))]
    with pytest.raises(OfflineNotAllowed) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert refused.value.paid_lines == ()
    assert hq.card(number).balance == 700, "HQ debited; its answer was lost"
    return lines


def test_sale_whose_redeem_answer_was_lost_is_completed_by_its_retry_debited_once(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    lines = lose_redeem_answer(hq, terminal, number)
    reconnect(hq, terminal)

    result = terminal.complete_sale(transaction_id="sale-1", lines=lines)

    assert not result.completed_offline
    assert result.lines[0].balance_after == eur(700)
    assert hq.card(number).balance == 700, "the retry reused the request id: debited once"
    assert terminal.outbox() == ()


def test_abandoning_a_sale_whose_redeem_answer_was_lost_reverses_the_debit(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    lose_redeem_answer(hq, terminal, number)
    reconnect(hq, terminal)

    terminal.abandon_sale(transaction_id="sale-1")

    (entry,) = terminal.outbox()
    assert (entry.transaction_id, entry.reversal_count, entry.unlock_count) == ("sale-1", 1, 0)
    sale = terminal.sale(transaction_id="sale-1")
    assert sale is not None and sale.status is SaleStatus.ABANDONED
    assert [line.state for line in sale.lines] == [LineState.REVERSAL_QUEUED]
    assert terminal.sync_now().remaining == 0
    assert hq.card(number).balance == 1000, "credited back: the customer paid nothing"
    assert hq.card(number).lock is None
    sale = terminal.sale(transaction_id="sale-1")
    assert sale is not None
    assert [(line.state, line.balance_after) for line in sale.lines] == [
        (LineState.REVERSED, eur(1000))
    ]


def test_a_card_whose_line_went_unanswered_is_not_used_by_another_line(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    lose_redeem_answer(hq, terminal, number)
    reconnect(hq, terminal)
    calls = hq.link.calls("Redeem")

    with pytest.raises(RedeemOutcomeUnknown) as refused:
        terminal.complete_sale(transaction_id="sale-1",
                               lines=[SaleLine("L2", number, eur(300))])

    assert (refused.value.line_ids, refused.value.line_id) == (("L1",), "L2")
    assert hq.link.calls("Redeem") == calls, "nothing sent"
    assert hq.card(number).balance == 700


def test_redeem_refused_by_hq_leaves_the_line_not_attempted_when_completed_offline_later(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.script("Redeem", refuse("RATE_LIMITED"))
    lines = [SaleLine("L1", number, eur(300))]
    with pytest.raises(RateLimited) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert refused.value.line_id == "L1"
    go_offline(hq, terminal)

    result = terminal.complete_sale(transaction_id="sale-1", lines=lines)

    assert result.completed_offline
    assert not result.lines[0].online_redeem_attempted
    (line,) = queued_redeem_lines(hq, terminal)
    assert not line.online_redeem_attempted
    assert hq.card(number).balance == 700


def test_line_for_a_card_not_added_refuses_the_sale_before_marking_any_line_attempted(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number, stranger = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    first = SaleLine("L1", number, eur(300))
    with pytest.raises(TenderNotFound):
        terminal.complete_sale(
            transaction_id="sale-1", lines=[first, SaleLine("L2", stranger, eur(100))]
        )
    assert hq.link.calls("Redeem") == 0
    go_offline(hq, terminal)

    result = terminal.complete_sale(transaction_id="sale-1", lines=[first])

    assert result.completed_offline
    assert not result.lines[0].online_redeem_attempted, "no Redeem was ever sent"


def test_changed_line_refuses_the_sale_before_marking_any_line_attempted(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    first, second = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=first)
    terminal.add_tender(transaction_id="sale-1", card_number=second)
    hq.link.script("Redeem", refuse("RATE_LIMITED"))
    with pytest.raises(RateLimited):
        terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", first, eur(100))])
    with pytest.raises(InvalidArgument, match="changed") as refused:
        terminal.complete_sale(
            transaction_id="sale-1",
            lines=[SaleLine("L2", second, eur(50)), SaleLine("L1", first, eur(200))],
        )
    assert refused.value.line_id == "L1"
    assert hq.link.calls("Redeem") == 1
    go_offline(hq, terminal)

    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L2", second, eur(50))]
    )

    assert result.completed_offline
    assert not result.lines[0].online_redeem_attempted


# -- sync keeps a tender added again after its offline removal -------------------------


def test_sync_keeps_a_tender_the_cashier_added_again_while_its_queued_unlock_was_sent(
    hq: StoreHQ, make_terminal: TerminalFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    assert not terminal.remove_tender(transaction_id="sale-1", card_number=number)
    reconnect(hq, terminal)
    # Act between HQ applying the queued unlock and the terminal deleting its tender.
    client = terminal._hq
    real_unlock = client.unlock_card

    def unlock_card(**request: Any) -> Any:
        card = real_unlock(**request)
        terminal.add_tender(transaction_id="sale-1", card_number=number)
        return card

    monkeypatch.setattr(client, "unlock_card", unlock_card)

    terminal.sync_now()

    assert hq.card(number).lock is not None, "the re-added tender's lock"
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(100))]
    )
    assert not result.completed_offline
    assert hq.card(number).balance == 900
