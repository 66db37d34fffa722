"""Request ids (AIP-155) on every storage backend, through the card service: a retried
request gets its first answer and changes nothing more, whatever happened to the card since;
an id reused with other content is REQUEST_ID_REUSED and changes nothing, whether the other
content would have succeeded or failed. (A request's first run does not look its id up
before its work: these are the paths that catch the ones that ran before.)"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta

import pytest
from offline_scenarios import HQ, TILL

from storedvalue.hq.domain.cards import generate_card_number
from storedvalue.hq.domain.errors import CardNotFound, RequestIdReused
from storedvalue.hq.domain.money import Money
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.unit_of_work import Storage


@pytest.fixture
def hq(storage: Storage) -> Iterator[HQ]:
    hq = HQ(storage)
    try:
        yield hq
        hq.assert_conservation()
    finally:
        hq.close()


def request(request_id: str, operation: str, content: object) -> RequestKey:
    return RequestKey(TILL, request_id, operation, hashlib.sha256(repr(content).encode()).digest())


def test_a_retried_redeem_gets_its_first_answer_and_debits_once(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    key = request("redeem-1", "Redeem", (card, 2_500))

    def redeem() -> object:
        return hq.run(hq.cards.redeem(
            key=key, terminal_id=TILL, card_number=card, transaction_id="sale-1", line_id="1",
            fencing_token=token, amount=Money(2_500, "EUR")))

    first = redeem()
    assert redeem() == first
    assert hq.balance(card) == 7_500


def test_a_retried_lock_gets_its_first_answer_after_another_till_took_the_card(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    key = request("lock-1", "LockCard", card)

    def lock() -> object:
        return hq.run(hq.cards.lock_card(key=key, terminal_id=TILL, card_number=card,
                                         transaction_id="sale-1"))

    first = lock()
    hq.clock.advance(timedelta(hours=5))  # past the lease: another till may take the card
    token = hq.lock(card, "sale-2", till="till-2")
    # Locking again now would be CARD_LOCKED; the retry is answered as the first time.
    assert lock() == first
    assert hq.lock_holder(card) == ("till-2", "sale-2", token)


def test_a_request_id_reused_with_content_that_would_succeed_is_refused_and_changes_nothing(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    hq.run(hq.cards.add_value(key=request("r-1", "AddValue", 100), terminal_id=TILL,
                              card_number=card, amount=Money(100, "EUR"), transaction_id="s"))
    with pytest.raises(RequestIdReused):
        hq.run(hq.cards.add_value(key=request("r-1", "AddValue", 999), terminal_id=TILL,
                                  card_number=card, amount=Money(999, "EUR"),
                                  transaction_id="s"))
    with pytest.raises(RequestIdReused):  # another RPC, a card it would lock
        hq.run(hq.cards.lock_card(key=request("r-1", "LockCard", card), terminal_id=TILL,
                                  card_number=card, transaction_id="s"))
    assert hq.balance(card) == 10_100
    assert hq.lock_holder(card) is None


def test_a_request_id_reused_with_content_that_would_fail_is_request_id_reused(hq: HQ) -> None:
    card = hq.issue(10_000)
    hq.run(hq.cards.add_value(key=request("r-1", "AddValue", 100), terminal_id=TILL,
                              card_number=card, amount=Money(100, "EUR"), transaction_id="s"))
    unknown = generate_card_number()
    with pytest.raises(CardNotFound):  # what a new request id gets
        hq.run(hq.cards.lock_card(key=request("r-2", "LockCard", unknown), terminal_id=TILL,
                                  card_number=unknown, transaction_id="s"))
    with pytest.raises(RequestIdReused):
        hq.run(hq.cards.lock_card(key=request("r-1", "LockCard", unknown), terminal_id=TILL,
                                  card_number=unknown, transaction_id="s"))
    assert hq.balance(card) == 10_100
