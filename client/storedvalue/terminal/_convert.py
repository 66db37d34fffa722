"""The one module that builds and reads protobuf: requests to HQ, its answers, and the
protobuf blobs kept on disk (outbox payloads, cached parameters, debits, sync reports).
Everything else in the library handles frozen values only."""

from __future__ import annotations

import itertools
import re
import struct
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from storedvalue.v1 import (
    common_pb2,
    offline_pb2,
    parameters_pb2,
    terminal_service_pb2,
    terminal_status_pb2,
)

from ._hq_records import (
    LineSyncResult,
    OfflineSale,
    OnlineDebit,
    StatusReport,
    SyncItemResult,
    UsualResults,
)
from ._model import (
    Card,
    CardKind,
    CardStatus,
    ConnectivityState,
    LineResult,
    LineState,
    Lock,
    Money,
    OfflineRiskLimits,
    OutboxEntry,
    Parameters,
    SaleLine,
    SyncLimits,
    SyncOutcome,
    SyncReport,
    Tender,
    UnsyncedAmount,
)

pb = terminal_service_pb2

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
_REVERSAL_STATE_FROM_PB = {
    offline_pb2.OFFLINE_REVERSAL_OUTCOME_REVERSED: LineState.REVERSED,
    offline_pb2.OFFLINE_REVERSAL_OUTCOME_NEVER_APPLIED: LineState.NEVER_APPLIED,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# -- scalars and cards ---------------------------------------------------------------------


def money_to_pb(money: Money) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=money.amount_minor, currency_code=money.currency_code)


def money_from_pb(money: common_pb2.Money) -> Money:
    return Money(money.amount_minor, money.currency_code or "XXX")


def kind_from_pb(kind: common_pb2.CardKind.ValueType) -> CardKind:
    try:
        return _KIND_FROM_PB[kind]
    except KeyError:
        raise ValueError(f"HQ sent an unknown card kind {kind}") from None


