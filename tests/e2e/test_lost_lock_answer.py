"""A real terminal whose LockCard HQ committed but whose answer the link lost.

T1 reaches a real HQ through a fault-injecting proxy, T2 straight. T1 adds a gift card to a
sale; the proxy forwards the LockCard and drops every answer from then on, so HQ locks the card
for T1 while T1 only sees its deadline pass. T1 abandons the sale. Whether it does so offline
(the release is queued and sent at sync) or after the link came back (released at once), the
card ends unlocked at HQ, undebited, and usable by T2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storedvalue.cli._link import Link
from storedvalue.terminal import (
    CardKind,
    CardLocked,
    ConnectivityState,
    HQUnavailable,
    Money,
    Terminal,
)

from .conftest import RunningHQ
from .harness import wait_until
from .test_link_faults import SETTLE_S, START_MINOR, open_till


@dataclass
class Store:
    hq: RunningHQ
    link: Link
    t1: Terminal
    """The till behind the faulty link."""
    t2: Terminal
    """Another till of the store, with a healthy link."""
    card: str


@pytest.fixture
def store(hq: RunningHQ, tmp_path: Path) -> Iterator[Store]:
    with Link(hq.address) as link:
        t1 = open_till(hq, "T1", link.address, tmp_path / "T1")
        try:
            t2 = open_till(hq, "T2", hq.address, tmp_path / "T2")
            try:
                for till in (t1, t2):
                    assert till.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
                card = t2.issue_card(kind=CardKind.GIFT_CARD,
                                     initial_value=Money(START_MINOR, "EUR")).card_number
                yield Store(hq, link, t1, t2, card)
            finally:
                t2.close()
        finally:
            t1.close()


def lose_the_lock_answer(store: Store, sale: str) -> None:
    """T1 sends LockCard for ``sale``; HQ commits it; the answer never reaches T1."""
    lock_forwarded = store.link.drop_answers_after(sale.encode())

    with pytest.raises(HQUnavailable) as lost:
        store.t1.add_tender(transaction_id=sale, card_number=store.card)

    assert lost.value.request_sent
    assert lock_forwarded.is_set()
    assert store.t1.state is ConnectivityState.OFFLINE
    lock = wait_until(lambda: store.t2.balance(card_number=store.card).lock, timeout=SETTLE_S,
                      what="HQ to commit the lock whose answer was lost")
    assert (lock.terminal_id, lock.transaction_id) == ("T1", sale)
    with pytest.raises(CardLocked):
        store.t2.add_tender(transaction_id="t2-meanwhile", card_number=store.card)


def assert_card_free_and_undebited(store: Store) -> None:
    card = store.t2.balance(card_number=store.card)
    assert card.lock is None
    assert card.balance == Money(START_MINOR, "EUR")
    store.t2.add_tender(transaction_id="t2-after", card_number=store.card)
    store.t2.abandon_sale(transaction_id="t2-after")


def test_a_sale_abandoned_offline_after_a_lost_lock_answer_unlocks_the_card_at_sync(
    store: Store,
) -> None:
    lose_the_lock_answer(store, "sale-lost-lock-offline")

    store.t1.abandon_sale(transaction_id="sale-lost-lock-offline")

    (queued,) = store.t1.outbox()
    assert (queued.redeem_line_count, queued.unlock_count) == (0, 1)
    assert store.t2.balance(card_number=store.card).lock is not None, "not synced yet"
    store.link.pass_through()
    assert store.t1.wait_for_state(ConnectivityState.ONLINE, timeout_s=SETTLE_S)
    wait_until(lambda: not store.t1.outbox(), timeout=SETTLE_S, what="T1's outbox to drain")
    assert_card_free_and_undebited(store)


def test_a_sale_abandoned_online_after_a_lost_lock_answer_unlocks_the_card_at_once(
    store: Store,
) -> None:
    lose_the_lock_answer(store, "sale-lost-lock-online")
    store.link.pass_through()
    assert store.t1.wait_for_state(ConnectivityState.ONLINE, timeout_s=SETTLE_S)

    store.t1.abandon_sale(transaction_id="sale-lost-lock-online")

    assert store.t1.outbox() == ()
    assert_card_free_and_undebited(store)


def test_a_lock_whose_answer_was_lost_is_confirmed_by_adding_the_card_again(
    store: Store,
) -> None:
    lose_the_lock_answer(store, "sale-lost-lock-retry")
    store.link.pass_through()
    assert store.t1.wait_for_state(ConnectivityState.ONLINE, timeout_s=SETTLE_S)

    tender = store.t1.add_tender(transaction_id="sale-lost-lock-retry", card_number=store.card)

    lock = store.t2.balance(card_number=store.card).lock
    assert lock is not None
    assert tender.fencing_token == lock.fencing_token
    assert tender.balance == Money(START_MINOR, "EUR")
    store.t1.abandon_sale(transaction_id="sale-lost-lock-retry")
    assert_card_free_and_undebited(store)

