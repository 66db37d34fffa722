"""Request ids (AIP-155) on every storage backend, through the card service: a retried
request gets its first answer and changes nothing more, whatever happened to the card since;
an id reused with other content is REQUEST_ID_REUSED and changes nothing, whether the other
content would have succeeded or failed. (A request's first run does not look its id up
before its work: these are the paths that catch the ones that ran before.)"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any

import pytest
from held_row import card_row_held
from offline_scenarios import HQ, TILL

from storedvalue.hq.domain.cards import Card, generate_card_number
from storedvalue.hq.domain.errors import CardNotFound, RequestIdReused
from storedvalue.hq.domain.money import Money
from storedvalue.hq.grpc_api.terminal_servicer import lock_card_answer, redeem_answer
from storedvalue.hq.services.cards import LockResult
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.unit_of_work import Storage
from storedvalue.v1 import terminal_service_pb2 as pb


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


# -- answered by the transport: LockCard and Redeem remember their encoded response ----------


def test_a_retried_answered_lock_gets_the_same_bytes_after_another_till_took_the_card(
    hq: HQ,
) -> None:
    card = hq.issue(10_000)
    key = request("lock-1", "LockCard", card)

    def lock() -> bytes:
        return hq.run(hq.cards.lock_card(key=key, terminal_id=TILL, card_number=card,
                                         transaction_id="sale-1", answer=lock_card_answer))

    first = lock()
    answered = pb.LockCardResponse.FromString(first)
    assert (answered.lock.terminal_id, answered.card.lock.transaction_id) == (TILL, "sale-1")
    hq.clock.advance(timedelta(hours=5))
    hq.lock(card, "sale-2", till="till-2")
    assert lock() == first
    with pytest.raises(RequestIdReused):  # the same id, another card
        hq.run(hq.cards.lock_card(key=request("lock-1", "LockCard", "other"), terminal_id=TILL,
                                  card_number=card, transaction_id="sale-1",
                                  answer=lock_card_answer))


def test_a_retried_answered_redeem_gets_the_same_bytes_and_debits_once(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    key = request("redeem-1", "Redeem", (card, 2_500))

    def redeem() -> bytes:
        return hq.run(hq.cards.redeem(
            key=key, terminal_id=TILL, card_number=card, transaction_id="sale-1", line_id="1",
            fencing_token=token, amount=Money(2_500, "EUR"), answer=redeem_answer))

    first = redeem()
    assert pb.RedeemResponse.FromString(first).card.balance.amount_minor == 7_500
    assert redeem() == first
    assert hq.balance(card) == 7_500


def test_results_remembered_before_answers_were_are_answered_as_they_were_then(hq: HQ) -> None:
    """An HQ upgraded in place: its request log holds results as JSON objects (`records`:
    what `lock_card` and `redeem` without `answer` still store), and a retry of such a
    request made before the upgrade gets the answer the first call got."""
    card = hq.issue(10_000)
    lock_key = request("lock-1", "LockCard", card)
    locked = hq.run(hq.cards.lock_card(key=lock_key, terminal_id=TILL, card_number=card,
                                       transaction_id="sale-1"))
    redeem_key = request("redeem-1", "Redeem", (card, 2_500))
    redeemed = hq.run(hq.cards.redeem(
        key=redeem_key, terminal_id=TILL, card_number=card, transaction_id="sale-1",
        line_id="1", fencing_token=locked.lock.fencing_token, amount=Money(2_500, "EUR")))
    hq.clock.advance(timedelta(hours=5))
    hq.lock(card, "sale-2", till="till-2")

    assert hq.run(hq.cards.lock_card(
        key=lock_key, terminal_id=TILL, card_number=card, transaction_id="sale-1",
        answer=lock_card_answer)) == lock_card_answer(locked)
    assert hq.run(hq.cards.redeem(
        key=redeem_key, terminal_id=TILL, card_number=card, transaction_id="sale-1",
        line_id="1", fencing_token=locked.lock.fencing_token, amount=Money(2_500, "EUR"),
        answer=redeem_answer)) == redeem_answer(redeemed)
    assert hq.balance(card) == 7_500


def test_a_request_remembered_by_its_digest_is_replayed_for_its_content(hq: HQ) -> None:
    """An HQ upgraded in place: requests it remembered before contents were kept as their
    fingerprint carry their digest; the retry's fingerprint is its content."""
    card = hq.issue(10_000)
    content = b"\x12\x10" + card.encode() + b"\x1a\x06sale-1"
    before = RequestKey(TILL, "lock-1", "LockCard", hashlib.sha256(content).digest())
    first = hq.run(hq.cards.lock_card(key=before, terminal_id=TILL, card_number=card,
                                      transaction_id="sale-1", answer=lock_card_answer))
    after = RequestKey(TILL, "lock-1", "LockCard", content)
    assert hq.run(hq.cards.lock_card(key=after, terminal_id=TILL, card_number=card,
                                     transaction_id="sale-1", answer=lock_card_answer)) == first
    other = RequestKey(TILL, "lock-1", "LockCard", content.replace(b"sale-1", b"sale-2"))
    with pytest.raises(RequestIdReused):
        hq.run(hq.cards.lock_card(key=other, terminal_id=TILL, card_number=card,
                                  transaction_id="sale-2", answer=lock_card_answer))


