"""Offline transactions in, their results and the terminals' sync status out, and the
offline exceptions the back office sees. A batch carries hundreds of items: the hot paths
here build no message they then copy, and no generator per field."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from google.protobuf import timestamp_pb2

from storedvalue.hq.domain.moments import moment_from_epoch
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineException,
    OfflineExceptionKind,
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
from storedvalue.hq.grpc_api.convert.common import (
    CARD_KINDS_BY_PROTO,
    card_kind_from_proto,
    card_kind_to_proto,
    enum_to_proto,
    fill_money,
    message_fingerprint,
    money_from_proto,
    optional_money_to_proto,
    optional_timestamp,
    timestamp,
)
from storedvalue.hq.services.offline import SyncLimits, SyncStatus
from storedvalue.v1 import back_office_service_pb2 as bo_pb
from storedvalue.v1 import common_pb2, offline_pb2, parameters_pb2

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
    """One transaction (CompleteOffline): the batch decoder's, for a batch of one."""
    (decoded,) = offline_transactions_from_proto((txn,))
    return decoded


def offline_transactions_from_proto(
    transactions: Iterable[offline_pb2.OfflineTransaction],
) -> list[OfflineTransaction]:
    """The domain's offline transactions of a batch (SyncOfflineBatch). Runs for every item
    of every batch: equal moments and line amounts are read once and shared (values, never
    changed), the fields are set positionally, and no generator or empty tuple is built per
    field. A completion or last-contact time out of range leaves the field unreadable: the
    domain rejects that item, not the batch."""
    moments: dict[tuple[int, int], datetime | None] = {}
    amounts: dict[tuple[int, str], Money] = {}
    kinds = CARD_KINDS_BY_PROTO
    fingerprint = message_fingerprint

    def money_of(sent: common_pb2.Money) -> Money:
        key = (sent.amount_minor, sent.currency_code)
        amount = amounts.get(key)
        if amount is None:
            amount = amounts[key] = Money(*key)
        return amount

    def moment_of(sent: timestamp_pb2.Timestamp) -> datetime | None:
        """The moment, or None when it is out of range (the field is then unreadable)."""
        key = (sent.seconds, sent.nanos)
        if key in moments:
            return moments[key]
        moment = moments[key] = moment_from_epoch(*key)
        return moment

    decoded = []
    for txn in transactions:
        completed_at = None
        unreadable: tuple[str, ...] = ()
        if txn.HasField("completed_at"):
            completed_at = moment_of(txn.completed_at)
            if completed_at is None:
                unreadable = ("completed_at",)
        last_reached_hq_at = None
        if txn.HasField("last_reached_hq_at"):
            last_reached_hq_at = moment_of(txn.last_reached_hq_at)
            if last_reached_hq_at is None:
                unreadable += ("last_reached_hq_at",)
        # A repeated field is read through a slice (a list): iterating the container itself
        # ends on an IndexError that the container formats, dearer than the item's decoding.
        lines: tuple[OfflineRedeemLine, ...] = ()
        sent_lines = txn.redeem_lines
        if sent_lines:
            decoded_lines = []
            for line in sent_lines[:]:
                decoded_lines.append(OfflineRedeemLine(
                    line.line_id, line.card_number, kinds.get(line.card_kind),
                    money_of(line.amount) if line.HasField("amount") else None,
                    line.fencing_token, line.online_redeem_attempted))
            lines = tuple(decoded_lines)
        unsynced: tuple[UnsyncedAmount, ...] = ()
        sent_unsynced = txn.unsynced_amounts
        if sent_unsynced:
            decoded_unsynced = []
            for held in sent_unsynced[:]:
                # Not shared: a till's unsynced total differs from one sale to the next.
                amount = held.amount if held.HasField("amount") else None
                decoded_unsynced.append(UnsyncedAmount(
                    kinds.get(held.card_kind),
                    None if amount is None else Money(amount.amount_minor,
                                                      amount.currency_code),
                    held.line_count))
            unsynced = tuple(decoded_unsynced)
        unlocks = txn.unlocks
        reversals = txn.reversals
        decoded.append(OfflineTransaction(
            txn.transaction_id,
            txn.sequence_number,
            completed_at,
            txn.parameters_version,
            lines,
            tuple([OfflineUnlock(unlock.card_number, unlock.transaction_id,
                                 unlock.fencing_token) for unlock in unlocks[:]])
            if unlocks else (),
            fingerprint(txn),
            tuple([_reversal_from_proto(r) for r in reversals[:]]) if reversals else (),
            unreadable,
            last_reached_hq_at,
            unsynced,
        ))
    return decoded


