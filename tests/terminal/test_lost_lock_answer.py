"""A LockCard HQ committed but whose answer never came: the terminal keeps a pending tender
(token unknown), releases it with the sale (token 0), and never spends it offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from in_process_hq import ANSWER_LOST

from storedvalue.terminal import (
    CardLocked,
    ConnectivityState,
    HQUnavailable,
    OfflineNotAllowed,
    SaleLine,
    TenderNotFound,
    Terminal,
)
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import offline_pb2

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, eur


def lose_lock_answer(hq: StoreHQ, terminal: Terminal, sale: str, number: str) -> None:
    """T1 asks HQ to lock ``number``; HQ locks it, the answer is lost, the link is down."""
    hq.link.script("LockCard", ANSWER_LOST)
    with pytest.raises(HQUnavailable) as lost:
        terminal.add_tender(transaction_id=sale, card_number=number)
    assert lost.value.request_sent
    lock = hq.card(number).lock
    assert lock is not None
    assert (lock.terminal_id, lock.transaction_id) == ("T1", sale)
    assert terminal.state is ConnectivityState.OFFLINE


def reconnect(hq: StoreHQ, terminal: Terminal) -> None:
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)


def synced_unlocks(hq: StoreHQ, sale: str) -> list[offline_pb2.OfflineUnlock]:
    (sent,) = hq.sent_offline(sale)
    return list(sent.unlocks)


@dataclass(frozen=True)
class PendingTender:
    """Till T1 whose LockCard on ``number`` for "sale-1" HQ committed, answer lost (offline)."""

    terminal: Terminal
    number: str


@pytest.fixture
def pending_tender(hq: StoreHQ, make_terminal: TerminalFactory) -> PendingTender:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    lose_lock_answer(hq, terminal, "sale-1", number)
    return PendingTender(terminal, number)


def test_sale_abandoned_online_releases_a_lock_whose_answer_was_lost(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number
    reconnect(hq, terminal)

    terminal.abandon_sale(transaction_id="sale-1")

    assert hq.card(number).lock is None
    assert terminal.outbox() == ()


def test_sale_abandoned_offline_queues_a_token_zero_unlock_that_sync_applies(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number

    terminal.abandon_sale(transaction_id="sale-1")

    (entry,) = terminal.outbox()
    assert (entry.redeem_line_count, entry.unlock_count) == (0, 1)
    assert hq.card(number).lock is not None, "HQ hears of the abandon only at sync"
    reconnect(hq, terminal)
    summary = terminal.sync_now()
    assert (summary.applied, summary.remaining) == (1, 0)
    assert [u.fencing_token for u in synced_unlocks(hq, "sale-1")] == [0]
    assert hq.card(number).lock is None
    assert hq.card(number).balance == 1000


def test_tender_removed_online_after_a_lost_lock_answer_releases_the_card(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number
    reconnect(hq, terminal)

    assert terminal.remove_tender(transaction_id="sale-1", card_number=number) is True

    assert hq.card(number).lock is None
    with pytest.raises(TenderNotFound):
        terminal.remove_tender(transaction_id="sale-1", card_number=number)


def test_tender_removed_offline_after_a_lost_lock_answer_is_released_when_the_link_returns(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number

    assert terminal.remove_tender(transaction_id="sale-1", card_number=number) is False

    reconnect(hq, terminal)
    summary = terminal.sync_now()
    assert summary.error is None
    assert hq.card(number).lock is None


def test_line_on_a_lock_whose_answer_was_lost_cannot_complete_offline(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number

    with pytest.raises(OfflineNotAllowed) as refused:
        terminal.complete_sale(transaction_id="sale-1", lines=[SaleLine("L1", number, eur(100))])

    assert [(r.line_id, r.why) for r in refused.value.refusals] == [("L1", "LOCK_UNCONFIRMED")]
    assert terminal.outbox() == ()
    assert hq.card(number).balance == 1000


def test_retrying_add_tender_confirms_a_pending_tender_which_may_then_complete_offline(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number
    reconnect(hq, terminal)

    tender = terminal.add_tender(transaction_id="sale-1", card_number=number)

    lock = hq.card(number).lock
    assert lock is not None
    assert tender.fencing_token == lock.fencing_token, "HQ relocked, same token"
    assert tender.balance == eur(1000)
    hq.link.up = False
    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(100))]
    )
    assert result.completed_offline
    reconnect(hq, terminal)
    assert terminal.sync_now().remaining == 0
    assert hq.card(number).balance == 900
    assert hq.card(number).lock is None


def test_sale_completed_online_confirms_a_pending_lock_before_redeeming(
    hq: StoreHQ, pending_tender: PendingTender
) -> None:
    terminal, number = pending_tender.terminal, pending_tender.number
    reconnect(hq, terminal)

    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", number, eur(250))]
    )

    assert not result.completed_offline
    assert result.lines[0].balance_after == eur(750)
    assert hq.card(number).lock is None


def test_sale_completed_offline_releases_its_pending_lock_at_sync_and_debits_the_others(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    held, pending = hq.add_card(balance=1000), hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=held)
    lose_lock_answer(hq, terminal, "sale-1", pending)

    result = terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("L1", held, eur(300))]
    )

    assert result.completed_offline
    (entry,) = terminal.outbox()
    assert (entry.redeem_line_count, entry.unlock_count) == (1, 1)
    reconnect(hq, terminal)
    assert terminal.sync_now().applied == 1
    assert [u.fencing_token for u in synced_unlocks(hq, "sale-1")] == [0]
    assert (hq.card(held).balance, hq.card(pending).balance) == (700, 1000)
    assert hq.card(held).lock is None
    assert hq.card(pending).lock is None


def test_pending_tender_survives_a_restart_and_is_released_with_the_sale(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    number = hq.add_card(balance=1000)
    data_dir = tmp_path / "till"
    first = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    lose_lock_answer(hq, first, "sale-1", number)
    first.close()
    hq.link.up = True

    second = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    assert second.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    second.abandon_sale(transaction_id="sale-1")

    assert hq.card(number).lock is None


def test_lock_refused_by_hq_leaves_no_tender_behind(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    holder, terminal = make_terminal("T2"), make_terminal(config=MANUAL_SYNC)
    holder.add_tender(transaction_id="sale-9", card_number=number)

    with pytest.raises(CardLocked):
        terminal.add_tender(transaction_id="sale-1", card_number=number)

    with pytest.raises(TenderNotFound):
        terminal.remove_tender(transaction_id="sale-1", card_number=number)
    lock = hq.card(number).lock
    assert lock is not None
    assert lock.terminal_id == "T2"


def test_refused_retry_keeps_a_pending_tender_to_release_with_the_sale(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    lose_lock_answer(hq, terminal, "sale-1", number)
    reconnect(hq, terminal)
    hq.desk.admin("ForceUnlockCard", bo.ForceUnlockCardRequest(  # the back office, meanwhile
        request_id="force-1", card_number=number, reason="test"))
    other = make_terminal("T2")
    other.add_tender(transaction_id="sale-9", card_number=number)

    with pytest.raises(CardLocked):
        terminal.add_tender(transaction_id="sale-1", card_number=number)

    terminal.abandon_sale(transaction_id="sale-1")
    lock = hq.card(number).lock
    assert lock is not None, "token 0 leaves another terminal's lock alone"
    assert lock.terminal_id == "T2"
