"""Recovery without the POS's own intent log: every sale's durable state, the open ones after
a restart, and ``complete_sale`` that returns the same result when called again."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from in_process_hq import ANSWER_LOST, LOST_BEFORE, NORMAL

from storedvalue.terminal import (
    ConnectivityState,
    LineState,
    OfflineNotAllowed,
    SaleLine,
    SaleStatus,
)
from storedvalue.terminal._database import DATABASE_FILE

from .conftest import FAST, MANUAL_SYNC, StoreHQ, TerminalFactory, eur


def test_open_sales_survive_a_restart_with_each_tender_and_line_state(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    first = make_terminal(config=MANUAL_SYNC)
    paid, unanswered, unsent = (hq.add_card(balance=1000) for _ in range(3))
    for number in (paid, unanswered, unsent):
        first.add_tender(transaction_id="S1", card_number=number)
    first.add_tender(transaction_id="S2", card_number=hq.add_card(balance=1000))
    version = hq.set_parameters(gift_card=False, credit_memo=False)
    assert first.wait_for_parameters(version=version, timeout_s=5)
    hq.link.script("Redeem", NORMAL, ANSWER_LOST)
    lines = [SaleLine("A", paid, eur(100)), SaleLine("B", unanswered, eur(200)),
             SaleLine("C", unsent, eur(300))]
    with pytest.raises(OfflineNotAllowed) as refused:
        first.complete_sale(transaction_id="S1", lines=lines)
    assert [line.line_id for line in refused.value.paid_lines] == ["A"]
    first.close()  # the POS dies here; nothing of the sale is lost
    hq.link.up = True

    again = make_terminal(config=MANUAL_SYNC, data_dir=tmp_path / "T1")

    sales = again.open_sales()
    assert [sale.transaction_id for sale in sales] == ["S1", "S2"]
    s1 = sales[0]
    assert s1.status is SaleStatus.OPEN and s1.result is None
    assert [(line.line_id, line.state) for line in s1.lines] == [
        ("A", LineState.DEBITED), ("B", LineState.ATTEMPTED), ("C", LineState.PENDING)]
    assert len(s1.tenders) == 3 and all(t.tender is not None for t in s1.tenders)
    assert again.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)

    # The POS finishes S1 from what the terminal kept, and abandons S2.
    result = again.complete_sale(
        transaction_id="S1", lines=[SaleLine(line.line_id, line.card_number, line.amount)
                                    for line in s1.lines])
    again.abandon_sale(transaction_id="S2")

    assert [line.balance_after for line in result.lines] == [eur(900), eur(800), eur(700)]
    assert again.open_sales() == ()
    assert hq.desk.locks() == []


def test_completing_a_completed_sale_again_returns_the_same_result(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    online_card, spare, offline_card = (hq.add_card(balance=1000) for _ in range(3))
    terminal.add_tender(transaction_id="online", card_number=online_card)
    terminal.add_tender(transaction_id="online", card_number=spare)
    terminal.add_tender(transaction_id="offline", card_number=offline_card)
    online_line = SaleLine("L1", online_card, eur(250))
    first = terminal.complete_sale(transaction_id="online", lines=[online_line])
    hq.link.up = False
    offline_line = SaleLine("L1", offline_card, eur(250))
    first_offline = terminal.complete_sale(transaction_id="offline", lines=[offline_line])
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    assert terminal.sync_now().remaining == 0

    # Not SaleAlreadyCompleted, TenderNotFound or OfflineNotAllowed(NOT_LOCKED): the result.
    assert terminal.complete_sale(transaction_id="online", lines=[online_line]) == first
    assert terminal.complete_sale(transaction_id="offline", lines=[offline_line]) == first_offline
    hq.link.up = False
    assert terminal.complete_sale(transaction_id="online", lines=[online_line]) == first
    assert (hq.card(online_card).balance, hq.card(offline_card).balance) == (750, 750)
    view = terminal.sale(transaction_id="offline")
    assert view is not None
    assert (view.status, view.synced, view.result) == (
        SaleStatus.COMPLETED_OFFLINE, True, first_offline)
    assert [line.state for line in view.lines] == [LineState.APPLIED_AT_SYNC]


def test_a_sale_the_link_dropped_in_the_middle_of_returns_as_stored_when_asked_again(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    first_card, second_card = hq.add_card(balance=1000), hq.add_card(balance=1000)
    for number in (first_card, second_card):
        terminal.add_tender(transaction_id="S1", card_number=number)
    lines = [SaleLine("L1", first_card, eur(250)), SaleLine("L2", second_card, eur(300))]
    hq.link.script("Redeem", NORMAL, LOST_BEFORE)  # L1 debited online, then the link drops

    result = terminal.complete_sale(transaction_id="S1", lines=lines)

    assert result.completed_offline
    assert [(line.line_id, line.completed_offline, line.balance_after)
            for line in result.lines] == [("L1", False, eur(750)), ("L2", True, None)]
    view = terminal.sale(transaction_id="S1")
    assert view is not None and view.result == result
    assert terminal.complete_sale(transaction_id="S1", lines=lines) == result


def test_a_finished_sale_is_forgotten_after_the_retention_once_synced(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    config = replace(FAST, sync_automatically=False, finished_sale_retention_s=0.0)
    terminal = make_terminal(config=config)
    number = hq.add_card(balance=1000)
    terminal.add_tender(transaction_id="S1", card_number=number)
    hq.link.up = False
    terminal.complete_sale(transaction_id="S1", lines=[SaleLine("L1", number, eur(100))])
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    assert terminal.sale(transaction_id="S1") is not None, "kept until HQ has it"

    assert terminal.sync_now().remaining == 0

    assert terminal.sale(transaction_id="S1") is None


def test_a_data_directory_from_before_sale_history_keeps_its_open_sales(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    number = hq.add_card(balance=1000)
    make_terminal(config=MANUAL_SYNC).close()
    # Rewind the file to the first release's schema, with one open sale in it.
    with sqlite3.connect(tmp_path / "T1" / DATABASE_FILE) as old:
        old.executescript(
            "DROP TABLE sales; DROP TABLE sale_lines; PRAGMA user_version = 0;"
            "CREATE TABLE sale_lines (transaction_id TEXT NOT NULL, line_id TEXT NOT NULL, "
            "card_number TEXT NOT NULL, amount_minor INTEGER NOT NULL, "
            "currency_code TEXT NOT NULL, request_id TEXT NOT NULL, "
            "attempted INTEGER NOT NULL DEFAULT 0, redeem_response BLOB, "
            "PRIMARY KEY (transaction_id, line_id));"
        )
        old.execute("INSERT INTO sale_lines VALUES ('S1', 'L1', ?, 100, 'EUR', 'r-1', 1, NULL)",
                    (number,))

    terminal = make_terminal(config=MANUAL_SYNC, data_dir=tmp_path / "T1")

    (sale,) = terminal.open_sales()
    assert [(line.line_id, line.state) for line in sale.lines] == [("L1", LineState.ATTEMPTED)]


def test_a_card_added_again_after_its_redeem_answer_was_lost_is_still_debited_once(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    # Found by SIGKILLing a POS process during complete_sale: on restart the POS scanned the
    # card again, HQ (whose Redeem had committed and released the lock) locked it anew, and
    # every later complete_sale resent the line's Redeem, same request id, with the new
    # lock's token: REQUEST_ID_REUSED forever, the sale stuck open, the card locked.
    terminal = make_terminal(config=MANUAL_SYNC)
    number = hq.add_card(balance=1000)
    terminal.add_tender(transaction_id="S1", card_number=number)
    version = hq.set_parameters(gift_card=False, credit_memo=False)
    assert terminal.wait_for_parameters(version=version, timeout_s=5)
    hq.link.script("Redeem", ANSWER_LOST)
    line = SaleLine("L1", number, eur(250))
    with pytest.raises(OfflineNotAllowed):
        terminal.complete_sale(transaction_id="S1", lines=[line])
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)

    terminal.add_tender(transaction_id="S1", card_number=number)  # the cashier scans it again
    result = terminal.complete_sale(transaction_id="S1", lines=[line])

    assert [(item.line_id, item.balance_after) for item in result.lines] == [("L1", eur(750))]
    assert hq.card(number).balance == 750
    assert hq.desk.locks() == []
