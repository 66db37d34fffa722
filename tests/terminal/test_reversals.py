"""A line whose Redeem may have reached HQ is never dropped: left out of the completed sale,
or abandoned, it is reversed, and HQ applies the reversal exactly once (issue 8)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from in_process_hq import ANSWER_LOST, LOST_BEFORE, NO_REVERSAL_RESULTS, error_reason

from storedvalue.terminal import (
    ConnectivityState,
    InsufficientFunds,
    LineState,
    OfflineNotAllowed,
    Sale,
    SaleLine,
    SaleStatus,
    Terminal,
)
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import FAST, MANUAL_SYNC, StoreHQ, TerminalFactory, eur, wait_until

MEMO = common_pb2.CARD_KIND_CREDIT_MEMO


@dataclass(frozen=True)
class Checkout:
    """The issue's checkout: HQ allows gift cards offline, not credit memos; memo M (20.00)
    and gift card G (50.00) are added to sale S1; L0 pays 5.00 with M, L1 7.00 with G."""

    terminal: Terminal
    memo: str
    gift: str
    l0: SaleLine
    l1: SaleLine


@pytest.fixture
def checkout(hq: StoreHQ, make_terminal: TerminalFactory) -> Checkout:
    terminal = make_terminal(config=FAST)
    version = hq.set_parameters(gift_card=True, credit_memo=False)
    assert terminal.wait_for_parameters(version=version, timeout_s=5)
    memo, gift = hq.add_card(balance=2000, kind=MEMO), hq.add_card(balance=5000)
    for number in (memo, gift):
        terminal.add_tender(transaction_id="S1", card_number=number)
    return Checkout(terminal, memo, gift, SaleLine("L0", memo, eur(500)),
                    SaleLine("L1", gift, eur(700)))


def refuse_offline_after(hq: StoreHQ, checkout: Checkout, fault: str) -> None:
    """L0's Redeem meets ``fault``; the till goes OFFLINE and refuses to finish offline."""
    hq.link.script("Redeem", fault)
    with pytest.raises(OfflineNotAllowed) as refused:
        checkout.terminal.complete_sale(transaction_id="S1", lines=[checkout.l0, checkout.l1])
    assert refused.value.line_ids == ("L0",)
    assert refused.value.paid_lines == ()
    assert checkout.terminal.state is ConnectivityState.OFFLINE


def reconnect(hq: StoreHQ, terminal: Terminal) -> None:
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)


def sale(terminal: Terminal, transaction_id: str = "S1") -> Sale:
    found = terminal.sale(transaction_id=transaction_id)
    assert found is not None
    return found


def test_the_issue_checkout_charges_the_customer_once_when_the_sale_completes_offline(
    hq: StoreHQ, checkout: Checkout
) -> None:
    terminal = checkout.terminal
    refuse_offline_after(hq, checkout, ANSWER_LOST)
    assert hq.card(checkout.memo).balance == 0, "HQ debited M and moved the rest to a new memo"

    # The cashier takes 5.00 another way and completes with L1 only.
    result = terminal.complete_sale(transaction_id="S1", lines=[checkout.l1])

    assert result.completed_offline
    assert [line.line_id for line in result.lines] == ["L1"]
    assert result.reversed_lines == (checkout.l0,), "the receipt can say L0 was reversed"
    assert sale(terminal).result == result, "as stored: a retry gets this same result"
    assert terminal.complete_sale(transaction_id="S1", lines=[checkout.l1]) == result
    (entry,) = terminal.outbox()
    assert (entry.redeem_line_count, entry.reversal_count) == (1, 1)
    assert [line.state for line in sale(terminal).lines] == [
        LineState.REVERSAL_QUEUED, LineState.QUEUED_OFFLINE]

    reconnect(hq, terminal)
    assert terminal.sync_now().remaining == 0

    states = {line.line_id: line for line in sale(terminal).lines}
    assert states["L1"].state is LineState.APPLIED_AT_SYNC
    assert states["L0"].state is LineState.REVERSED
    remainder = states["L0"].voided_credit_memo_number
    assert remainder, "the remainder memo the till never heard of was voided"
    assert (hq.card(checkout.memo).balance, hq.card(checkout.memo).status) == (
        2000, "CARD_STATUS_ACTIVE")
    assert hq.card(remainder).balance == 0
    assert hq.card(checkout.gift).balance == 4300
    assert hq.desk.locks() == []
    assert hq.desk.conservation_holds([checkout.memo, remainder, checkout.gift])