# -- at once: two requests that do the same thing under two ids ----------------------------
# On PostgreSQL the second waits for the card's row lock held by the first, then reads what
# the first committed (READ COMMITTED); on SQLite the group commit runs the units one by one.


def test_one_line_redeemed_twice_at_once_under_two_request_ids_debits_once(
    hq: HQ, storage: Storage
) -> None:
    """A till's two sends of one sale line (same line id, lock and amount) under two request
    ids arrive together: the line is applied once and both get its result, on PostgreSQL
    too (not LOCK_NOT_HELD for the one that waited for the card: its line was debited)."""
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")

    def redeem(n: int) -> Coroutine[Any, Any, object]:
        return hq.cards.redeem(
            key=request(f"redeem-{n}", "Redeem", (card, 2_500, n)), terminal_id=TILL,
            card_number=card, transaction_id="sale-1", line_id="1", fencing_token=token,
            amount=Money(2_500, "EUR"))

    async def both() -> list[object]:
        return list(await asyncio.gather(redeem(1), redeem(2)))

    with card_row_held(storage, card, until_waiting=2):
        first, second = hq.run(both())
    assert first == second
    assert hq.balance(card) == 7_500
    assert hq.lock_holder(card) is None


def test_one_sale_locked_twice_at_once_under_two_request_ids_gets_one_lock(
    hq: HQ, storage: Storage
) -> None:
    card = hq.issue(10_000)

    def lock(n: int) -> Coroutine[Any, Any, LockResult]:
        return hq.cards.lock_card(key=request(f"lock-{n}", "LockCard", (card, n)),
                                  terminal_id=TILL, card_number=card, transaction_id="sale-1")

    async def both() -> list[LockResult]:
        return list(await asyncio.gather(lock(1), lock(2)))

    with card_row_held(storage, card, until_waiting=2):
        first, second = hq.run(both())
    assert first.lock == second.lock  # the second renews the first's: one token
    assert hq.lock_holder(card) == (TILL, "sale-1", first.lock.fencing_token)


def test_one_lock_released_twice_at_once_under_two_request_ids(
    hq: HQ, storage: Storage
) -> None:
    """One release applies; the other finds the lock gone, as it would one after the other."""
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")

    def unlock(n: int) -> Coroutine[Any, Any, object]:
        return hq.cards.unlock_card(key=request(f"unlock-{n}", "UnlockCard", (card, n)),
                                    terminal_id=TILL, card_number=card, transaction_id="sale-1",
                                    fencing_token=token)

    async def both() -> list[object]:
        return list(await asyncio.gather(unlock(1), unlock(2), return_exceptions=True))

    with card_row_held(storage, card, until_waiting=2):
        outcomes = hq.run(both())
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["Card", "LockNotHeld"]
    assert hq.lock_holder(card) is None
    assert hq.balance(card) == 10_000


def test_value_added_twice_at_once_under_two_request_ids_is_added_twice(
    hq: HQ, storage: Storage
) -> None:
    """Two requests (not one retried): both apply, the second onto the first's balance."""
    card = hq.issue(10_000)

    def add(n: int) -> Coroutine[Any, Any, Card]:
        return hq.cards.add_value(key=request(f"add-{n}", "AddValue", (card, n)),
                                  terminal_id=TILL, card_number=card, amount=Money(100, "EUR"),
                                  transaction_id=f"top-up-{n}")

    async def both() -> list[Card]:
        return list(await asyncio.gather(add(1), add(2)))

    with card_row_held(storage, card, until_waiting=2):
        cards = hq.run(both())
    balances = sorted(added.balance_minor for added in cards)
    assert balances == [10_100, 10_200]
    assert hq.balance(card) == 10_200
