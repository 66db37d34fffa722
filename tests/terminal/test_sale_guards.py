"""Guards around a sale's end: no lock taken for a sale already completed offline, no lock
forgotten when HQ refuses an unlock, no abandon that would lose a debit HQ may have made,
and no re-added tender deleted by the sync of its earlier offline removal."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from storedvalue.cli import terminal as cli
from storedvalue.terminal import (
    ConnectivityState,
    HQUnavailable,
    InvalidArgument,
    Money,
    OfflineNotAllowed,
    RateLimited,
    RedeemOutcomeUnknown,
    SaleAlreadyCompleted,
    SaleLine,
    TenderNotFound,
    Terminal,
)
from storedvalue.v1 import offline_pb2, terminal_service_pb2

from .conftest import MANUAL_SYNC, TerminalFactory, card_number
from .fake_hq import FakeHQ


def eur(cents: int) -> Money:
    return Money(cents, "EUR")


def new_card(hq: FakeHQ, balance: int = 1000) -> str:
    number = card_number()
    hq.add_card(number, balance=balance)
    return number


def reconnect(hq: FakeHQ, terminal: Terminal) -> None:
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)


def go_offline(hq: FakeHQ, terminal: Terminal) -> None:
    """Cut the link and let the terminal notice it with a call that redeems nothing."""
    hq.link.up = False
    with pytest.raises(HQUnavailable):
        terminal.balance(card_number=card_number())
    assert terminal.state is ConnectivityState.OFFLINE


def queued_redeem_lines(hq: FakeHQ, terminal: Terminal) -> list[offline_pb2.OfflineRedeemLine]:
    """The redeem lines of the one offline transaction the terminal queued, as HQ got them."""
    reconnect(hq, terminal)
    summary = terminal.sync_now()
    assert (summary.applied, summary.remaining) == (1, 0)
    ((body, _),) = hq.state.offline.values()
    return list(offline_pb2.OfflineTransaction.FromString(body).redeem_lines)


# -- a sale completed offline takes no new tender --------------------------------------


def test_adding_a_tender_to_a_sale_completed_offline_is_refused_and_locks_nothing(
    hq: FakeHQ, make_terminal: TerminalFactory
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
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number, other = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", number, eur(100))])
    reconnect(hq, terminal)
    args = argparse.Namespace(transaction="sale-1", line=[f"{other}:1.00:EUR"])

    with pytest.raises(cli.UsageError, match="already completed offline and waits for sync"):
        cli.sale(terminal, args)

    assert hq.card(other).lock is None


# -- an unlock HQ refuses is queued, not forgotten -------------------------------------


def test_unlock_refused_by_hq_when_abandoning_is_queued_and_released_at_sync(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.state.unlock_script.append("RATE_LIMITED")

    terminal.abandon_sale(transaction_id="sale-1")

    (entry,) = terminal.outbox()
    assert (entry.transaction_id, entry.redeem_line_count, entry.unlock_count) == ("sale-1", 0, 1)
    assert hq.card(number).lock is not None, "HQ hears of the release only at sync"
    summary = terminal.sync_now()
    assert (summary.applied, summary.remaining) == (1, 0)
    assert hq.card(number).lock is None
    assert hq.card(number).balance == 1000


# -- a Redeem whose answer was lost blocks abandon -------------------------------------


def test_sale_whose_redeem_answer_was_lost_cannot_be_abandoned_and_its_retry_completes_it(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    version = hq.set_parameters(gift_card=False, credit_memo=False)
    assert terminal.wait_for_parameters(version=version, timeout_s=5)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.state.redeem_script.append("cut_link_after")
    lines = [SaleLine("L1", number, eur(300))]
    with pytest.raises(OfflineNotAllowed):
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert hq.card(number).balance == 700, "HQ debited; its answer was lost"
    reconnect(hq, terminal)

    with pytest.raises(RedeemOutcomeUnknown) as refused:
        terminal.abandon_sale(transaction_id="sale-1")
    assert refused.value.line_ids == ("L1",)

    result = terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert not result.completed_offline
    assert result.lines[0].balance_after == eur(700)
    assert hq.card(number).balance == 700, "the retry reused the request id: debited once"
    assert terminal.outbox() == ()


def test_redeem_refused_by_hq_leaves_the_line_not_attempted_when_completed_offline_later(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.state.redeem_script.append("RATE_LIMITED")
    lines = [SaleLine("L1", number, eur(300))]
    with pytest.raises(RateLimited):
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    go_offline(hq, terminal)

    result = terminal.complete_sale(transaction_id="sale-1", lines=lines)

    assert result.completed_offline
    assert not result.lines[0].online_redeem_attempted
    (line,) = queued_redeem_lines(hq, terminal)
    assert not line.online_redeem_attempted
    assert hq.card(number).balance == 700


def test_line_for_a_card_not_added_refuses_the_sale_before_marking_any_line_attempted(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number, stranger = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    first = SaleLine("L1", number, eur(300))
    with pytest.raises(TenderNotFound):
        terminal.complete_sale(
            transaction_id="sale-1", lines=[first, SaleLine("L2", stranger, eur(100))]
        )
    assert hq.state.redeem_calls == 0
    go_offline(hq, terminal)

    result = terminal.complete_sale(transaction_id="sale-1", lines=[first])

    assert result.completed_offline
    assert not result.lines[0].online_redeem_attempted, "no Redeem was ever sent"


def test_changed_line_refuses_the_sale_before_marking_any_line_attempted(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    first, second = new_card(hq), new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=first)
    terminal.add_tender(transaction_id="sale-1", card_number=second)
    hq.state.redeem_script.append("RATE_LIMITED")
    with pytest.raises(RateLimited):
        terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", first, eur(100))])
    with pytest.raises(InvalidArgument, match="changed"):
        terminal.complete_sale(
            transaction_id="sale-1",
            lines=[SaleLine("L2", second, eur(50)), SaleLine("L1", first, eur(200))],
        )
    assert hq.state.redeem_calls == 1
    go_offline(hq, terminal)

    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L2", second, eur(50))]
    )

    assert result.completed_offline
    assert not result.lines[0].online_redeem_attempted


# -- sync keeps a tender added again after its offline removal -------------------------


def test_sync_keeps_a_tender_the_cashier_added_again_while_its_queued_unlock_was_sent(
    hq: FakeHQ, make_terminal: TerminalFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = new_card(hq)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    assert not terminal.remove_tender(transaction_id="sale-1", card_number=number)
    reconnect(hq, terminal)
    # Act between HQ applying the queued unlock and the terminal deleting its tender.
    client = terminal._hq
    real_call = client.call

    def call(rpc: Any, request: Any, **kwargs: Any) -> Any:
        response = real_call(rpc, request, **kwargs)
        if isinstance(request, terminal_service_pb2.UnlockCardRequest):
            terminal.add_tender(transaction_id="sale-1", card_number=number)
        return response

    monkeypatch.setattr(client, "call", call)

    terminal.sync_now()

    assert hq.card(number).lock is not None, "the re-added tender's lock"
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(100))]
    )
    assert not result.completed_offline
    assert hq.card(number).balance == 900