def test_the_issue_checkout_completed_online_after_the_link_returned_reverses_l0_at_once(
    hq: StoreHQ, checkout: Checkout
) -> None:
    terminal = checkout.terminal
    refuse_offline_after(hq, checkout, ANSWER_LOST)
    reconnect(hq, terminal)
    synced: list[Sale] = []
    terminal.on_sale_synced(synced.append)

    result = terminal.complete_sale(transaction_id="S1", lines=[checkout.l1])

    assert not result.completed_offline
    assert result.reversed_lines == (checkout.l0,)
    assert result.sequence_number is not None, "the reversal travels in the outbox"
    assert hq.card(checkout.gift).balance == 4300
    # The sync agent sends the reversal as soon as it is queued.
    wait_until(lambda: bool(synced))
    (update,) = synced
    assert [(line.line_id, line.state) for line in update.lines] == [
        ("L0", LineState.REVERSED), ("L1", LineState.DEBITED)]
    assert hq.card(checkout.memo).balance == 2000
    assert hq.desk.locks() == []


def test_a_line_reversed_before_its_redeem_arrived_is_never_debited(
    hq: StoreHQ, checkout: Checkout
) -> None:
    terminal = checkout.terminal
    refuse_offline_after(hq, checkout, LOST_BEFORE)
    terminal.complete_sale(transaction_id="S1", lines=[checkout.l1])
    reconnect(hq, terminal)

    assert terminal.sync_now().remaining == 0

    states = {line.line_id: line.state for line in sale(terminal).lines}
    assert states == {"L0": LineState.NEVER_APPLIED, "L1": LineState.APPLIED_AT_SYNC}
    assert hq.card(checkout.memo).balance == 2000
    assert hq.card(checkout.memo).lock is None, "the reversal released the memo"
    # The lost Redeem turns up now, late: HQ refuses it.
    (lost,) = hq.link.requests("Redeem")
    late = ts.RedeemRequest()
    late.CopyFrom(lost)
    with pytest.raises(grpc.RpcError) as refused:
        hq.desk.till("Redeem", late, token=hq.tokens["T1"])
    assert error_reason(refused.value) == "LINE_REVERSED"
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert hq.card(checkout.memo).balance == 2000


def test_abandoning_after_a_partial_online_debit_reverses_the_paid_line(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=FAST)
    rich, poor = hq.add_card(balance=5000), hq.add_card(balance=100)
    for number in (rich, poor):
        terminal.add_tender(transaction_id="S2", card_number=number)
    with pytest.raises(InsufficientFunds) as refused:
        terminal.complete_sale(transaction_id="S2", lines=[
            SaleLine("A", rich, eur(1000)), SaleLine("B", poor, eur(500))])
    assert [line.line_id for line in refused.value.paid_lines] == ["A"]
    assert hq.card(rich).balance == 4000

    terminal.abandon_sale(transaction_id="S2")
    terminal.abandon_sale(transaction_id="S2")  # again: nothing more

    assert sale(terminal, "S2").status is SaleStatus.ABANDONED
    assert terminal.sync_now().remaining == 0
    assert [(line.line_id, line.state) for line in sale(terminal, "S2").lines] == [
        ("A", LineState.REVERSED)]
    assert (hq.card(rich).balance, hq.card(poor).balance) == (5000, 100)
    assert hq.desk.locks() == []


def test_a_reversal_hq_acknowledged_without_its_result_is_not_left_looking_queued(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    rich, poor = hq.add_card(balance=5000), hq.add_card(balance=100)
    for number in (rich, poor):
        terminal.add_tender(transaction_id="S2", card_number=number)
    with pytest.raises(InsufficientFunds):
        terminal.complete_sale(transaction_id="S2", lines=[
            SaleLine("A", rich, eur(1000)), SaleLine("B", poor, eur(500))])
    terminal.abandon_sale(transaction_id="S2")
    assert [line.state for line in sale(terminal, "S2").lines] == [LineState.REVERSAL_QUEUED]
    hq.link.script("SyncOfflineBatch", NO_REVERSAL_RESULTS)  # an HQ before reversals

    assert terminal.sync_now().remaining == 0

    assert [(line.line_id, line.state, line.hq_reason) for line in sale(terminal, "S2").lines
            ] == [("A", LineState.REJECTED_AT_SYNC, "NO_RESULT_FROM_HQ")]
    assert hq.card(rich).balance == 5000, "HQ reversed it; the till was not told how"


def test_a_reversal_queued_offline_survives_a_restart_and_is_sent_once(
    hq: StoreHQ, checkout: Checkout, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    terminal = checkout.terminal
    refuse_offline_after(hq, checkout, ANSWER_LOST)
    terminal.abandon_sale(transaction_id="S1")
    terminal.close()
    hq.link.up = True

    again = make_terminal(config=FAST, data_dir=tmp_path / "T1")
    assert again.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    assert again.sync_now().remaining == 0
    assert again.sync_now().sent == 0

    assert [line.state for line in sale(again).lines] == [LineState.REVERSED]
    assert (hq.card(checkout.memo).balance, hq.card(checkout.gift).balance) == (2000, 5000)
    assert hq.desk.locks() == []
    assert len(hq.sent_offline("S1")) == 1
