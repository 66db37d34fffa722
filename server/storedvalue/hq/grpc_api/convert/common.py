"""What every message shares: times, durations, money, card kinds, enum values by name, and
the digests that identify a request's content."""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.moments import (
    EPOCH,
    INVALID_TIMESTAMP,
    duration_from_parts,
    moment_from_epoch,
)
from storedvalue.hq.domain.money import Money
from storedvalue.v1 import common_pb2

E = TypeVar("E", bound=enum.Enum)
V = TypeVar("V", covariant=True)


class ProtoEnum(Protocol[V]):
    """A generated proto enum (its `EnumTypeWrapper`)."""

    def Value(self, name: str) -> V: ...  # noqa: N802 - protobuf's name


def enum_to_proto(members: Iterable[E], proto_enum: ProtoEnum[V], prefix: str) -> dict[E, V]:
    """Each domain member's proto value. By the contract's rule a proto value's name is the
    enum's prefix and the domain member's value (CARD_KIND_ + GIFT_CARD)."""
    return {member: proto_enum.Value(prefix + member.value) for member in members}


# -- digests --------------------------------------------------------------------------------


def request_fingerprint(request: Message) -> bytes:
    """What makes two requests "the same content" (AIP-155): the request without its
    request_id, serialized deterministically, hashed."""
    copy = type(request)()
    copy.CopyFrom(request)
    if "request_id" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("request_id")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


def message_fingerprint(message: Message) -> bytes:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).digest()


# -- times ----------------------------------------------------------------------------------


def fill_timestamp(target: timestamp_pb2.Timestamp, value: datetime) -> None:
    """`target.FromDatetime(value)`, a naive `value` being UTC, without the `struct_time`
    round trip (LockCard and Redeem answer with several on every sale)."""
    delta = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - EPOCH
    target.seconds = delta.days * 86_400 + delta.seconds
    target.nanos = delta.microseconds * 1000


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    fill_timestamp(ts, value)
    return ts


def optional_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if value is None else timestamp(value)


def moment_from_proto(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A client's Timestamp; INVALID_FIELD unless well formed and in range."""
    found = moment_from_epoch(ts.seconds, ts.nanos)
    if found is None:
        raise InvalidField(field, INVALID_TIMESTAMP)
    return found


def duration_to_proto(value: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(value)
    return duration


def duration_from_proto(duration: duration_pb2.Duration, field: str) -> timedelta:
    """A client's Duration; INVALID_FIELD unless well formed and in range."""
    return duration_from_parts(duration.seconds, duration.nanos, field)


# -- money and card kinds -------------------------------------------------------------------


def money_to_proto(money: Money) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=money.amount_minor, currency_code=money.currency)


def optional_money_to_proto(money: Money | None) -> common_pb2.Money | None:
    return None if money is None else money_to_proto(money)


def fill_money(target: common_pb2.Money, money: Money) -> None:
    target.amount_minor = money.amount_minor
    target.currency_code = money.currency


def money_from_proto(money: common_pb2.Money) -> Money:
    return Money(money.amount_minor, money.currency_code)


CARD_KINDS_TO_PROTO = enum_to_proto(CardKind, common_pb2.CardKind, "CARD_KIND_")
CARD_KINDS_BY_PROTO = {value: kind for kind, value in CARD_KINDS_TO_PROTO.items()}


def card_kind_from_proto(kind: common_pb2.CardKind.ValueType) -> CardKind | None:
    """CARD_KIND_UNSPECIFIED (or a value this HQ does not know) is None."""
    return CARD_KINDS_BY_PROTO.get(kind)


def card_kind_to_proto(kind: CardKind | None) -> common_pb2.CardKind.ValueType:
    if kind is None:
        return common_pb2.CARD_KIND_UNSPECIFIED
    return CARD_KINDS_TO_PROTO[kind]


# -- protobuf wire encoding, where HQ writes bytes itself --------------------------------

ONE_BYTE_VARINTS = [bytes((value,)) for value in range(0x80)]


def varint(value: int) -> bytes:
    """A varint (an int64's two's complement when negative, as protobuf encodes it)."""
    if 0 <= value < 0x80:
        return ONE_BYTE_VARINTS[value]
    if 0 < value < 0x4000:  # the usual balances and sequence numbers: no loop
        return bytes((value & 0x7F | 0x80, value >> 7))
    if 0 < value < 0x200000:
        return bytes((value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14))
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