def timestamp_from_pb(ts: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, UTC) + timedelta(microseconds=ts.nanos // 1000)


def timestamp_to_pb(moment: datetime) -> timestamp_pb2.Timestamp:
    """As ``Timestamp.FromDatetime`` (a naive datetime is local time), in integer arithmetic:
    a third of its cost, and each offline sale stores two."""
    if moment.tzinfo is None:
        moment = moment.astimezone(UTC)
    since = moment - _EPOCH
    return timestamp_pb2.Timestamp(seconds=since.days * 86_400 + since.seconds,
                                   nanos=since.microseconds * 1000)


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


# -- online card use -----------------------------------------------------------------------


def lock_request(request_id: str, card_number: str, transaction_id: str) -> pb.LockCardRequest:
    return pb.LockCardRequest(
        request_id=request_id, card_number=card_number, transaction_id=transaction_id
    )


def tender_from_pb(transaction_id: str, card_number: str, response: pb.LockCardResponse
                   ) -> Tender:
    lock = response.lock
    return Tender(
        transaction_id=transaction_id,
        card_number=card_number,
        kind=kind_from_pb(response.card.kind),
        balance=money_from_pb(response.card.balance),
        fencing_token=lock.fencing_token,
        lease_expires_at=(
            timestamp_from_pb(lock.lease_expires_at) if lock.HasField("lease_expires_at") else None
        ),
    )


def unlock_request(request_id: str, card_number: str, transaction_id: str, fencing_token: int
                   ) -> pb.UnlockCardRequest:
    return pb.UnlockCardRequest(
        request_id=request_id, card_number=card_number, transaction_id=transaction_id,
        fencing_token=fencing_token,
    )


def redeem_request(request_id: str, transaction_id: str, line: SaleLine, fencing_token: int
                   ) -> pb.RedeemRequest:
    return pb.RedeemRequest(
        request_id=request_id,
        card_number=line.card_number,
        transaction_id=transaction_id,
        line_id=line.line_id,
        fencing_token=fencing_token,
        amount=money_to_pb(line.amount),
    )


def online_debit_from_pb(response: pb.RedeemResponse) -> OnlineDebit:
    return _online_debit(response, response.SerializeToString())


def online_result(line: SaleLine, stored: bytes) -> LineResult:
    """A debited line's result from the answer kept with it."""
    debit = _online_debit(pb.RedeemResponse.FromString(stored), stored)
    return LineResult(
        line_id=line.line_id,
        card_number=line.card_number,
        amount=line.amount,
        completed_offline=False,
        online_redeem_attempted=False,
        balance_after=debit.balance_after,
        remainder_credit_memo=debit.remainder_credit_memo,
    )


def _online_debit(response: pb.RedeemResponse, stored: bytes) -> OnlineDebit:
    return OnlineDebit(
        balance_after=money_from_pb(response.card.balance),
        remainder_credit_memo=(
            card_from_pb(response.remainder_credit_memo)
            if response.HasField("remainder_credit_memo")
            else None
        ),
        stored=stored,
    )


def get_card_request(card_number: str) -> pb.GetCardRequest:
    return pb.GetCardRequest(card_number=card_number)


def issue_request(request_id: str, kind: CardKind, initial_value: Money, card_number: str,
                  transaction_id: str) -> pb.IssueCardRequest:
    return pb.IssueCardRequest(
        request_id=request_id, kind=_KIND_TO_PB[kind], initial_value=money_to_pb(initial_value),
        card_number=card_number, transaction_id=transaction_id,
    )


def add_value_request(request_id: str, card_number: str, amount: Money, transaction_id: str
                      ) -> pb.AddValueRequest:
    return pb.AddValueRequest(
        request_id=request_id, card_number=card_number, amount=money_to_pb(amount),
        transaction_id=transaction_id,
    )


# -- parameters ----------------------------------------------------------------------------


def get_parameters_request() -> pb.GetParametersRequest:
    return pb.GetParametersRequest()


def watch_parameters_request(known_version: int) -> pb.WatchParametersRequest:
    return pb.WatchParametersRequest(known_version=known_version)


def parameters_from_pb(parameters: parameters_pb2.Parameters) -> Parameters:
    return Parameters(
        version=parameters.version,
        gift_card_offline_completion_allowed=parameters.gift_card_offline_completion_allowed,
        credit_memo_offline_completion_allowed=parameters.credit_memo_offline_completion_allowed,
        lock_lease=parameters.lock_lease.ToTimedelta(),
        updated_at=(
            timestamp_from_pb(parameters.updated_at) if parameters.HasField("updated_at") else None
        ),
        gift_card_offline_limits=_limits_from_pb(parameters.gift_card_offline_limits),
        credit_memo_offline_limits=_limits_from_pb(parameters.credit_memo_offline_limits),
        store_id=parameters.store_id,
    )


def parameters_to_bytes(parameters: Parameters) -> bytes:
    message = parameters_pb2.Parameters(
        version=parameters.version,
        gift_card_offline_completion_allowed=parameters.gift_card_offline_completion_allowed,
        credit_memo_offline_completion_allowed=parameters.credit_memo_offline_completion_allowed,
        lock_lease=_duration_to_pb(parameters.lock_lease),
        gift_card_offline_limits=_limits_to_pb(parameters.gift_card_offline_limits),
        credit_memo_offline_limits=_limits_to_pb(parameters.credit_memo_offline_limits),
        store_id=parameters.store_id,
    )
    if parameters.updated_at is not None:
        message.updated_at.CopyFrom(timestamp_to_pb(parameters.updated_at))
    return message.SerializeToString()


def _duration_to_pb(span: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(span)
    return duration


def _limits_from_pb(limits: parameters_pb2.OfflineRiskLimits) -> OfflineRiskLimits:
    return OfflineRiskLimits(
        max_line_amount=(
            money_from_pb(limits.max_line_amount) if limits.HasField("max_line_amount") else None
        ),
        max_unsynced_amount=(
            money_from_pb(limits.max_unsynced_amount)
            if limits.HasField("max_unsynced_amount") else None
        ),
        max_offline_duration=(
            limits.max_offline_duration.ToTimedelta()
            if limits.HasField("max_offline_duration") else None
        ),
    )


def _limits_to_pb(limits: OfflineRiskLimits) -> parameters_pb2.OfflineRiskLimits:
    message = parameters_pb2.OfflineRiskLimits()
    if limits.max_line_amount is not None:
        message.max_line_amount.CopyFrom(money_to_pb(limits.max_line_amount))
    if limits.max_unsynced_amount is not None:
        message.max_unsynced_amount.CopyFrom(money_to_pb(limits.max_unsynced_amount))
    if limits.max_offline_duration is not None:
        message.max_offline_duration.CopyFrom(_duration_to_pb(limits.max_offline_duration))
    return message


def parameters_from_bytes(stored: bytes) -> Parameters:
    return parameters_from_pb(parameters_pb2.Parameters.FromString(stored))


def sync_limits_from_pb(limits: parameters_pb2.SyncLimits) -> SyncLimits:
    return SyncLimits(
        max_transactions_per_batch=limits.max_transactions_per_batch,
        max_lines_per_transaction=limits.max_lines_per_transaction,
        max_message_bytes=limits.max_message_bytes,
        max_sequence_jump=limits.max_sequence_jump,
    )


def sync_limits_to_bytes(limits: SyncLimits) -> bytes:
    return parameters_pb2.SyncLimits(
        max_transactions_per_batch=limits.max_transactions_per_batch,
        max_lines_per_transaction=limits.max_lines_per_transaction,
        max_message_bytes=limits.max_message_bytes,
        max_sequence_jump=limits.max_sequence_jump,
    ).SerializeToString()


def sync_limits_from_bytes(stored: bytes) -> SyncLimits:
    return sync_limits_from_pb(parameters_pb2.SyncLimits.FromString(stored))


# -- the outbox and sync -------------------------------------------------------------------


def offline_sale_to_bytes(sale: OfflineSale, sequence_number: int) -> bytes:
    """The outbox payload: the wire's OfflineTransaction, sequence number included."""
    message = offline_pb2.OfflineTransaction(
        transaction_id=sale.transaction_id,
        sequence_number=sequence_number,
        completed_at=timestamp_to_pb(sale.completed_at),
        parameters_version=sale.parameters_version,
        redeem_lines=[
            offline_pb2.OfflineRedeemLine(
                line_id=line.line_id,
                card_number=line.card_number,
                card_kind=_KIND_TO_PB[line.card_kind],
                amount=money_to_pb(line.amount),
                fencing_token=line.fencing_token,
                online_redeem_attempted=line.online_redeem_attempted,
            )
            for line in sale.redeem_lines
        ],
        unlocks=[
            offline_pb2.OfflineUnlock(
                card_number=unlock.card_number,
                transaction_id=unlock.transaction_id,
                fencing_token=unlock.fencing_token,
            )
            for unlock in sale.unlocks
        ],
        reversals=[
            offline_pb2.OfflineReversal(
                line_id=reversal.line_id,
                card_number=reversal.card_number,
                amount=money_to_pb(reversal.amount),
                fencing_token=reversal.fencing_token,
            )
            for reversal in sale.reversals
        ],
        unsynced_amounts=[_unsynced_to_pb(held) for held in sale.unsynced_amounts],
    )
    if sale.last_reached_hq_at is not None:
        message.last_reached_hq_at.CopyFrom(timestamp_to_pb(sale.last_reached_hq_at))
    return message.SerializeToString()


def _unsynced_to_pb(held: UnsyncedAmount) -> offline_pb2.UnsyncedAmount:
    return offline_pb2.UnsyncedAmount(
        card_kind=_KIND_TO_PB[held.card_kind], amount=money_to_pb(held.amount),
        line_count=held.line_count,
    )


def unsynced_lines_from_bytes(payload: bytes) -> tuple[UnsyncedAmount, ...]:
    """An outbox payload's own offline lines, totalled per tender kind and currency."""
    totals: dict[tuple[CardKind, str], tuple[int, int]] = {}
    for line in offline_pb2.OfflineTransaction.FromString(payload).redeem_lines:
        key = (_KIND_FROM_PB.get(line.card_kind, CardKind.GIFT_CARD),
               line.amount.currency_code)
        amount, count = totals.get(key, (0, 0))
        totals[key] = (amount + line.amount.amount_minor, count + 1)
    return tuple(
        UnsyncedAmount(card_kind=kind, amount=Money(amount, currency), line_count=count)
        for (kind, currency), (amount, count) in totals.items()
    )


def outbox_entry_from_bytes(payload: bytes) -> OutboxEntry:
    item = offline_pb2.OfflineTransaction.FromString(payload)
    return OutboxEntry(
        sequence_number=item.sequence_number,
        transaction_id=item.transaction_id,
        completed_at=timestamp_from_pb(item.completed_at),
        redeem_line_count=len(item.redeem_lines),
        unlock_count=len(item.unlocks),
        reversal_count=len(item.reversals),
    )


def sync_batch_request_bytes(request_id: str, payloads: Sequence[bytes]) -> bytes:
    """A serialized SyncOfflineBatchRequest of outbox payloads, each one already a serialized
    OfflineTransaction: a length-delimited field is its tag, its length, then its bytes, so the
    request is these joined (no protobuf object built or parsed per transaction)."""
    request_id_bytes = request_id.encode()
    parts = [_REQUEST_ID_TAG, _varint(len(request_id_bytes)), request_id_bytes]
    encoded = _VARINT_BYTES
    for payload in payloads:
        size = len(payload)
        parts.append(_TRANSACTIONS_TAG)
        parts.append(encoded[size] if size < 0x4000 else _varint(size))
        parts.append(payload)
    return b"".join(parts)


def _length_delimited_tag(message: type[Message], field: str) -> bytes:
    """The key of a length-delimited field of `message`, from the contract's descriptor."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    return _varint(number << 3 | 2)


_SHORT_VARINTS = [bytes([length]) for length in range(128)]


def _varint(value: int) -> bytes:
    if value < 128:
        return _SHORT_VARINTS[value]
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_REQUEST_ID_TAG = _length_delimited_tag(pb.SyncOfflineBatchRequest, "request_id")
_TRANSACTIONS_TAG = _length_delimited_tag(pb.SyncOfflineBatchRequest, "transactions")


def sync_results_from_pb(response: pb.SyncOfflineBatchResponse) -> tuple[SyncItemResult, ...]:
    return tuple(map(_sync_result, response.results[:]))


def sync_results_from_wire(response: bytes) -> Sequence[SyncItemResult]:
    """HQ's SyncOfflineBatch answer, from its encoding: columns (``UsualResults``) when every
    result is the usual one, else each result decoded (``sync_results_from_pb``). Raises
    DecodeError for bytes that are no SyncOfflineBatchResponse."""
    usual = _usual_results(response)
    if usual is not None:
        return usual
    return sync_results_from_pb(pb.SyncOfflineBatchResponse.FromString(response))


# The usual result as HQ writes it (server's sync_response_wire; what SerializeToString gives):
# field 1 of the answer, every length in one byte: transaction_id, sequence_number, outcome
# and original outcome APPLIED, one line result (line_id, APPLIED, balance_after with a
# nonzero amount and a currency). Each length is captured beside what it measures: the match
# is the protobuf decoder's own walk only when every one agrees (checked in C, below); any
# other answer (another shape, another field order, a field this version does not know)
# takes the general path. Then the answer's sync_status, read by protobuf; any other byte
# (`other`) sends the whole answer to the general path.
_USUAL_ANSWER = re.compile(
    rb"""
    \x0a([\x00-\x7f])(                         # result: its length, its bytes
      \x0a([\x00-\x7f])([^\x10]*)              # transaction_id
      \x10([\x80-\xff]{0,9}[\x00-\x7f])        # sequence_number
      \x18\x01\x20\x01                          # outcome, original_outcome: APPLIED
      \x3a([\x00-\x7f])(                       # line_results: length, bytes
        \x0a([\x00-\x7f])([^\x10]*)            # line_id
        \x10\x01                                # outcome: APPLIED
        \x22([\x00-\x7f])(                     # balance_after: length, bytes
          \x08([\x80-\xff]{0,9}[\x00-\x7f])    # amount_minor
          \x12([\x00-\x7f])([^\x0a\x12]*)      # currency_code
        )))
    | (\x12.*)                                  # sync_status, and anything after it
    | (.)                                       # anything else
    """,
    re.DOTALL | re.VERBOSE,
)
# Columns of _USUAL_ANSWER's matches: the lengths, then what each measures.
_LENGTH_COLUMNS = (0, 2, 5, 7, 9, 12)
_MEASURED_COLUMNS = (1, 3, 6, 8, 10, 13)
_TRANSACTION_ID, _SEQUENCE, _LINE_ID, _BALANCE, _STATUS, _OTHER = 3, 4, 8, 11, 14, 15
_VARINTS = dict(zip(_SHORT_VARINTS, range(0x80), strict=True))
"""Each varint of one or two bytes to its number (below 2^14: the usual sequence numbers and
balances). A two-byte varint is (number & 0x7F | 0x80, number >> 7): as a little-endian
uint16, `high << 8 | 0x80 | low`, a range for each high byte (made in C: ~2 ms at import)."""
_VARINTS.update(zip(
    map(struct.Struct("<H").pack, itertools.chain.from_iterable(
        range(high << 8 | 0x80, (high + 1) << 8) for high in range(1, 0x80))),
    range(0x80, 0x4000), strict=True))
_VARINT_BYTES = list(_VARINTS)
"""The varint of each number below 2^14, by number (a payload's length: a sale with a UUID
for its id takes two bytes, which `_varint` makes in a loop)."""


def _usual_results(response: bytes) -> UsualResults | None:
    """The answer's results as columns, when all are the usual one (else None): a regular
    expression's matches, their lengths checked and their fields converted by C calls, no
    Python step per result."""
    matches = _USUAL_ANSWER.findall(response)
    if not matches:
        return None
    columns = list(zip(*matches, strict=True))
    status = columns[_STATUS]
    if any(columns[_OTHER]) or any(status[:-1]):
        return None
    if status[-1]:
        # The answer's sync_status: decoded by protobuf (once a batch), and nothing after it.
        if pb.SyncOfflineBatchResponse.FromString(status[-1]).results:
            return None
        del matches[-1]
        columns = list(zip(*matches, strict=True)) if matches else []
        if not columns:
            return UsualResults([], [], [], [])
    chain = itertools.chain.from_iterable
    if (bytes(map(len, chain(columns[i] for i in _MEASURED_COLUMNS)))
            != b"".join(chain(columns[i] for i in _LENGTH_COLUMNS))):
        return None
    try:
        transaction_ids = list(map(bytes.decode, columns[_TRANSACTION_ID]))
        line_ids = list(map(bytes.decode, columns[_LINE_ID]))
        for currency in set(columns[_MEASURED_COLUMNS[-1]]):
            currency.decode()
    except UnicodeDecodeError:
        return None  # protobuf refuses a string that is not UTF-8: the general path says so
    sequences = list(map(_VARINTS.get, columns[_SEQUENCE]))
    balances = list(map(_VARINTS.get, columns[_BALANCE]))
    if None in sequences:
        sequences = list(map(_varint_value, columns[_SEQUENCE]))
    if None in balances:
        balances = list(map(_varint_value, columns[_BALANCE]))
    return UsualResults(transaction_ids, cast("list[int]", sequences), line_ids,
                        cast("list[int]", balances))


def _varint_value(encoded: bytes) -> int:
    """The int64 a varint of up to ten bytes encodes (two's complement: a negative balance
    takes ten)."""
    number = 0
    for shift, byte in enumerate(encoded):
        number |= (byte & 0x7F) << (7 * shift)
    number &= (1 << 64) - 1
    return number - (1 << 64) if number >= 1 << 63 else number


_APPLIED_PB = offline_pb2.OFFLINE_OUTCOME_APPLIED
_ALREADY_APPLIED_PB = offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED
_LINE_REJECTED_PB = offline_pb2.OFFLINE_LINE_OUTCOME_REJECTED
_APPLIED_AT_SYNC = LineState.APPLIED_AT_SYNC
_REJECTED_AT_SYNC = LineState.REJECTED_AT_SYNC


def _sync_result(result: offline_pb2.OfflineTransactionResult) -> SyncItemResult:
    """HQ's answer for one transaction (a sync run reads thousands a second: attribute reads
    kept few, a balance's presence asked only when it reads 0, no reversal list built when
    there is none, and the stored form only serialized for the answers kept as reports)."""
    code = result.outcome
    outcome = _OUTCOME_FROM_PB.get(code)
    first_code = result.original_outcome if code == _ALREADY_APPLIED_PB else code
    first = outcome if first_code == code else _OUTCOME_FROM_PB.get(first_code)
    rejected = first is SyncOutcome.REJECTED
    noteworthy = first_code != _APPLIED_PB
    lines = []
    for line in result.line_results[:]:
        balance = line.balance_after.amount_minor
        memo = line.remainder_credit_memo_number
        if memo:
            noteworthy = True
        lines.append(LineSyncResult(
            line.line_id,
            _REJECTED_AT_SYNC
            if rejected or line.outcome == _LINE_REJECTED_PB else _APPLIED_AT_SYNC,
            line.reason,
            balance if balance or line.HasField("balance_after") else None,
            memo,
            "",
        ))
    sent_reversals = result.reversal_results
    reversals = tuple([
        LineSyncResult(
            reversal.line_id,
            _REJECTED_AT_SYNC
            if rejected else _REVERSAL_STATE_FROM_PB.get(reversal.outcome, _REJECTED_AT_SYNC),
            reversal.reason,
            reversal.balance_after.amount_minor if reversal.HasField("balance_after") else None,
            reversal.remainder_credit_memo_number,
            reversal.voided_credit_memo_number,
        )
        for reversal in sent_reversals[:]
    ]) if sent_reversals else ()
    return SyncItemResult(
        result.transaction_id,
        result.sequence_number,
        outcome,
        first,
        tuple(lines),
        reversals,
        noteworthy,
        result.SerializeToString() if noteworthy else b"",
    )


def report_from_bytes(sequence: int, transaction_id: str, stored: bytes, recorded_at: datetime
                      ) -> SyncReport:
    result = offline_pb2.OfflineTransactionResult.FromString(stored)
    outcome = _OUTCOME_FROM_PB.get(result.outcome, SyncOutcome.REJECTED)
    original = _OUTCOME_FROM_PB.get(result.original_outcome, outcome)
    return SyncReport(
        sequence_number=sequence,
        transaction_id=transaction_id,
        outcome=outcome,
        original_outcome=original,
        reason=result.reason,
        message=result.message,
        exception_ids=tuple(result.exception_ids),
        remainder_credit_memo_numbers=tuple(
            [line.remainder_credit_memo_number for line in result.line_results
             if line.remainder_credit_memo_number]
            + [reversal.remainder_credit_memo_number for reversal in result.reversal_results
               if reversal.remainder_credit_memo_number]
        ),
        recorded_at=recorded_at,
    )


# -- status reports ------------------------------------------------------------------------

_LINK_STATE_TO_PB = {
    ConnectivityState.ONLINE: terminal_status_pb2.LINK_STATE_ONLINE,
    ConnectivityState.OFFLINE: terminal_status_pb2.LINK_STATE_OFFLINE,
}


def status_report_request(report: StatusReport) -> pb.ReportTerminalStatusRequest:
    message = terminal_status_pb2.TerminalStatusReport(
        reported_at=timestamp_to_pb(report.reported_at),
        link_history=[
            terminal_status_pb2.LinkChange(
                state=_LINK_STATE_TO_PB[change.state], changed_at=timestamp_to_pb(change.at),
                cause=change.cause,
            )
            for change in report.link_history
        ],
        outbox=terminal_status_pb2.OutboxSummary(
            transaction_count=report.outbox_transactions,
            unsynced_amounts=[_unsynced_to_pb(held) for held in report.unsynced_amounts],
            last_sequence_number=report.last_sequence_number,
        ),
        parameters_version=report.parameters_version,
    )
    if report.oldest_completed_at is not None:
        message.outbox.oldest_completed_at.CopyFrom(timestamp_to_pb(report.oldest_completed_at))
    if report.next_report_within is not None:
        message.next_report_within.CopyFrom(_duration_to_pb(report.next_report_within))
    return pb.ReportTerminalStatusRequest(request_id=str(uuid.uuid4()), report=message)
