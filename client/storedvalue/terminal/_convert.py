"""Translation between the wire messages (storedvalue.v1) and the library's frozen values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import timestamp_pb2

from storedvalue.v1 import common_pb2, offline_pb2, parameters_pb2

from ._model import (
    Card,
    CardKind,
    CardStatus,
    Lock,
    Money,
    Parameters,
    SyncLimits,
    SyncOutcome,
)

_KIND_FROM_PB = {
    common_pb2.CARD_KIND_GIFT_CARD: CardKind.GIFT_CARD,
    common_pb2.CARD_KIND_CREDIT_MEMO: CardKind.CREDIT_MEMO,
}
_KIND_TO_PB = {kind: value for value, kind in _KIND_FROM_PB.items()}
_STATUS_FROM_PB = {
    common_pb2.CARD_STATUS_ACTIVE: CardStatus.ACTIVE,
    common_pb2.CARD_STATUS_FLAGGED: CardStatus.FLAGGED,
    common_pb2.CARD_STATUS_REDEEMED: CardStatus.REDEEMED,
}
_OUTCOME_FROM_PB = {
    offline_pb2.OFFLINE_OUTCOME_APPLIED: SyncOutcome.APPLIED,
    offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED: SyncOutcome.ALREADY_APPLIED,
    offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION: SyncOutcome.APPLIED_WITH_EXCEPTION,
    offline_pb2.OFFLINE_OUTCOME_REJECTED: SyncOutcome.REJECTED,
}


def money_to_pb(money: Money) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=money.amount_minor, currency_code=money.currency_code)


def money_from_pb(money: common_pb2.Money) -> Money:
    return Money(money.amount_minor, money.currency_code or "XXX")


def kind_to_pb(kind: CardKind) -> common_pb2.CardKind.ValueType:
    return _KIND_TO_PB[kind]


def kind_from_pb(kind: common_pb2.CardKind.ValueType) -> CardKind:
    try:
        return _KIND_FROM_PB[kind]
    except KeyError:
        raise ValueError(f"HQ sent an unknown card kind {kind}") from None


def outcome_from_pb(outcome: offline_pb2.OfflineOutcome.ValueType) -> SyncOutcome | None:
    return _OUTCOME_FROM_PB.get(outcome)


def timestamp_from_pb(ts: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)


def timestamp_to_pb(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment.astimezone(UTC))
    return ts


def lock_from_pb(lock: common_pb2.Lock) -> Lock:
    return Lock(
        card_number=lock.card_number,
        terminal_id=lock.terminal_id,
        transaction_id=lock.transaction_id,
        fencing_token=lock.fencing_token,
        lease_expires_at=(
            timestamp_from_pb(lock.lease_expires_at) if lock.HasField("lease_expires_at") else None
        ),
        acquired_at=timestamp_from_pb(lock.acquired_at) if lock.HasField("acquired_at") else None,
    )


def card_from_pb(card: common_pb2.Card) -> Card:
    return Card(
        card_number=card.card_number,
        kind=kind_from_pb(card.kind),
        status=_STATUS_FROM_PB.get(card.status, CardStatus.ACTIVE),
        balance=money_from_pb(card.balance),
        lock=lock_from_pb(card.lock) if card.HasField("lock") else None,
        issued_at=timestamp_from_pb(card.issued_at) if card.HasField("issued_at") else None,
        remainder_of_card_number=card.remainder_of_card_number,
    )


def parameters_from_pb(parameters: parameters_pb2.Parameters) -> Parameters:
    return Parameters(
        version=parameters.version,
        gift_card_offline_completion_allowed=parameters.gift_card_offline_completion_allowed,
        credit_memo_offline_completion_allowed=parameters.credit_memo_offline_completion_allowed,
        lock_lease=parameters.lock_lease.ToTimedelta(),
        updated_at=(
            timestamp_from_pb(parameters.updated_at) if parameters.HasField("updated_at") else None
        ),
    )


def sync_limits_from_pb(limits: parameters_pb2.SyncLimits) -> SyncLimits:
    return SyncLimits(
        max_transactions_per_batch=limits.max_transactions_per_batch,
        max_lines_per_transaction=limits.max_lines_per_transaction,
        max_message_bytes=limits.max_message_bytes,
    )
