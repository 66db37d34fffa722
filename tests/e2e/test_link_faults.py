"""A real terminal talks to a real HQ through a link that fails the ways store links fail.

T1 reaches HQ through a fault-injecting proxy, T2 straight. In every case T1 locks a gift card
(T2 is refused), the link fails, the sale completes (offline where it must), the link comes
back and T1 syncs: the card ends debited exactly once, unlocked, and T1's outbox is empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storedvalue.cli._link import Link
from storedvalue.terminal import (
    CardKind,
    CardLocked,
    ConnectivityState,
    Money,
    SaleLine,
    SaleResult,
    Terminal,
    TerminalConfig,
)
from storedvalue.v1 import back_office_service_pb2 as bo

from .conftest import RunningHQ
from .harness import new_id, wait_until

TILL = TerminalConfig(
    call_timeout_s=2.0,
    sync_call_timeout_s=2.0,
    probe_initial_backoff_s=0.02,
    probe_max_backoff_s=0.2,
    sync_initial_backoff_s=0.02,
    sync_max_backoff_s=0.1,
    sync_max_attempts=2,
)
"""Short backoffs, so every fault is healed within a second; deadlines short enough that a
lost answer is noticed in seconds, but long enough for HQ to commit on a loaded machine. A
lost-answer case needs HQ to commit the call before the till gives up: at the deadline gRPC
cancels the call at HQ too, and a LockCard, Redeem or batch not yet committed then is not
(with 0.4 s, an HQ 0.6 s slow to lock, as on 2 loaded cores, never held the lock the tests
of test_lost_lock_answer wait for: 3 failures in 3)."""

START_MINOR = 5000
PRICE_MINOR = 1250
SETTLE_S = 15.0


@dataclass
class Store:
    hq: RunningHQ
    link: Link
    t1: Terminal
    """The till behind the faulty link."""
    t2: Terminal
    """Another till of the store, with a healthy link."""
    card: str


def open_till(hq: RunningHQ, terminal_id: str, address: str, data_dir: Path) -> Terminal:
    credential = hq.back_office.call("RegisterTerminal", bo.RegisterTerminalRequest(
        request_id=new_id(), terminal_id=terminal_id,
    )).credential.bearer_token
    return Terminal(address=address, terminal_id=terminal_id, credential=credential,
                    data_dir=data_dir, config=TILL)


@pytest.fixture
def link(hq: RunningHQ) -> Iterator[Link]:
    with Link(hq.address) as proxy:
        yield proxy


@pytest.fixture
def store(hq: RunningHQ, link: Link, tmp_path: Path) -> Iterator[Store]:
    version = hq.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
        request_id=new_id(), gift_card_offline_completion_allowed=True,
    )).parameters.version
    t1 = open_till(hq, "T1", link.address, tmp_path / "T1")
    try:
        t2 = open_till(hq, "T2", hq.address, tmp_path / "T2")
        try:
            for till in (t1, t2):
                assert till.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
                assert till.wait_for_parameters(version=version, timeout_s=5)
            card = t2.issue_card(kind=CardKind.GIFT_CARD,
                                 initial_value=Money(START_MINOR, "EUR")).card_number
            yield Store(hq, link, t1, t2, card)
        finally:
            t2.close()
    finally:
        t1.close()


def lock_on_t1(store: Store, sale: str) -> None:
    store.t1.add_tender(transaction_id=sale, card_number=store.card)
    with pytest.raises(CardLocked) as refused:
        store.t2.add_tender(transaction_id="t2-meanwhile", card_number=store.card)
    assert refused.value.holder_terminal_id == "T1"


def complete(store: Store, sale: str) -> SaleResult:
    return store.t1.complete_sale(
        transaction_id=sale, lines=[SaleLine(f"{sale}-line-1", store.card,
                                             Money(PRICE_MINOR, "EUR"))],
    )


def redeem_entries(store: Store) -> list[bo.JournalEntry]:
    return [entry for entry in store.hq.back_office.journal(store.card)
            if entry.kind == bo.JOURNAL_ENTRY_KIND_REDEEM]


def restore_and_assert_settled(store: Store) -> None:
    """Bring the link back, let T1 sync, and check the card: debited once, free, nothing
    left in the outbox."""
    store.link.pass_through()
    assert store.t1.wait_for_state(ConnectivityState.ONLINE, timeout_s=SETTLE_S)
    wait_until(lambda: not store.t1.outbox(), timeout=SETTLE_S, what="T1's outbox to drain")

    card = store.t2.balance(card_number=store.card)
    assert card.balance == Money(START_MINOR - PRICE_MINOR, "EUR")
    assert card.lock is None
    journal = store.hq.back_office.journal(store.card)
    assert sum(entry.amount.amount_minor for entry in journal) == START_MINOR - PRICE_MINOR
    assert [entry.amount.amount_minor for entry in redeem_entries(store)] == [-PRICE_MINOR]
    store.t2.add_tender(transaction_id="t2-after", card_number=store.card)
    store.t2.abandon_sale(transaction_id="t2-after")
    assert store.t1.outbox() == ()


def test_a_sale_through_a_healthy_link_completes_online_and_debits_once(store: Store) -> None:
    lock_on_t1(store, "sale-pass")

    result = complete(store, "sale-pass")

    assert not result.completed_offline
    assert result.lines[0].balance_after == Money(START_MINOR - PRICE_MINOR, "EUR")
    restore_and_assert_settled(store)


def test_a_sale_on_a_black_holed_link_completes_offline_within_a_deadline_and_syncs_once(
    store: Store,
) -> None:
    lock_on_t1(store, "sale-black-hole")
    store.link.black_hole()

    started = time.monotonic()
    result = complete(store, "sale-black-hole")
    elapsed = time.monotonic() - started

    assert result.completed_offline
    assert elapsed < TILL.call_timeout_s + 1.0
    assert store.t1.state is ConnectivityState.OFFLINE
    assert [entry.transaction_id for entry in store.t1.outbox()] == ["sale-black-hole"]
    assert store.t2.balance(card_number=store.card).lock is not None, "T1 still holds the card"
    restore_and_assert_settled(store)


def test_a_sale_on_a_reset_link_completes_offline_and_syncs_once(store: Store) -> None:
    lock_on_t1(store, "sale-reset")
    store.link.reset()

    result = complete(store, "sale-reset")

    assert result.completed_offline
    assert store.t1.state is ConnectivityState.OFFLINE
    assert redeem_entries(store) == [], "HQ never saw the sale before the sync"
    restore_and_assert_settled(store)


def test_a_redeem_whose_answer_is_lost_after_hq_committed_is_not_debited_again_at_sync(
    store: Store,
) -> None:
    lock_on_t1(store, "sale-lost-answer")
    redeem_forwarded = store.link.drop_answers_after(b"sale-lost-answer-line-1")

    result = complete(store, "sale-lost-answer")

    assert redeem_forwarded.is_set()
    assert result.completed_offline
    assert result.lines[0].online_redeem_attempted
    online = wait_until(lambda: redeem_entries(store), timeout=SETTLE_S,
                        what="HQ to commit the Redeem whose answer was lost")
    assert [(entry.amount.amount_minor, entry.offline) for entry in online] == [
        (-PRICE_MINOR, False)
    ]
    restore_and_assert_settled(store)


def test_a_sync_whose_answer_is_lost_after_hq_committed_is_resent_and_applied_once(
    store: Store,
) -> None:
    lock_on_t1(store, "sale-lost-sync")
    store.link.reset()
    assert complete(store, "sale-lost-sync").completed_offline
    batch_forwarded = store.link.drop_answers_after(b"sale-lost-sync")

    # T1 reconnects, sends its batch; HQ applies it but T1 never hears back.
    assert batch_forwarded.wait(SETTLE_S)
    wait_until(lambda: redeem_entries(store), timeout=SETTLE_S, what="HQ to apply the batch")
    assert [entry.offline for entry in redeem_entries(store)] == [True]
    assert [entry.transaction_id for entry in store.t1.outbox()] == ["sale-lost-sync"], (
        "unacknowledged, so still in the outbox"
    )
    restore_and_assert_settled(store)
