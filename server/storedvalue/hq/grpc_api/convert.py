"""Protobuf <-> domain conversions, and the digests that identify a request's content.

Domain datetimes are aware UTC; proto Timestamps are UTC by definition. An unset message
field becomes None on the way in (the domain decides whether that is allowed), never a zero
value that would look like a real amount or time.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from storedvalue.hq.domain.cards import Card, CardKind, Lock
from storedvalue.hq.domain.journal import JournalEntry
from storedvalue.hq.domain.moments import moment_from_epoch
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineException,
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineRedeemLine,
    OfflineReversal,
    OfflineReversalResult,
    OfflineTransaction,
    OfflineTransactionResult,
    OfflineUnlock,
    ReversalOutcome,
)
from storedvalue.hq.domain.offline_transactions import UnsyncedAmount
from storedvalue.hq.domain.terminals import SequenceGap
from storedvalue.hq.grpc_api.card_views import fill_card, fill_lock, fill_timestamp
from storedvalue.hq.services.offline import SyncLimits, SyncStatus
from storedvalue.v1 import (
    back_office_service_pb2 as bo_pb,
)
from storedvalue.v1 import (
    common_pb2,
    offline_pb2,
    parameters_pb2,
)

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


# -- scalars --------------------------------------------------------------------------------


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    fill_timestamp(ts, value)
    return ts


def optional_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    return None if value is None else timestamp(value)


def money_to_proto(money: Money) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=money.amount_minor, currency_code=money.currency)


def money_from_proto(money: common_pb2.Money) -> Money:
    return Money(amount_minor=money.amount_minor, currency=money.currency_code)


_CARD_KINDS_BY_PROTO = {
    common_pb2.CardKind.Value("CARD_KIND_" + kind.value): kind for kind in CardKind
}
_CARD_KINDS_TO_PROTO = {kind: value for value, kind in _CARD_KINDS_BY_PROTO.items()}


def card_kind_from_proto(kind: common_pb2.CardKind.ValueType) -> CardKind | None:
    """CARD_KIND_UNSPECIFIED (or a value this HQ does not know) is None."""
    return _CARD_KINDS_BY_PROTO.get(kind)


def card_kind_to_proto(kind: CardKind | None) -> common_pb2.CardKind.ValueType:
    if kind is None:
        return common_pb2.CARD_KIND_UNSPECIFIED
    return _CARD_KINDS_TO_PROTO[kind]


# -- cards and locks -----------------------------------------------------------------------


def lock_to_proto(lock: Lock) -> common_pb2.Lock:
    message = common_pb2.Lock()
    fill_lock(message, lock)
    return message


def card_to_proto(card: Card) -> common_pb2.Card:
    """The card as handed out by the services (a snapshot: `lock` is the live lock only)."""
    message = common_pb2.Card()
    fill_card(message, card)
    return message


# -- parameters -----------------------------------------------------------------------------


def sync_limits_to_proto(limits: SyncLimits) -> parameters_pb2.SyncLimits:
    return parameters_pb2.SyncLimits(
        max_transactions_per_batch=limits.max_transactions_per_batch,
        max_lines_per_transaction=limits.max_lines_per_transaction,
        max_message_bytes=limits.max_message_bytes,
        max_sequence_jump=limits.max_sequence_jump,
    )


# -- offline transactions -------------------------------------------------------------------


def offline_transaction_from_proto(txn: offline_pb2.OfflineTransaction) -> OfflineTransaction:
    # Runs for every item of every batch: no generator per field, no empty tuples built.
    lines = txn.redeem_lines
    unlocks = txn.unlocks
    reversals = txn.reversals
    completed_at = None
    unreadable: tuple[str, ...] = ()
    if txn.HasField("completed_at"):
        sent = txn.completed_at
        completed_at = moment_from_epoch(sent.seconds, sent.nanos)
        if completed_at is None:
            # The item is rejected for it, not the batch (the domain decides).
            unreadable = ("completed_at",)
    last_reached_hq_at = None
    if txn.HasField("last_reached_hq_at"):
        sent = txn.last_reached_hq_at
        last_reached_hq_at = moment_from_epoch(sent.seconds, sent.nanos)
        if last_reached_hq_at is None:
            unreadable += ("last_reached_hq_at",)
    return OfflineTransaction(
        transaction_id=txn.transaction_id,
        sequence_number=txn.sequence_number,
        completed_at=completed_at,
        parameters_version=txn.parameters_version,
        redeem_lines=tuple([_redeem_line_from_proto(line) for line in lines]) if lines else (),
        unlocks=(
            tuple(
                [
                    OfflineUnlock(
                        card_number=unlock.card_number,
                        transaction_id=unlock.transaction_id,
                        fencing_token=unlock.fencing_token,
                    )
                    for unlock in unlocks
                ]
            )
            if unlocks
            else ()
        ),
        fingerprint=message_fingerprint(txn),
        reversals=tuple([_reversal_from_proto(r) for r in reversals]) if reversals else (),
        unreadable_fields=unreadable,
        last_reached_hq_at=last_reached_hq_at,
        unsynced_amounts=(
            tuple([unsynced_from_proto(held) for held in txn.unsynced_amounts])
            if txn.unsynced_amounts else ()
        ),
    )


def unsynced_from_proto(held: offline_pb2.UnsyncedAmount) -> UnsyncedAmount:
    return UnsyncedAmount(
        card_kind=_CARD_KINDS_BY_PROTO.get(held.card_kind),
        amount=money_from_proto(held.amount) if held.HasField("amount") else None,
        line_count=held.line_count,
    )


def unsynced_to_proto(held: UnsyncedAmount) -> offline_pb2.UnsyncedAmount:
    return offline_pb2.UnsyncedAmount(
        card_kind=card_kind_to_proto(held.card_kind),
        amount=money_to_proto(held.amount) if held.amount is not None else None,
        line_count=held.line_count,
    )


def _reversal_from_proto(reversal: offline_pb2.OfflineReversal) -> OfflineReversal:
    return OfflineReversal(
        line_id=reversal.line_id,
        card_number=reversal.card_number,
        amount=money_from_proto(reversal.amount) if reversal.HasField("amount") else None,
        fencing_token=reversal.fencing_token,
    )


def _redeem_line_from_proto(line: offline_pb2.OfflineRedeemLine) -> OfflineRedeemLine:
    if line.HasField("amount"):
        amount = line.amount
        money: Money | None = Money(amount.amount_minor, amount.currency_code)
    else:
        money = None
    return OfflineRedeemLine(
        line_id=line.line_id,
        card_number=line.card_number,
        card_kind=_CARD_KINDS_BY_PROTO.get(line.card_kind),
        amount=money,
        fencing_token=line.fencing_token,
        online_redeem_attempted=line.online_redeem_attempted,
    )


def offline_transaction_to_proto(txn: OfflineTransaction) -> offline_pb2.OfflineTransaction:
    return offline_pb2.OfflineTransaction(
        transaction_id=txn.transaction_id,
        sequence_number=txn.sequence_number,
        completed_at=optional_timestamp(txn.completed_at),
        parameters_version=txn.parameters_version,
        redeem_lines=[
            offline_pb2.OfflineRedeemLine(
                line_id=line.line_id,
                card_number=line.card_number,
                card_kind=card_kind_to_proto(line.card_kind),
                amount=money_to_proto(line.amount) if line.amount is not None else None,
                fencing_token=line.fencing_token,
                online_redeem_attempted=line.online_redeem_attempted,
            )
            for line in txn.redeem_lines
        ],
        unlocks=[
            offline_pb2.OfflineUnlock(
                card_number=unlock.card_number,
                transaction_id=unlock.transaction_id,
                fencing_token=unlock.fencing_token,
            )
            for unlock in txn.unlocks
        ],
        reversals=[
            offline_pb2.OfflineReversal(
                line_id=reversal.line_id,
                card_number=reversal.card_number,
                amount=money_to_proto(reversal.amount) if reversal.amount is not None else None,
                fencing_token=reversal.fencing_token,
            )
            for reversal in txn.reversals
        ],
        last_reached_hq_at=optional_timestamp(txn.last_reached_hq_at),
        unsynced_amounts=[unsynced_to_proto(held) for held in txn.unsynced_amounts],
    )


_OUTCOMES = {
    outcome: offline_pb2.OfflineOutcome.Value("OFFLINE_OUTCOME_" + outcome.value)
    for outcome in OfflineOutcome
}
_LINE_OUTCOMES = {
    outcome: offline_pb2.OfflineLineOutcome.Value("OFFLINE_LINE_OUTCOME_" + outcome.value)
    for outcome in OfflineLineOutcome
}
_REVERSAL_OUTCOMES = {
    outcome: offline_pb2.OfflineReversalOutcome.Value("OFFLINE_REVERSAL_OUTCOME_" + outcome.value)
    for outcome in ReversalOutcome
}


def offline_result_to_proto(
    result: OfflineTransactionResult,
) -> offline_pb2.OfflineTransactionResult:
    message = offline_pb2.OfflineTransactionResult()
    fill_offline_result(message, result)
    return message


# Keyed by member name: an Enum member's hash is computed in Python, its name is a plain str.
_OUTCOMES_BY_NAME = {outcome.name: value for outcome, value in _OUTCOMES.items()}
_LINE_OUTCOMES_BY_NAME = {outcome.name: value for outcome, value in _LINE_OUTCOMES.items()}


def fill_offline_result(
    message: offline_pb2.OfflineTransactionResult, result: OfflineTransactionResult
) -> None:
    """Set an empty message (as from ``results.add()``) in place: no message built and copied
    per result, which matters for a batch's hundreds of results."""
    message.transaction_id = result.transaction_id
    message.sequence_number = result.sequence_number
    message.outcome = _OUTCOMES_BY_NAME[result.outcome._name_]
    message.original_outcome = _OUTCOMES_BY_NAME[result.original_outcome._name_]
    if result.reason:
        message.reason = result.reason
    if result.message:
        message.message = result.message
    if result.line_results:
        add_line = message.line_results.add
        for line in result.line_results:
            _fill_line_result(add_line(), line)
    if result.exception_ids:
        message.exception_ids.extend(result.exception_ids)
    if result.reversal_results:
        add_reversal = message.reversal_results.add
        for reversal in result.reversal_results:
            _fill_reversal_result(add_reversal(), reversal)