def unsynced_from_proto(held: offline_pb2.UnsyncedAmount) -> UnsyncedAmount:
    return UnsyncedAmount(
        card_kind=card_kind_from_proto(held.card_kind),
        amount=money_from_proto(held.amount) if held.HasField("amount") else None,
        line_count=held.line_count,
    )


def unsynced_to_proto(held: UnsyncedAmount) -> offline_pb2.UnsyncedAmount:
    return offline_pb2.UnsyncedAmount(
        card_kind=card_kind_to_proto(held.card_kind),
        amount=optional_money_to_proto(held.amount),
        line_count=held.line_count,
    )


def _reversal_from_proto(reversal: offline_pb2.OfflineReversal) -> OfflineReversal:
    return OfflineReversal(
        line_id=reversal.line_id,
        card_number=reversal.card_number,
        amount=money_from_proto(reversal.amount) if reversal.HasField("amount") else None,
        fencing_token=reversal.fencing_token,
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
                amount=optional_money_to_proto(line.amount),
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
                amount=optional_money_to_proto(reversal.amount),
                fencing_token=reversal.fencing_token,
            )
            for reversal in txn.reversals
        ],
        last_reached_hq_at=optional_timestamp(txn.last_reached_hq_at),
        unsynced_amounts=[unsynced_to_proto(held) for held in txn.unsynced_amounts],
    )


_OUTCOMES = enum_to_proto(OfflineOutcome, offline_pb2.OfflineOutcome, "OFFLINE_OUTCOME_")
_LINE_OUTCOMES = enum_to_proto(
    OfflineLineOutcome, offline_pb2.OfflineLineOutcome, "OFFLINE_LINE_OUTCOME_")
_REVERSAL_OUTCOMES = enum_to_proto(
    ReversalOutcome, offline_pb2.OfflineReversalOutcome, "OFFLINE_REVERSAL_OUTCOME_")
_EXCEPTION_KINDS = enum_to_proto(
    OfflineExceptionKind, bo_pb.OfflineExceptionKind, "OFFLINE_EXCEPTION_KIND_")
# The usual outcomes, told by identity before any map lookup (an Enum member hashes in
# Python: three lookups cost more than the rest of a result's filling).
_APPLIED = OfflineOutcome.APPLIED
_APPLIED_PROTO = _OUTCOMES[_APPLIED]
_LINE_APPLIED = OfflineLineOutcome.APPLIED
_LINE_APPLIED_PROTO = _LINE_OUTCOMES[_LINE_APPLIED]


def offline_result_to_proto(
    result: OfflineTransactionResult,
) -> offline_pb2.OfflineTransactionResult:
    message = offline_pb2.OfflineTransactionResult()
    fill_offline_result(message, result)
    return message


def fill_offline_result(
    message: offline_pb2.OfflineTransactionResult, result: OfflineTransactionResult
) -> None:
    """Set an empty message (as from ``results.add()``) in place: no message built and copied
    per result, which matters for a batch's hundreds of results."""
    message.transaction_id = result.transaction_id
    message.sequence_number = result.sequence_number
    outcome = result.outcome
    message.outcome = _APPLIED_PROTO if outcome is _APPLIED else _OUTCOMES[outcome]
    outcome = result.original_outcome
    message.original_outcome = _APPLIED_PROTO if outcome is _APPLIED else _OUTCOMES[outcome]
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
    outcome = result.outcome
    message.outcome = _LINE_APPLIED_PROTO if outcome is _LINE_APPLIED else _LINE_OUTCOMES[outcome]
    if result.reason:
        message.reason = result.reason
    if result.balance_after is not None:
        fill_money(message.balance_after, result.balance_after)
    if result.remainder_credit_memo_number:
        message.remainder_credit_memo_number = result.remainder_credit_memo_number


def _fill_reversal_result(
    message: offline_pb2.OfflineReversalResult, result: OfflineReversalResult
) -> None:
    message.line_id = result.line_id
    message.outcome = _REVERSAL_OUTCOMES[result.outcome]
    message.reason = result.reason
    if result.balance_after is not None:
        fill_money(message.balance_after, result.balance_after)
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


def offline_exception_to_proto(exc: OfflineException) -> bo_pb.OfflineException:
    return bo_pb.OfflineException(
        exception_id=exc.exception_id,
        kind=_EXCEPTION_KINDS[exc.kind],
        terminal_id=exc.terminal_id,
        transaction_id=exc.transaction_id,
        line_id=exc.line_id,
        card_number=exc.card_number,
        amount=optional_money_to_proto(exc.amount),
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
