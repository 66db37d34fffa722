"""One limit on lookups of unknown cards per till (issue 9), counted on every path that
tells whether a card exists, which never stops a till's work on the cards it holds, and which
answers every other card the same way once a till is over it (so it is no oracle itself)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fakes import FakeStorage
from offline_scenarios import HQ, TILL, line, offline

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.errors import (
    CardAlreadyExists,
    CardNotFound,
    CurrencyMismatch,
    RateLimited,
    StoredValueError,
)
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import OfflineOutcome
from storedvalue.hq.services.throttle import UnknownCardThrottle

LIMIT = 3
UNKNOWN = ["79927398713", "4111111111111111", "5555555555554444", "378282246310005",
           "6011111111111117", "3530111333300000", "4012888888881881"]


@dataclass
class Monotonic:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def hq(monotonic: Monotonic) -> Iterator[HQ]:
    services = HQ(FakeStorage(), throttle=UnknownCardThrottle(limit=LIMIT, window_seconds=60,
                                                              monotonic=monotonic))
    yield services
    services.close()


def get_card(hq: HQ, number: str, till: str = TILL) -> object:
    return hq.run(hq.cards.get_card(caller=till, card_number=number))


def go_over_the_limit(hq: HQ, till: str = TILL) -> None:
    for number in UNKNOWN[:LIMIT]:
        with pytest.raises(CardNotFound):
            get_card(hq, number, till)


def refusal(call: object) -> type[StoredValueError]:
    assert callable(call)
    with pytest.raises(StoredValueError) as raised:
        call()
    return type(raised.value)


def test_over_the_limit_a_till_keeps_using_the_cards_it_has_locked(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    go_over_the_limit(hq)

    assert hq.run(hq.cards.get_card(caller=TILL, card_number=card)).balance_minor == 10_000
    assert hq.lock(card, "sale-1") == token  # renewing its own lock
    redeemed = hq.run(hq.cards.redeem(
        key=hq.key(TILL, "Redeem"), terminal_id=TILL, card_number=card,
        transaction_id="sale-1", line_id="1", fencing_token=token, amount=Money(2_500, "EUR")))
    assert redeemed.card.balance_minor == 7_500


def test_over_the_limit_other_cards_get_the_same_answer_whether_they_exist_or_not(
    hq: HQ,
) -> None:
    existing = hq.issue(10_000)
    go_over_the_limit(hq)

    calls = {
        "GetCard": lambda n: get_card(hq, n),
        "LockCard": lambda n: hq.lock(n, "sale-2"),
        "AddValue": lambda n: hq.run(hq.cards.add_value(
            key=hq.key(TILL, "AddValue"), terminal_id=TILL, card_number=n,
            amount=Money(100, "EUR"), transaction_id="")),
        "Redeem": lambda n: hq.run(hq.cards.redeem(
            key=hq.key(TILL, "Redeem"), terminal_id=TILL, card_number=n, transaction_id="s",
            line_id="1", fencing_token=1, amount=Money(1, "EUR"))),
        "UnlockCard": lambda n: hq.unlock(n, "s", 1),
        "IssueCard": lambda n: hq.run(hq.cards.issue_card(
            key=hq.key(TILL, "IssueCard"), terminal_id=TILL, kind=CardKind.GIFT_CARD,
            initial_value=Money(100, "EUR"), card_number=n, transaction_id="")),
    }
    for name, call in calls.items():
        answers = {refusal(lambda c=call, n=n: c(n)) for n in (existing, UNKNOWN[-1])}
        assert answers == {RateLimited}, name
    assert hq.balance(existing) == 10_000


def test_the_limit_is_per_till_and_ends_when_the_window_slides(
    hq: HQ, monotonic: Monotonic
) -> None:
    card = hq.issue(10_000)
    go_over_the_limit(hq)
    assert get_card(hq, card, "till-2")  # another till is not affected
    with pytest.raises(RateLimited) as raised:
        get_card(hq, card)
    assert raised.value.metadata["retry_after_seconds"] == "60"
    monotonic.now += 61
    assert get_card(hq, card)


def test_currency_mismatches_and_taken_card_numbers_count_as_unknown_lookups(hq: HQ) -> None:
    card = hq.issue(10_000)
    with pytest.raises(CurrencyMismatch):
        hq.run(hq.cards.add_value(key=hq.key(TILL, "AddValue"), terminal_id=TILL, card_number=card,
                                  amount=Money(100, "XXX"), transaction_id=""))
    with pytest.raises(CardAlreadyExists):
        hq.run(hq.cards.issue_card(key=hq.key(TILL, "IssueCard"), terminal_id=TILL,
                                   kind=CardKind.GIFT_CARD, initial_value=Money(100, "EUR"),
                                   card_number=card, transaction_id=""))
    with pytest.raises(CardNotFound):
        get_card(hq, UNKNOWN[0])
    with pytest.raises(RateLimited):
        get_card(hq, UNKNOWN[1])


def test_a_till_over_the_limit_learns_nothing_from_a_batch_of_guessed_cards(hq: HQ) -> None:
    """The issue's probe: refused on GetCard, then 20 one-line offline transactions on
    guessed numbers in currency XXX, one of them a real card."""
    real = hq.issue(10_000)
    go_over_the_limit(hq)
    guesses = [*UNKNOWN[:9], real, *UNKNOWN[9:]]
    batch = [offline(seq, line(number, 100, currency="XXX"))
             for seq, number in enumerate(guesses, start=1)]

    results = hq.sync(*batch).results

    assert {(r.outcome, r.reason) for r in results} == {(OfflineOutcome.REJECTED,
                                                         "RATE_LIMITED")}
    assert all(real[-4:] not in r.message and "EUR" not in r.message for r in results)
    assert hq.balance(real) == 10_000


def test_offline_lookups_spend_the_same_budget_within_one_batch(hq: HQ) -> None:
    real = hq.issue(10_000)
    guesses = [UNKNOWN[0], UNKNOWN[1], real, UNKNOWN[2], UNKNOWN[3]]
    batch = [offline(seq, line(number, 100, currency="XXX"))
             for seq, number in enumerate(guesses, start=1)]

    reasons = [r.reason for r in hq.sync(*batch).results]

    assert reasons == ["CARD_NOT_FOUND", "CARD_NOT_FOUND", "CURRENCY_MISMATCH",
                       "RATE_LIMITED", "RATE_LIMITED"]
    with pytest.raises(RateLimited):
        get_card(hq, real)


def test_over_the_limit_the_tills_own_offline_sales_are_still_applied(hq: HQ) -> None:
    card = hq.issue(10_000)
    token = hq.lock(card, "sale-1")
    go_over_the_limit(hq)
    (result,) = hq.sync(offline(1, line(card, 2_500, token=token))).results
    assert result.outcome is OfflineOutcome.APPLIED
    assert hq.balance(card) == 7_500
