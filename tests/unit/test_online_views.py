"""The online calls' shortcuts give exactly what the general conversions give: cards and
locks filled in place, and request fingerprints taken without copying the request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.hq.grpc_api.call_context import fingerprint
from storedvalue.hq.grpc_api.card_views import fill_card, fill_lock
from storedvalue.hq.grpc_api.convert import card_to_proto, lock_to_proto, request_fingerprint
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as pb

NOW = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
LOCK = Lock("7000000000000001", "till-1", "sale-1", 2**40, NOW + timedelta(seconds=30), NOW)
CARDS = [
    Card("7000000000000001", CardKind.GIFT_CARD, CardStatus.ACTIVE, "EUR", 10**15, NOW,
         last_fencing_token=2**40, lock=LOCK),
    Card("7000000000000002", CardKind.CREDIT_MEMO, CardStatus.REDEEMED, "USD", 0,
         NOW.astimezone(timezone(timedelta(hours=-5))), remainder_of_card_number="70001"),
    Card("7000000000000003", CardKind.GIFT_CARD, CardStatus.FLAGGED, "EUR", -250,
         datetime(1969, 12, 31, 23, 59, 59, 999999)),
]


@pytest.mark.parametrize("card", CARDS)
def test_a_card_filled_in_place_is_the_card_the_general_conversion_builds(card: Card) -> None:
    filled = common_pb2.Card()
    fill_card(filled, card)
    assert filled == card_to_proto(card)
    assert filled.SerializeToString(deterministic=True) == card_to_proto(card).SerializeToString(
        deterministic=True
    )


def test_a_lock_filled_in_place_is_the_lock_the_general_conversion_builds() -> None:
    filled = common_pb2.Lock()
    fill_lock(filled, LOCK)
    assert filled == lock_to_proto(LOCK)


REQUESTS = [
    pb.LockCardRequest(request_id="r-1", card_number="7000000000000001", transaction_id="s"),
    pb.LockCardRequest(card_number="7000000000000001", transaction_id="s"),
    pb.RedeemRequest(request_id="é" * 200, card_number="7000000000000001", transaction_id="s",
                     line_id="1", fencing_token=7,
                     amount=common_pb2.Money(amount_minor=5, currency_code="EUR")),
    pb.UnlockCardRequest(request_id="\n", card_number="7", transaction_id="\n"),
    pb.AddValueRequest(request_id="x" * 128),
]


@pytest.mark.parametrize("request_message", REQUESTS)
def test_a_fingerprint_without_a_copy_is_the_fingerprint_of_the_request_without_its_id(
    request_message: pb.LockCardRequest,
) -> None:
    assert fingerprint(request_message) == request_fingerprint(request_message)
