"""Cards and locks written straight into the response messages of the online calls.

The same messages as `convert.card_to_proto` and `convert.lock_to_proto` build, filled in
place: no intermediate messages copied into the response, no name lookups of enum values,
and timestamps computed without a `struct_time` round trip. LockCard and Redeem answer with
these on every sale.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.v1 import common_pb2

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KINDS = {kind: common_pb2.CardKind.Value("CARD_KIND_" + kind.value) for kind in CardKind}
_STATUSES = {
    status: common_pb2.CardStatus.Value("CARD_STATUS_" + status.value) for status in CardStatus
}


def fill_timestamp(target: timestamp_pb2.Timestamp, value: datetime) -> None:
    """`target.FromDatetime(value)`, a naive `value` being UTC."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1000


def fill_lock(target: common_pb2.Lock, lock: Lock) -> None:
    target.card_number = lock.card_number
    target.terminal_id = lock.terminal_id
    target.transaction_id = lock.transaction_id
    target.fencing_token = lock.fencing_token
    fill_timestamp(target.lease_expires_at, lock.lease_expires_at)
    fill_timestamp(target.acquired_at, lock.acquired_at)


def fill_card(target: common_pb2.Card, card: Card) -> None:
    """The card as handed out by the services (a snapshot: `lock` is the live lock only)."""
    target.card_number = card.card_number
    target.kind = _KINDS.get(card.kind, common_pb2.CARD_KIND_UNSPECIFIED)
    target.status = _STATUSES[card.status]
    balance = target.balance
    balance.amount_minor = card.balance_minor
    balance.currency_code = card.currency
    if card.lock is not None:
        fill_lock(target.lock, card.lock)
    fill_timestamp(target.issued_at, card.issued_at)
    target.remainder_of_card_number = card.remainder_of_card_number