def _fill_line_result(message: offline_pb2.OfflineLineResult, result: OfflineLineResult) -> None:
    message.line_id = result.line_id
    message.outcome = _LINE_OUTCOMES_BY_NAME[result.outcome._name_]
    if result.reason:
        message.reason = result.reason
    balance = result.balance_after
    if balance is not None:
        balance_after = message.balance_after
        balance_after.amount_minor = balance.amount_minor
        balance_after.currency_code = balance.currency
    if result.remainder_credit_memo_number:
        message.remainder_credit_memo_number = result.remainder_credit_memo_number


def _fill_reversal_result(
    message: offline_pb2.OfflineReversalResult, result: OfflineReversalResult
) -> None:
    message.line_id = result.line_id
    message.outcome = _REVERSAL_OUTCOMES[result.outcome]
    message.reason = result.reason
    if result.balance_after is not None:
        message.balance_after.CopyFrom(money_to_proto(result.balance_after))
    message.voided_credit_memo_number = result.voided_credit_memo_number
    message.remainder_credit_memo_number = result.remainder_credit_memo_number


def gap_to_proto(gap: SequenceGap) -> offline_pb2.SequenceGap:
    return offline_pb2.SequenceGap(first_missing=gap.first_missing, last_missing=gap.last_missing)


def sync_status_to_proto(status: SyncStatus) -> offline_pb2.TerminalSyncStatus:
    return offline_pb2.TerminalSyncStatus(
        terminal_id=status.terminal_id,
        highest_contiguous_sequence=status.highest_contiguous_sequence,
        highest_sequence_seen=status.highest_sequence_seen,
        gaps=[gap_to_proto(gap) for gap in status.gaps],
        last_synced_at=optional_timestamp(status.last_synced_at),
    )


