"""A till that spends other tills' locked cards or guesses card numbers, through the wire
(issue 9): its offline lines are applied with an exception the back office sees, it never
releases another till's lock, and guessing stays bounded by one limit without stopping its
work on the cards it holds."""

from __future__ import annotations

from functools import partial

import grpc

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import RunningHQ
from .harness import Till, eur, expect_failure, new_id
from .test_offline_wire import allow_gift_cards_offline, offline_sale, sync

# The default limit of a `create_server` HQ: 20 unknown cards a minute per till.
DEFAULT_LIMIT = 20
GUESSES = ["79927398713", "4111111111111111", "5555555555554444", "378282246310005",
           "6011111111111117", "3530111333300000", "4012888888881881"]


def lock_not_held_exceptions(hq: RunningHQ, card_number: str) -> list[bo.OfflineException]:
    listed = hq.back_office.call("ListOfflineExceptions", bo.ListOfflineExceptionsRequest(
        card_number=card_number)).exceptions
    return [e for e in listed if e.kind == bo.OFFLINE_EXCEPTION_KIND_LOCK_NOT_HELD]


def test_a_till_spending_another_tills_locked_card_offline_is_an_exception(
    hq: RunningHQ,
) -> None:
    till_a, till_b = hq.till("till-a"), hq.till("till-b")
    card = till_a.issue_gift_card(10_000).card_number
    lock_a = till_a.lock(card, "sale-a").lock
    shown = till_b.get_card(card).lock.fencing_token  # GetCard shows the token to anyone
    version = allow_gift_cards_offline(hq)

    with_their_token, made_up = sync(
        till_b,
        offline_sale(1, card, 1_000, token=shown, txn="sale-b1", params_version=version),
        offline_sale(2, card, 1_000, token=shown + 40, txn="sale-b2", params_version=version),
    ).results

    for result in (with_their_token, made_up):
        assert result.outcome == offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION
        assert result.reason == "LOCK_NOT_HELD"
    assert len(lock_not_held_exceptions(hq, card)) == 2
    after = till_a.get_card(card)
    assert after.balance == eur(8_000)  # the goods left the store: applied
    assert after.lock == lock_a  # till A still holds its lock


def test_a_token_another_till_held_before_a_forced_unlock_is_an_exception(
    hq: RunningHQ,
) -> None:
    till_a, till_b = hq.till("till-a"), hq.till("till-b")
    card = till_a.issue_gift_card(10_000).card_number
    stale = till_a.lock(card, "sale-a").lock.fencing_token
    hq.back_office.call("ForceUnlockCard", bo.ForceUnlockCardRequest(
        request_id=new_id(), card_number=card, reason="till A stolen"))
    version = allow_gift_cards_offline(hq)

    (result,) = sync(till_b, offline_sale(1, card, 1_000, token=stale, txn="sale-b",
                                          params_version=version)).results

    assert result.outcome == offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION
    assert result.reason == "LOCK_NOT_HELD"
    assert len(lock_not_held_exceptions(hq, card)) == 1


def go_over_the_limit(till: Till) -> None:
    for n in range(DEFAULT_LIMIT):
        failure = expect_failure(partial(till.get_card, GUESSES[n % len(GUESSES)]))
        assert failure.reason == "CARD_NOT_FOUND"


def test_over_the_limit_a_till_still_works_on_the_card_it_holds(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000).card_number
    lock = till.lock(card, "sale-1").lock
    go_over_the_limit(till)

    assert till.get_card(card).balance == eur(10_000)
    redeemed = till.call("Redeem", ts.RedeemRequest(
        request_id=new_id(), card_number=card, transaction_id="sale-1", line_id="1",
        fencing_token=lock.fencing_token, amount=eur(2_500)))
    assert redeemed.card.balance == eur(7_500)
    refused = expect_failure(lambda: till.get_card(GUESSES[0]))
    assert (refused.code, refused.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              "RATE_LIMITED")


def test_an_offline_batch_of_guesses_reveals_nothing_once_over_the_limit(
    hq: RunningHQ,
) -> None:
    owner, prober = hq.till("till-1"), hq.till("till-9")
    real = owner.issue_gift_card(10_000).card_number
    go_over_the_limit(prober)
    guesses = [*GUESSES[:4], real, *GUESSES[4:7]]
    batch = [
        offline_pb2.OfflineTransaction(
            transaction_id=f"probe-{seq}", sequence_number=seq,
            completed_at=offline_sale(1, real, 1).completed_at,
            redeem_lines=[offline_pb2.OfflineRedeemLine(
                line_id="1", card_number=number, card_kind=common_pb2.CARD_KIND_GIFT_CARD,
                amount=common_pb2.Money(amount_minor=100, currency_code="XXX"))],
        )
        for seq, number in enumerate(guesses, start=1)
    ]

    results = sync(prober, *batch).results

    assert {(r.outcome, r.reason) for r in results} == {
        (offline_pb2.OFFLINE_OUTCOME_REJECTED, "RATE_LIMITED")}
    assert all("EUR" not in r.message and real[-4:] not in r.message for r in results)
    assert owner.get_card(real).balance == eur(10_000)
