"""Offline transactions in, their results and the terminals' sync status out, and the
offline exceptions the back office sees. A batch carries hundreds of items: the hot paths
here build no message they then copy, and no generator per field."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from storedvalue.hq.domain.moments import (
    MAX_EPOCH_SECONDS,
    MICROSECONDS,
    MILLISECONDS,
    MIN_EPOCH_SECONDS,
    moment_from_epoch,
)
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
from storedvalue.hq.domain.offline_common import (
    AppliedResults,
    CommonSales,
    MadeWhenRead,
    applied_result,
)
from storedvalue.hq.domain.offline_transactions import UnsyncedAmount
from storedvalue.hq.domain.terminals import SequenceGap
from storedvalue.hq.grpc_api.convert.common import (
    CARD_KINDS_BY_PROTO,
    ONE_BYTE_VARINTS,
    card_kind_from_proto,
    card_kind_to_proto,
    enum_to_proto,
    message_fingerprint,
    money_from_proto,
    optional_money_to_proto,
    optional_timestamp,
    timestamp,
    varint,
)
from storedvalue.hq.services.offline import SyncLimits, SyncStatus
from storedvalue.v1 import back_office_service_pb2 as bo_pb
from storedvalue.v1 import offline_pb2, parameters_pb2
from storedvalue.v1 import terminal_service_pb2 as ts_pb

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


def offline_batch_from_proto(
    transactions: Iterable[offline_pb2.OfflineTransaction],
    request_serialized: bytes | None = None,
) -> tuple[Sequence[OfflineTransaction], CommonSales | Literal[False]]:
    """A batch's transactions (SyncOfflineBatch), and when they have the common case's shape
    the same as `CommonSales` (else False): read as columns from `request_serialized` when
    every transaction is the usual one (`usual_sales`), else from the messages field by
    field once, only the fields the common path reads. Then the transactions themselves are
    decoded only if they are read (`OfflineService.sync` reads them when the common path
    does not take the batch, or for offline risk limits), from the same messages.
    `request_serialized` as for `offline_transactions_from_proto`."""
    sent = list(transactions)
    fingerprints = _fingerprints(sent, request_serialized)
    sales = (None if request_serialized is None
             else usual_sales(request_serialized, len(sent)))
    if sales is not None:
        sales.fingerprints = fingerprints
    else:
        sales = _common_sales(sent, fingerprints)
    if sales is None:
        return _decoded(sent, fingerprints), False
    return MadeWhenRead(len(sent), lambda: _decoded(sent, fingerprints)), sales


def _common_sales(sent: list[offline_pb2.OfflineTransaction], fingerprints: list[bytes]
                  ) -> CommonSales | None:
    """`common_sales` of the transactions `sent` would decode to, straight from the
    messages, or None as soon as one has not the common case's shape (one redeem line with
    an amount, a readable completion time, a readable or no last contact, no unlocks, no
    reversals). Fields the common path does not read (a line's card kind and online
    attempt, the unsynced amounts) are not read; the last contact only checked."""
    sales = CommonSales()
    sales.fingerprints = fingerprints
    txn_ids, sequences = sales.transaction_ids, sales.sequence_numbers
    completions, versions = sales.completed_micros, sales.parameters_versions
    line_ids, numbers = sales.line_ids, sales.card_numbers
    minors, currencies, tokens = sales.amounts_minor, sales.currencies, sales.fencing_tokens
    lowest, highest = MIN_EPOCH_SECONDS, MAX_EPOCH_SECONDS
    for txn in sent:
        lines = txn.redeem_lines
        if len(lines) != 1 or txn.unlocks or txn.reversals:
            return None
        sent_moment = txn.completed_at
        seconds = sent_moment.seconds
        nanos = sent_moment.nanos
        if not (seconds or nanos or txn.HasField("completed_at")):
            return None
        if not (lowest <= seconds <= highest and 0 <= nanos < _NANOS):
            return None
        # As `micros_from_epoch(moment_from_epoch(seconds, nanos))`.
        completions.append(seconds * 1_000_000 + nanos // 1000)
        # A last contact of (0, 0) is the epoch or unset: readable either way.
        sent_moment = txn.last_reached_hq_at
        seconds = sent_moment.seconds
        nanos = sent_moment.nanos
        if (seconds or nanos) and not (lowest <= seconds <= highest and 0 <= nanos < _NANOS):
            return None
        line = lines[0]
        sent_amount = line.amount
        minor = sent_amount.amount_minor
        currency = sent_amount.currency_code
        if minor <= 0 or not currency:  # unset, or never the common case
            return None
        txn_ids.append(txn.transaction_id)
        sequences.append(txn.sequence_number)
        versions.append(txn.parameters_version)
        line_ids.append(line.line_id)
        numbers.append(line.card_number)
        minors.append(minor)
        currencies.append(currency)
        tokens.append(line.fencing_token)
    return sales


# -- the usual batch, read as columns by protobuf ----------------------------------------------
#
# Messages with the field numbers of a batch's (SyncOfflineBatchRequest, OfflineTransaction,
# OfflineRedeemLine, Money, Timestamp) whose fields are all repeated, a sub-message's as its
# bytes: parsed from many messages' bytes joined, each gives a column per field, in order,
# decoded in C by protobuf itself (its varints, its UTF-8 check), with no Python object a
# message. The bytes are protobuf's deterministic serialization of messages it parsed: each
# field is there once when set and not at all when it is its default, so a column of one
# value a message is exactly a field set in every message. The one record the serialization
# may hold besides (an unknown field, kept) that a probe would read and the message not is a
# number's field written length-delimited ("packed"): the real message's singular field
# does not read it, a repeated probe does; each level's "...Numbers" probe reads those
# records as bytes, and there must be none.
_F = descriptor_pb2.FieldDescriptorProto
_I64, _I32, _BYTES, _STRING = _F.TYPE_INT64, _F.TYPE_INT32, _F.TYPE_BYTES, _F.TYPE_STRING


def _probe_classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="storedvalue/hq/offline_probe.proto", package="storedvalue.hq.probe",
        syntax="proto3")
    shapes = {
        "Batch": ((2, "transactions", _BYTES),),
        "Transaction": ((1, "transaction_id", _STRING), (2, "sequence_number", _I64),
                        (3, "completed_at", _BYTES), (4, "parameters_version", _I64),
                        (5, "redeem_lines", _BYTES), (6, "unlocks", _BYTES),
                        (7, "reversals", _BYTES), (8, "last_reached_hq_at", _BYTES)),
        "TransactionNumbers": ((2, "sequence_number", _BYTES),
                               (4, "parameters_version", _BYTES)),
        "Line": ((1, "line_id", _STRING), (2, "card_number", _STRING), (4, "amount", _BYTES),
                 (5, "fencing_token", _I64)),
        "LineNumbers": ((5, "fencing_token", _BYTES),),
        "Money": ((1, "amount_minor", _I64), (2, "currency_code", _STRING)),
        "MoneyNumbers": ((1, "amount_minor", _BYTES),),
        "Moment": ((1, "seconds", _I64), (2, "nanos", _I32)),
        "MomentNumbers": ((1, "seconds", _BYTES), (2, "nanos", _BYTES)),
    }
    for name, fields in shapes.items():
        message = file.message_type.add(name=name)
        for number, field_name, field_type in fields:
            field = message.field.add(name=field_name, number=number,
                                      label=_F.LABEL_REPEATED, type=field_type)
            if field_type not in (_STRING, _BYTES):
                field.options.packed = False
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"storedvalue.hq.probe.{name}")).FromString
        for name in shapes}


_PROBES = _probe_classes()


def _probe(level: str, data: bytes) -> Any:
    """`data` parsed by the `level` probe, when it holds no number's field written
    length-delimited (see above); else None."""
    try:
        numbers = _PROBES[level + "Numbers"](data)
        if any(numbers.ListFields()):
            return None
        return _PROBES[level](data)
    except DecodeError:
        return None


def _one_each(count: int, *columns: Any) -> list[list[Any]] | None:
    """The values of each of `columns`, when each has `count` (one a message: see above)."""
    found: list[list[Any]] = []
    for column in columns:
        values: list[Any] = column[:]
        if len(values) != count:
            return None
        found.append(values)
    return found


def usual_sales(request_serialized: bytes, count: int) -> CommonSales | None:
    """`_common_sales` of a batch's `count` transactions (fingerprints aside), read as columns
    by the probes above from `request_serialized`, protobuf's deterministic serialization of
    the request it parsed (the servicer's: never the bytes received), when each transaction
    is the usual one: every field `_common_sales` reads set (completed_at and
    last_reached_hq_at with seconds and nanos), one redeem line, no unlocks, no reversals.
    Else None, and `_common_sales` reads the messages (~20.8K instructions a transaction,
    callgrind: a sub-message's or repeated field's read ~1.8K)."""
    if not count:
        return None
    try:
        transactions = _PROBES["Batch"](request_serialized).transactions[:]
    except DecodeError:
        return None
    if len(transactions) != count:
        return None
    probe = _probe("Transaction", b"".join(transactions))
    if probe is None or probe.unlocks or probe.reversals:
        return None
    columns = _one_each(count, probe.transaction_id, probe.sequence_number, probe.completed_at,
                        probe.parameters_version, probe.redeem_lines, probe.last_reached_hq_at)
    if columns is None:
        return None
    transaction_ids, sequences, completions, versions, lines, contacts = columns
    completed = _probe("Moment", b"".join(completions))
    reached = _probe("Moment", b"".join(contacts))
    line = _probe("Line", b"".join(lines))
    if completed is None or reached is None or line is None:
        return None
    columns = _one_each(count, completed.seconds, completed.nanos, reached.seconds,
                        reached.nanos, line.line_id, line.card_number, line.amount,
                        line.fencing_token)
    if columns is None:
        return None
    (seconds, nanos, reached_seconds, reached_nanos,
     line_ids, numbers, amounts, tokens) = columns
    money = _probe("Money", b"".join(amounts))
    columns = (None if money is None
               else _one_each(count, money.amount_minor, money.currency_code))
    if columns is None:
        return None
    minors, currencies = columns
    lowest, highest = MIN_EPOCH_SECONDS, MAX_EPOCH_SECONDS
    if not (lowest <= min(seconds) and max(seconds) <= highest
            and min(nanos) >= 0 and max(nanos) < _NANOS
            and lowest <= min(reached_seconds) and max(reached_seconds) <= highest
            and min(reached_nanos) >= 0 and max(reached_nanos) < _NANOS
            and min(minors) > 0):
        return None
    sales = CommonSales()
    sales.transaction_ids = transaction_ids
    sales.sequence_numbers = sequences
    # As `micros_from_epoch(moment_from_epoch(seconds, nanos))`.
    sales.completed_micros = [second * 1_000_000 + nano // 1000
                              for second, nano in zip(seconds, nanos, strict=True)]
    sales.parameters_versions = versions
    sales.line_ids = line_ids
    sales.card_numbers = numbers
    sales.amounts_minor = minors
    sales.currencies = currencies
    sales.fencing_tokens = tokens
    return sales


def offline_transactions_from_proto(
    transactions: Iterable[offline_pb2.OfflineTransaction],
    request_serialized: bytes | None = None,
) -> list[OfflineTransaction]:
    """The domain's offline transactions of a batch (SyncOfflineBatch). Runs for every item
    of every batch: equal last-contact moments and line amounts are read once and shared
    (values, never changed), the fields are set positionally, and no generator or empty
    tuple is built per field. A completion or last-contact time out of range leaves the
    field unreadable: the domain rejects that item, not the batch. `request_serialized`:
    the deterministic serialization of the SyncOfflineBatchRequest that holds
    `transactions`, which already holds each transaction's (see
    `transaction_fingerprints`)."""
    sent = list(transactions)
    return _decoded(sent, _fingerprints(sent, request_serialized))


def _fingerprints(sent: list[offline_pb2.OfflineTransaction], request_serialized: bytes | None
                  ) -> list[bytes]:
    """Each transaction's fingerprint, from the request's serialization when it has one."""
    fingerprints = (None if request_serialized is None
                    else transaction_fingerprints(request_serialized))
    if fingerprints is None or len(fingerprints) != len(sent):
        fingerprints = [message_fingerprint(txn) for txn in sent]
    return fingerprints


def _decoded(sent: list[offline_pb2.OfflineTransaction], fingerprints: list[bytes]
             ) -> list[OfflineTransaction]:
    """`offline_transactions_from_proto` of `sent`, their fingerprints known."""
    moments: dict[tuple[int, int], datetime | None] = {}
    seconds_read: dict[int, datetime | None] = {}
    millis, micros_ = MILLISECONDS, MICROSECONDS
    amounts: dict[tuple[int, str], Money] = {}
    kinds = CARD_KINDS_BY_PROTO
    unset = _UNSET

    # A message field is read as its fields first: a value other than (0, 0) or (0, "")
    # shows the field is set, and only the default asks HasField (each lookup by name costs
    # about as much as a field's read).
    decoded = []
    for txn, fingerprint in zip(sent, fingerprints, strict=True):
        completed_at = None
        unreadable: tuple[str, ...] = ()
        sent_moment = txn.completed_at
        seconds = sent_moment.seconds
        nanos = sent_moment.nanos
        if seconds or nanos or txn.HasField("completed_at"):
            # Not shared: a till stamps each sale with its own time, but many of a batch's
            # in the same second, which is decoded once (see moments.MILLISECONDS).
            second = seconds_read.get(seconds, unset)
            if second is unset:
                second = seconds_read[seconds] = moment_from_epoch(seconds, 0)
            if second is not None and 0 <= nanos < _NANOS:
                micros = nanos // 1000
                completed_at = second + millis[micros // 1000] + micros_[micros % 1000]
            else:
                unreadable = ("completed_at",)
        last_reached_hq_at = None
        sent_moment = txn.last_reached_hq_at
        seconds = sent_moment.seconds
        nanos = sent_moment.nanos
        if seconds or nanos or txn.HasField("last_reached_hq_at"):
            key = (seconds, nanos)
            last_reached_hq_at = moments.get(key, unset)
            if last_reached_hq_at is unset:
                last_reached_hq_at = moments[key] = moment_from_epoch(*key)
            if last_reached_hq_at is None:
                unreadable += ("last_reached_hq_at",)
        # A repeated field is read through a slice (a list): iterating the container itself
        # ends on an IndexError that the container formats, dearer than the item's decoding.
        lines: tuple[OfflineRedeemLine, ...] = ()
        sent_lines = txn.redeem_lines
        if sent_lines:
            decoded_lines = []
            for line in sent_lines[:]:
                sent_amount = line.amount
                minor = sent_amount.amount_minor
                currency = sent_amount.currency_code
                amount = None
                if minor or currency or line.HasField("amount"):
                    money_key = (minor, currency)
                    amount = amounts.get(money_key)
                    if amount is None:
                        amount = amounts[money_key] = Money(minor, currency)
                decoded_lines.append(OfflineRedeemLine(
                    line.line_id, line.card_number, kinds.get(line.card_kind), amount,
                    line.fencing_token, line.online_redeem_attempted))
            lines = tuple(decoded_lines)
        unsynced: tuple[UnsyncedAmount, ...] = ()
        sent_unsynced = txn.unsynced_amounts
        if sent_unsynced:
            decoded_unsynced = []
            for held in sent_unsynced[:]:
                # Not shared: a till's unsynced total differs from one sale to the next.
                sent_amount = held.amount
                minor, currency = sent_amount.amount_minor, sent_amount.currency_code
                decoded_unsynced.append(UnsyncedAmount(
                    kinds.get(held.card_kind),
                    Money(minor, currency) if minor or currency or held.HasField("amount")
                    else None,
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
            fingerprint,
            tuple([_reversal_from_proto(r) for r in reversals[:]]) if reversals else (),
            unreadable,
            last_reached_hq_at,
            unsynced,
        ))
    return decoded


_UNSET: Any = object()  # no moment decoded yet (None is one: out of range)
_NANOS = 1_000_000_000


def transaction_fingerprints(request_serialized: bytes) -> list[bytes] | None:
    """Each transaction's fingerprint (`message_fingerprint`), its serialization cut out of
    the deterministic serialization of its SyncOfflineBatchRequest instead of serializing
    each transaction again: a message serializes as its fields' records, and a record of a
    repeated message field is the tag, the length and the item's own serialization, byte for
    byte what the item alone serializes to. None when the request holds other fields than
    request_id and transactions, unknown ones included."""
    fingerprints: list[bytes] = []
    append = fingerprints.append
    sha256 = hashlib.sha256
    data = request_serialized
    position, end = 0, len(data)
    while position < end:
        tag = data[position]
        size = data[position + 1]
        if size < 0x80:  # the length's varint in one byte, or two (a transaction's usual)
            position += 2
        elif data[position + 2] < 0x80:
            size = size & 0x7F | data[position + 2] << 7
            position += 3
        else:
            size, position = _long_length(data, position + 1)
        if tag == _TRANSACTIONS_TAG:
            append(sha256(data[position:position + size]).digest())
        elif tag != _REQUEST_ID_TAG:
            return None
        position += size
    return fingerprints


def _long_length(data: bytes, position: int) -> tuple[int, int]:
    """A length's varint of three bytes or more at `position`: the length, and the position
    after it."""
    size = shift = 0
    while True:
        byte = data[position]
        position += 1
        size |= (byte & 0x7F) << shift
        if byte < 0x80:
            return size, position
        shift += 7


def _record_tag(field: str) -> int:
    """The one-byte wire tag of a length-delimited field of SyncOfflineBatchRequest."""
    number: int = ts_pb.SyncOfflineBatchRequest.DESCRIPTOR.fields_by_name[field].number
    assert number < 16  # a one-byte tag
    return number << 3 | 2


_REQUEST_ID_TAG, _TRANSACTIONS_TAG = _record_tag("request_id"), _record_tag("transactions")


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
# Python: three lookups cost more than the rest of a result's encoding).
_APPLIED = OfflineOutcome.APPLIED
_LINE_APPLIED = OfflineLineOutcome.APPLIED


# -- results, as wire bytes ----------------------------------------------------------------
# A batch's response is written as the protobuf encoding itself: building hundreds of result
# messages field by field through the protobuf runtime, then serializing them, cost more
# than the rest of the answer. The bytes are what SerializeToString gives for the same
# message (fields in number order, proto3 defaults left out): the tests parse them back.

def _field(tag: bytes, data: bytes) -> bytes:
    """A length-delimited field: a string's UTF-8 or a message's encoding."""
    size = len(data)
    return tag + (ONE_BYTE_VARINTS[size] if size < 0x80 else varint(size)) + data


def _enum_fields(tag: int, numbers: Mapping[Any, int]) -> dict[Any, bytes]:
    """The field for each value (nothing for 0, a proto3 default)."""
    return {value: bytes((tag,)) + varint(number) if number else b""
            for value, number in numbers.items()}


def _money(tag: bytes, money: Money) -> bytes:
    minor = money.amount_minor
    currency = money.currency
    return _field(tag, (b"\x08" + varint(minor) if minor else b"")
                  + (_field(b"\x12", currency.encode()) if currency else b""))


_OUTCOME_FIELDS = _enum_fields(0x18, _OUTCOMES)
_ORIGINAL_OUTCOME_FIELDS = _enum_fields(0x20, _OUTCOMES)
_LINE_OUTCOME_FIELDS = _enum_fields(0x10, _LINE_OUTCOMES)
_REVERSAL_OUTCOME_FIELDS = _enum_fields(0x10, _REVERSAL_OUTCOMES)
# The usual result's outcome and original outcome, both APPLIED, told by identity.
_APPLIED_TWICE = _OUTCOME_FIELDS[_APPLIED] + _ORIGINAL_OUTCOME_FIELDS[_APPLIED]
_LINE_APPLIED_FIELD = _LINE_OUTCOME_FIELDS[_LINE_APPLIED]


def offline_result_wire(result: OfflineTransactionResult) -> bytes:
    """The encoding of the OfflineTransactionResult message for `result`."""
    out = _field(b"\x0a", result.transaction_id.encode()) if result.transaction_id else b""
    sequence = result.sequence_number
    if sequence:
        out += b"\x10" + varint(sequence)
    outcome = result.outcome
    original = result.original_outcome
    if outcome is _APPLIED and original is _APPLIED:
        out += _APPLIED_TWICE
    else:
        out += _OUTCOME_FIELDS[outcome] + _ORIGINAL_OUTCOME_FIELDS[original]
    if result.reason:
        out += _field(b"\x2a", result.reason.encode())
    if result.message:
        out += _field(b"\x32", result.message.encode())
    for line in result.line_results:
        out += _field(b"\x3a", _line_result_wire(line))
    for exception_id in result.exception_ids:
        out += _field(b"\x42", exception_id.encode())
    for reversal in result.reversal_results:
        out += _field(b"\x4a", _reversal_result_wire(reversal))
    return out


def _line_result_wire(result: OfflineLineResult) -> bytes:
    out = _field(b"\x0a", result.line_id.encode()) if result.line_id else b""
    outcome = result.outcome
    out += _LINE_APPLIED_FIELD if outcome is _LINE_APPLIED else _LINE_OUTCOME_FIELDS[outcome]
    if result.reason:
        out += _field(b"\x1a", result.reason.encode())
    if result.balance_after is not None:
        out += _money(b"\x22", result.balance_after)
    if result.remainder_credit_memo_number:
        out += _field(b"\x2a", result.remainder_credit_memo_number.encode())
    return out


def _reversal_result_wire(result: OfflineReversalResult) -> bytes:
    out = _field(b"\x0a", result.line_id.encode()) if result.line_id else b""
    out += _REVERSAL_OUTCOME_FIELDS[result.outcome]
    if result.reason:
        out += _field(b"\x1a", result.reason.encode())
    if result.balance_after is not None:
        out += _money(b"\x22", result.balance_after)
    if result.voided_credit_memo_number:
        out += _field(b"\x2a", result.voided_credit_memo_number.encode())
    if result.remainder_credit_memo_number:
        out += _field(b"\x32", result.remainder_credit_memo_number.encode())
    return out


def sync_response_wire(results: Iterable[OfflineTransactionResult], status: SyncStatus
                       ) -> bytes:
    """The encoding of SyncOfflineBatchResponse (results = 1, sync_status = 2). The usual
    result (applied as sent: one line applied, leaving a positive balance; nothing else), when
    it is short enough for every length to be one byte, is eight parts of the answer's join,
    written here without a call (no formatting: `bytes % ...` parses its format each time);
    any other through `offline_result_wire`. The line
    result's bytes around its balance's varint depend only on the line id, the currency
    and that varint's length: made once a batch for each. The common path's results
    (`AppliedResults`) are written from its debits, without making the results."""
    parts: list[bytes] = []
    append, extend = parts.append, parts.extend
    applied, line_applied = _APPLIED, _LINE_APPLIED
    opening, one_byte = _USUAL_OPENINGS, ONE_BYTE_VARINTS
    short = _SHORT_VARINTS
    line_parts: dict[tuple[str, str, int], tuple[bytes, bytes, int]] = {}
    if isinstance(results, AppliedResults):
        debits = results.debits
        sales = debits.sales
        for index, (sale_id, sequence, line_id, currency, minor) in enumerate(zip(
                sales.transaction_ids, sales.sequence_numbers, sales.line_ids, sales.currencies,
                debits.balances_after_minor, strict=True)):
            if sequence > 0 and minor > 0 and currency and line_id and sale_id:
                minor_varint = short[minor] if minor < 0x4000 else _long_varint(minor)
                line_key = (line_id, currency, len(minor_varint))
                found = line_parts.get(line_key)
                if found is None:
                    found = line_parts[line_key] = _usual_line_parts(*line_key)
                head, tail, line_field_size = found
                txn_bytes = sale_id.encode()
                sequence_varint = short[sequence] if sequence < 0x4000 else _long_varint(sequence)
                size = 7 + len(txn_bytes) + len(sequence_varint) + line_field_size
                if size < 0x80:
                    extend((opening[size], one_byte[len(txn_bytes)], txn_bytes, b"\x10",
                            sequence_varint, head, minor_varint, tail))
                    continue
            append(_field(b"\x0a", offline_result_wire(applied_result(debits.debit(index)))))
        results = ()
    for result in results:
        line_results = result.line_results
        if (result.outcome is applied and result.original_outcome is applied
                and len(line_results) == 1 and not result.reason and not result.message
                and not result.exception_ids and not result.reversal_results):
            line = line_results[0]
            balance = line.balance_after
            sequence = result.sequence_number
            if (line.outcome is line_applied and balance is not None and not line.reason
                    and not line.remainder_credit_memo_number and sequence > 0
                    and (minor := balance.amount_minor) > 0 and balance.currency
                    and line.line_id and result.transaction_id):
                minor_varint = short[minor] if minor < 0x4000 else _long_varint(minor)
                line_key = (line.line_id, balance.currency, len(minor_varint))
                found = line_parts.get(line_key)
                if found is None:
                    found = line_parts[line_key] = _usual_line_parts(*line_key)
                head, tail, line_field_size = found
                txn_id = result.transaction_id.encode()
                sequence_varint = short[sequence] if sequence < 0x4000 else _long_varint(sequence)
                size = 7 + len(txn_id) + len(sequence_varint) + line_field_size
                if size < 0x80:  # then every length inside is too
                    extend((opening[size], one_byte[len(txn_id)], txn_id, b"\x10",
                            sequence_varint, head, minor_varint, tail))
                    continue
        append(_field(b"\x0a", offline_result_wire(result)))
    append(_field(b"\x12", sync_status_to_proto(status).SerializeToString()))
    return b"".join(parts)


def _usual_line_parts(line_id: str, currency: str, minor_size: int) -> tuple[bytes, bytes, int]:
    """The usual result's fields after its sequence number, the outcome and original outcome
    (APPLIED) then the line result field (line_id, APPLIED, balance_after), around its
    balance's varint of `minor_size` bytes: the bytes before it, those after it, and the
    size of the line result field (its tag and length included)."""
    line_bytes = line_id.encode()
    currency_bytes = currency.encode()
    money = (b"\x08", b"\x12" + _byte(len(currency_bytes)) + currency_bytes)
    money_size = len(money[0]) + minor_size + len(money[1])
    line = (b"\x0a" + _byte(len(line_bytes)) + line_bytes + _LINE_APPLIED_FIELD + b"\x22"
            + _byte(money_size) + money[0])
    line_size = len(line) + minor_size + len(money[1])
    return _APPLIED_TWICE + b"\x3a" + _byte(line_size) + line, money[1], 2 + line_size


def _byte(size: int) -> bytes:
    """A length's varint, one byte when below 128 (anything longer is not the usual result:
    the caller then writes the result the general way)."""
    return ONE_BYTE_VARINTS[size] if size < 0x80 else varint(size)


# The varint of each number below 2^14 (one or two bytes), by number: about 16,000 bytes
# objects, shared by every answer.
_SHORT_VARINTS = [varint(number) for number in range(0x4000)]
# The low 14 bits of a larger number as the first two bytes of its varint (each saying
# another follows).
_CONTINUED_VARINTS = [bytes((number & 0x7F | 0x80, number >> 7 | 0x80))
                      for number in range(0x4000)]


def _long_varint(number: int) -> bytes:
    """The varint of a sequence number or balance of 2^14 or more (a till's 16,384th sale
    on, a balance above 163.84), in the usual result too: written the general way, such a
    result cost 37.9K instructions against 5.5K (callgrind, 500 results at sequence 20,000;
    8.4K through `varint`, 6.8K so)."""
    if number < 0x10000000:
        return _CONTINUED_VARINTS[number & 0x3FFF] + _SHORT_VARINTS[number >> 14]
    return varint(number)


# The usual result is field 1 of a response, of `size` bytes below 128: these bytes, its tag
# and length and the tag of its transaction_id, then that id's length and bytes, the tag of
# its sequence_number and that number, then its other fields (`_usual_line_parts`) around
# its balance's varint. Written as those parts, joined once for the whole answer.
_USUAL_OPENINGS = [b"\x0a" + ONE_BYTE_VARINTS[size] + b"\x0a" for size in range(0x80)]


def complete_offline_response_wire(result: OfflineTransactionResult, status: SyncStatus
                                   ) -> bytes:
    """The encoding of CompleteOfflineResponse (result = 1, sync_status = 2): the same
    fields as a batch's response with one result."""
    return sync_response_wire((result,), status)


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
