"""The online calls' shortcuts give exactly what protobuf's own constructors and
conversions give: cards and locks filled in place, and request fingerprints taken without
copying the request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import struct_pb2, timestamp_pb2

from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.hq.grpc_api.call_context import _has_maps, fingerprint
from storedvalue.hq.grpc_api.convert.cards import fill_card, fill_lock
from storedvalue.hq.grpc_api.convert.common import request_fingerprint
from storedvalue.hq.services.idempotency import content_kept, same_content
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


def stamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def lock_to_proto(lock: Lock) -> common_pb2.Lock:
    """The reference: the message built with protobuf's constructors and FromDatetime."""
    return common_pb2.Lock(
        card_number=lock.card_number, terminal_id=lock.terminal_id,
        transaction_id=lock.transaction_id, fencing_token=lock.fencing_token,
        lease_expires_at=stamp(lock.lease_expires_at), acquired_at=stamp(lock.acquired_at),
    )


def card_to_proto(card: Card) -> common_pb2.Card:
    return common_pb2.Card(
        card_number=card.card_number,
        kind=common_pb2.CardKind.Value("CARD_KIND_" + card.kind.value),
        status=common_pb2.CardStatus.Value("CARD_STATUS_" + card.status.value),
        balance=common_pb2.Money(amount_minor=card.balance_minor, currency_code=card.currency),
        lock=lock_to_proto(card.lock) if card.lock is not None else None,
        issued_at=stamp(card.issued_at),
        remainder_of_card_number=card.remainder_of_card_number,
    )


@pytest.mark.parametrize("card", CARDS)
def test_a_card_filled_in_place_is_the_card_protobufs_constructors_build(card: Card) -> None:
    filled = common_pb2.Card()
    fill_card(filled, card)
    assert filled == card_to_proto(card)
    assert filled.SerializeToString(deterministic=True) == card_to_proto(card).SerializeToString(
        deterministic=True
    )


def test_a_cards_lock_copied_from_a_filled_lock_is_the_lock_protobufs_constructors_build(
) -> None:
    """LockCard answers with the lock twice: the card's copy is taken from the first."""
    lock = common_pb2.Lock()
    fill_lock(lock, LOCK)
    filled = common_pb2.Card()
    fill_card(filled, CARDS[0], lock)
    assert filled == card_to_proto(CARDS[0])
    assert filled.lock == lock_to_proto(LOCK)


def test_a_lock_filled_in_place_is_the_lock_protobufs_constructors_build() -> None:
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
    pb.AddValueRequest(request_id="y" * 127, card_number="7"),  # the longest one-byte length
    # Past 1,024 bytes, digested by OpenSSL's rather than CPython's own: the same digest.
    pb.AddValueRequest(request_id="z", card_number="7" * 1_020),
    pb.AddValueRequest(request_id="z", card_number="7" * 1_021),
    pb.AddValueRequest(card_number="7" * 5_000),
    # Contents around the sizes kept as they are: 125 to 129 bytes, and 30 to 34.
    *(pb.AddValueRequest(request_id="w", card_number="7" * size) for size in range(123, 128)),
    *(pb.AddValueRequest(request_id="w", card_number="7" * size) for size in range(28, 33)),
]


def _without_id(request: pb.LockCardRequest) -> bytes:
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")
    return copy.SerializeToString(deterministic=True)


@pytest.mark.parametrize("request_message", REQUESTS)
def test_a_fingerprint_without_a_copy_is_the_request_without_its_id_or_its_digest(
    request_message: pb.LockCardRequest,
) -> None:
    found = fingerprint(request_message)
    content = _without_id(request_message)
    if content_kept(len(content)):
        assert found == content
        assert len(found) != 32  # told from a digest by its size
    else:
        assert found == request_fingerprint(request_message)
    # Either way, it matches the digest an HQ before kept contents stored, and itself.
    assert same_content(request_fingerprint(request_message), found)
    assert same_content(found, found)


def test_contents_of_other_requests_do_not_match() -> None:
    """Neither two kept contents nor a kept content and another request's digest."""
    one, other = REQUESTS[0], REQUESTS[3]
    assert not same_content(fingerprint(one), fingerprint(other))
    assert not same_content(request_fingerprint(one), fingerprint(other))
    assert not same_content(fingerprint(one), request_fingerprint(other))


def test_only_messages_with_a_map_at_some_depth_are_serialized_deterministically() -> None:
    """Deterministic serialization differs from the plain one in maps alone."""
    assert _has_maps(struct_pb2.Struct.DESCRIPTOR, set())
    assert _has_maps(struct_pb2.ListValue.DESCRIPTOR, set())  # its values hold structs
    assert not _has_maps(pb.RedeemRequest.DESCRIPTOR, set())
    assert not _has_maps(pb.SyncOfflineBatchRequest.DESCRIPTOR, set())
