"""The sale flow while HQ answers: lock on add, debit and release on completion."""

from __future__ import annotations

import pytest

from storedvalue.terminal import (
    CardKind,
    CardLocked,
    ConnectivityState,
    InsufficientFunds,
    SaleLine,
    TenderNotFound,
)

from .conftest import StoreHQ, TerminalFactory, eur


def test_terminal_starts_online_with_hq_parameters(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal()
    assert terminal.state is ConnectivityState.ONLINE
    assert terminal.parameters.version == hq.parameters_version
    assert terminal.parameters.gift_card_offline_completion_allowed
    assert terminal.sync_limits is not None
    assert terminal.sync_limits.max_transactions_per_batch == 1000


def test_adding_a_tender_locks_the_card_and_reports_its_balance(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    terminal = make_terminal()
    tender = terminal.add_tender(transaction_id="sale-1", card_number=number)
    assert tender.balance == eur(5000)
    assert tender.kind is CardKind.GIFT_CARD
    lock = hq.card(number).lock
    assert lock is not None
    assert tender.fencing_token == lock.fencing_token
    assert lock is not None
    assert (lock.terminal_id, lock.transaction_id) == ("T1", "sale-1")


def test_second_terminal_cannot_lock_a_locked_card_and_learns_the_holder(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    first, second = make_terminal("T1"), make_terminal("T2")
    first.add_tender(transaction_id="sale-1", card_number=number)
    with pytest.raises(CardLocked) as refused:
        second.add_tender(transaction_id="sale-9", card_number=number)
    assert refused.value.holder_terminal_id == "T1"
    assert refused.value.holder_transaction_id == "sale-1"
    assert refused.value.lease_expires_at is not None
    assert second.state is ConnectivityState.ONLINE


def test_sale_completes_online_debiting_each_line_and_releasing_the_cards(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    gift, spare = hq.add_card(balance=5000), hq.add_card(balance=100)
    terminal = make_terminal()
    terminal.add_tender(transaction_id="sale-1", card_number=gift)
    terminal.add_tender(transaction_id="sale-1", card_number=spare)
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", gift, eur(1250))]
    )
    assert not result.completed_offline
    assert result.sequence_number is None
    assert [line.balance_after for line in result.lines] == [eur(3750)]
    assert hq.card(gift).balance == 3750
    assert hq.card(gift).lock is None
    assert hq.card(spare).lock is None, "a tender not used by any line is released"
    assert terminal.outbox() == ()


def test_removing_a_tender_online_releases_the_card(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    terminal = make_terminal()
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    assert terminal.remove_tender(transaction_id="sale-1", card_number=number) is True
    assert hq.card(number).lock is None
    with pytest.raises(TenderNotFound):
        terminal.remove_tender(transaction_id="sale-1", card_number=number)


def test_completing_a_line_whose_card_was_never_added_is_refused(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    terminal = make_terminal()
    with pytest.raises(TenderNotFound) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", number, eur(1))])
    assert refused.value.line_id == "L1"
    assert hq.card(number).balance == 5000


def test_a_refused_redeem_leaves_the_sale_open_and_a_retry_does_not_debit_twice(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    rich, poor = hq.add_card(balance=5000), hq.add_card(balance=100)
    terminal = make_terminal()
    terminal.add_tender(transaction_id="sale-1", card_number=rich)
    terminal.add_tender(transaction_id="sale-1", card_number=poor)
    lines = [SaleLine("L1", rich, eur(1000)), SaleLine("L2", poor, eur(500))]
    with pytest.raises(InsufficientFunds) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=lines)
    assert refused.value.balance_minor == 100
    assert refused.value.line_id == "L2", "the refusal names the refused line"
    assert [(p.line_id, p.balance_after) for p in refused.value.paid_lines] == [
        ("L1", eur(4000))
    ], "and carries the lines already debited"
    assert hq.card(rich).balance == 4000
    retry = [SaleLine("L1", rich, eur(1000)), SaleLine("L2", poor, eur(100))]
    with pytest.raises(Exception, match="changed"):
        terminal.complete_sale(transaction_id="sale-1", lines=retry)
    fixed = [SaleLine("L1", rich, eur(1000)), SaleLine("L3", poor, eur(100))]
    result = terminal.complete_sale(transaction_id="sale-1", lines=fixed)
    assert [line.line_id for line in result.lines] == ["L1", "L3"]
    assert hq.card(rich).balance == 4000
    assert hq.card(poor).balance == 0


def test_balance_issue_and_add_value_go_to_hq(hq: StoreHQ, make_terminal: TerminalFactory) -> None:
    terminal = make_terminal()
    card = terminal.issue_card(kind=CardKind.GIFT_CARD, initial_value=eur(2000))
    assert len(card.card_number) == 16
    loaded = terminal.add_value(card_number=card.card_number, amount=eur(500))
    assert loaded.balance == eur(2500)
    assert terminal.balance(card_number=card.card_number).balance == eur(2500)
    memo = terminal.issue_card(kind=CardKind.CREDIT_MEMO, initial_value=eur(300))
    assert hq.card(memo.card_number).kind == "CARD_KIND_CREDIT_MEMO"


def test_issue_retried_with_the_same_request_id_issues_one_card(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal()
    first = terminal.issue_card(
        kind=CardKind.GIFT_CARD, initial_value=eur(2000), request_id="req-1"
    )
    again = terminal.issue_card(
        kind=CardKind.GIFT_CARD, initial_value=eur(2000), request_id="req-1"
    )
    assert first.card_number == again.card_number
    assert hq.link.calls("IssueCard") == 2, "both reached HQ; the second issued nothing"
    assert hq.card(first.card_number).balance == 2000