# -- back office ----------------------------------------------------------------------------


def journal_entry_to_proto(entry: JournalEntry) -> bo_pb.JournalEntry:
    return bo_pb.JournalEntry(
        entry_id=entry.entry_id,
        card_number=entry.card_number,
        kind=bo_pb.JournalEntryKind.Value("JOURNAL_ENTRY_KIND_" + entry.kind.value),
        amount=money_to_proto(Money(entry.amount_minor, entry.currency)),
        balance_after=money_to_proto(Money(entry.balance_after_minor, entry.currency)),
        terminal_id=entry.terminal_id,
        transaction_id=entry.transaction_id,
        line_id=entry.line_id,
        offline=entry.offline,
        occurred_at=timestamp(entry.occurred_at),
        recorded_at=timestamp(entry.recorded_at),
        note=entry.note,
    )


def offline_exception_to_proto(exc: OfflineException) -> bo_pb.OfflineException:
    return bo_pb.OfflineException(
        exception_id=exc.exception_id,
        kind=bo_pb.OfflineExceptionKind.Value("OFFLINE_EXCEPTION_KIND_" + exc.kind.value),
        terminal_id=exc.terminal_id,
        transaction_id=exc.transaction_id,
        line_id=exc.line_id,
        card_number=exc.card_number,
        amount=money_to_proto(exc.amount) if exc.amount is not None else None,
        reason=exc.reason,
        message=exc.message,
        created_at=timestamp(exc.created_at),
        resolved_at=optional_timestamp(exc.resolved_at),
        resolved_by=exc.resolved_by,
        resolution=exc.resolution,
        transaction=(
            offline_transaction_to_proto(exc.transaction) if exc.transaction is not None else None
        ),
    )
