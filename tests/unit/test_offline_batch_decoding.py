"""A SyncOfflineBatch's transactions decoded together (`offline_transactions_from_proto`,
sharing equal moments and amounts, their fingerprints from the request's serialization) are
exactly what decoding each alone gives, whatever the transactions hold: missing or
out-of-range times, missing amounts, several lines, unlocks, reversals, unsynced amounts,
kinds HQ does not know, fields HQ does not know. And the common case's columns read straight
from the messages (`offline_batch_from_proto`) are those of the decoded transactions."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from hypothesis import event, given, settings
from hypothesis import strategies as st

from storedvalue.hq.domain.client_text import are_valid_ids, is_valid_id
from storedvalue.hq.domain.moments import moment_from_epoch
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineRedeemLine,
    OfflineReversal,
    OfflineTransaction,
    OfflineUnlock,
)
from storedvalue.hq.domain.offline_common import common_sales
from storedvalue.hq.domain.offline_transactions import UnsyncedAmount
from storedvalue.hq.grpc_api.convert.common import card_kind_from_proto, message_fingerprint
from storedvalue.hq.grpc_api.convert.offline import (
    offline_batch_from_proto,
    offline_transaction_from_proto,
    offline_transactions_from_proto,
    transaction_fingerprints,
)
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

SECONDS = st.sampled_from([0, 1_795_791_600, 1_795_791_601, -62_135_596_801, 253_402_300_800])
NANOS = st.sampled_from([0, 999_999_999, 1_000_000_000, -1])
MONEY = st.none() | st.builds(common_pb2.Money, amount_minor=st.sampled_from([0, 100, -5, 250]),
                              currency_code=st.sampled_from(["EUR", "USD", "", "eur"]))
KINDS = st.sampled_from([0, 1, 2, 9])


@st.composite
def transactions(draw: st.DrawFn) -> offline_pb2.OfflineTransaction:
    txn = offline_pb2.OfflineTransaction(
        transaction_id=draw(st.sampled_from(["sale-1", "sale-2", "", "a\x00b"])),
        sequence_number=draw(st.integers(-1, 3)),
        parameters_version=draw(st.integers(0, 3)),
    )
    for field in ("completed_at", "last_reached_hq_at"):
        if draw(st.booleans()):
            moment = getattr(txn, field)
            moment.seconds, moment.nanos = draw(SECONDS), draw(NANOS)
    for i in range(draw(st.integers(0, 3))):
        line = txn.redeem_lines.add(line_id=str(i), card_number=draw(st.sampled_from(
            ["6011000000000004", "", "12"])), card_kind=draw(KINDS),
            fencing_token=draw(st.integers(0, 3)), online_redeem_attempted=draw(st.booleans()))
        amount = draw(MONEY)
        if amount is not None:
            line.amount.CopyFrom(amount)
    for _ in range(draw(st.integers(0, 2))):
        txn.unlocks.add(card_number="6011000000000004", transaction_id="sale-1",
                        fencing_token=draw(st.integers(0, 3)))
    for i in range(draw(st.integers(0, 2))):
        reversal = txn.reversals.add(line_id=f"r{i}", card_number="6011000000000004",
                                     fencing_token=1)
        amount = draw(MONEY)
        if amount is not None:
            reversal.amount.CopyFrom(amount)
    for _ in range(draw(st.integers(0, 2))):
        held = txn.unsynced_amounts.add(card_kind=draw(KINDS), line_count=draw(st.integers(0, 2)))
        amount = draw(MONEY)
        if amount is not None:
            held.amount.CopyFrom(amount)
    # A field of a newer contract (number 99, a string), which the fingerprint covers.
    txn.MergeFromString(draw(st.sampled_from([b"", b"\x9a\x06\x03new"])))
    # Long enough for lengths of two and three bytes.
    txn.transaction_id += draw(st.sampled_from(["", "x" * 200, "y" * 20_000]))
    return txn


def field_by_field(txn: offline_pb2.OfflineTransaction) -> OfflineTransaction:
    """The transaction as the contract reads, each field on its own, presence by HasField:
    what the batch decoder's shortcuts must give."""

    def money(message: offline_pb2.OfflineRedeemLine | offline_pb2.OfflineReversal
              | offline_pb2.UnsyncedAmount) -> Money | None:
        if not message.HasField("amount"):
            return None
        return Money(message.amount.amount_minor, message.amount.currency_code)

    unreadable: list[str] = []
    moments: dict[str, datetime | None] = {}
    for field in ("completed_at", "last_reached_hq_at"):
        moments[field] = None
        if txn.HasField(field):
            sent = getattr(txn, field)
            moments[field] = moment_from_epoch(sent.seconds, sent.nanos)
            if moments[field] is None:
                unreadable.append(field)
    return OfflineTransaction(
        transaction_id=txn.transaction_id,
        sequence_number=txn.sequence_number,
        completed_at=moments["completed_at"],
        parameters_version=txn.parameters_version,
        redeem_lines=tuple(
            OfflineRedeemLine(line.line_id, line.card_number,
                              card_kind_from_proto(line.card_kind), money(line),
                              line.fencing_token, line.online_redeem_attempted)
            for line in txn.redeem_lines),
        unlocks=tuple(OfflineUnlock(unlock.card_number, unlock.transaction_id,
                                    unlock.fencing_token) for unlock in txn.unlocks),
        fingerprint=message_fingerprint(txn),
        reversals=tuple(OfflineReversal(reversal.line_id, reversal.card_number,
                                        money(reversal), reversal.fencing_token)
                        for reversal in txn.reversals),
        unreadable_fields=tuple(unreadable),
        last_reached_hq_at=moments["last_reached_hq_at"],
        unsynced_amounts=tuple(UnsyncedAmount(card_kind_from_proto(held.card_kind),
                                              money(held), held.line_count)
                               for held in txn.unsynced_amounts),
    )


# No deadline: transactions of 20,000 bytes on a busy shared machine.
@settings(deadline=None)
@given(st.lists(transactions(), max_size=6))
def test_a_batch_decodes_as_its_transactions_one_by_one(
    batch: list[offline_pb2.OfflineTransaction],
) -> None:
    assert offline_transactions_from_proto(batch) == [
        offline_transaction_from_proto(txn) for txn in batch
    ] == [field_by_field(txn) for txn in batch]


@settings(deadline=None)
@given(st.lists(transactions(), max_size=6), st.sampled_from(["", "batch-1"]),
       st.sampled_from([b"", b"\x18\x01"]))
def test_fingerprints_cut_from_the_request_are_each_transactions_own(
    batch: list[offline_pb2.OfflineTransaction], request_id: str, unknown: bytes,
) -> None:
    """Stored fingerprints are compared on redelivery: those taken from the request's
    serialization are byte for byte each transaction's own (a request with a field HQ does
    not know, here number 3, falls back to serializing each transaction)."""
    request = ts.SyncOfflineBatchRequest(request_id=request_id, transactions=batch)
    request.MergeFromString(unknown)
    serialized = request.SerializeToString(deterministic=True)
    decoded = offline_transactions_from_proto(request.transactions, serialized)
    assert [txn.fingerprint for txn in decoded] == [message_fingerprint(txn) for txn in batch]
    assert decoded == [offline_transaction_from_proto(txn) for txn in batch]
    assert decoded == [field_by_field(txn) for txn in batch]
    assert (transaction_fingerprints(serialized) is None) == bool(unknown)


@given(st.sampled_from([-62_135_596_800, -1, 0, 1_795_791_600, 253_402_300_799]),
       st.lists(st.integers(-2, 10**9 + 1) | st.sampled_from([0, 999, 1_000, 999_999_999]),
                min_size=1, max_size=5))
def test_completion_times_in_one_second_are_the_moments_from_the_epoch(
        seconds: int, nanos: list[int]) -> None:
    """The batch decoder makes the moments of one second from that second (decoded once)
    plus prebuilt milliseconds and microseconds: exactly the moment made from the epoch,
    and unreadable alike."""
    batch = [offline_pb2.OfflineTransaction(
        transaction_id=f"t{index}",
        completed_at=timestamp_pb2.Timestamp(seconds=seconds, nanos=nano))
        for index, nano in enumerate(nanos)]
    for decoded, nano in zip(offline_transactions_from_proto(batch), nanos, strict=True):
        expected = moment_from_epoch(seconds, nano)
        assert decoded.completed_at == expected
        assert decoded.unreadable_fields == (() if expected is not None else ("completed_at",))


@st.composite
def common_shaped(draw: st.DrawFn) -> offline_pb2.OfflineTransaction:
    """A transaction of `transactions`, most of the time cut to the common case's shape (one
    line with an amount, no unlocks, no reversals, a completion time): its times, amount and
    other fields may still be anything."""
    txn = draw(transactions())
    if draw(st.integers(0, 4)):
        del txn.redeem_lines[1:]
        del txn.unlocks[:]
        del txn.reversals[:]
        if not txn.redeem_lines:
            txn.redeem_lines.add(line_id="1", card_number="6011000000000004", fencing_token=1)
        if draw(st.integers(0, 7)):
            txn.redeem_lines[0].amount.CopyFrom(common_pb2.Money(amount_minor=100,
                                                                 currency_code="EUR"))
        if draw(st.integers(0, 7)):
            txn.completed_at.seconds = 1_795_791_600
            txn.completed_at.nanos = draw(st.sampled_from([0, 999_999_999, 123_456_789]))
        if draw(st.integers(0, 3)):
            txn.ClearField("last_reached_hq_at")
    return txn


@settings(deadline=None)
@given(st.lists(common_shaped(), max_size=5), st.sampled_from([b"", b"\x18\x01"]))
def test_the_common_cases_columns_are_those_of_the_decoded_transactions(
    batch: list[offline_pb2.OfflineTransaction], unknown: bytes,
) -> None:
    """The columns hold what the decoded transactions do; a batch told not the common case
    has a transaction not of its shape, or one whose amount the common path refuses
    anyway (not positive, or no currency). The transactions read are the decoded ones."""
    request = ts.SyncOfflineBatchRequest(request_id="batch-1", transactions=batch)
    request.MergeFromString(unknown)
    serialized = request.SerializeToString(deterministic=True)
    transactions, sales = offline_batch_from_proto(request.transactions, serialized)
    decoded = [field_by_field(txn) for txn in batch]
    expected = common_sales(decoded)
    event(f"common case: {sales is not False}")
    if sales is False:
        assert expected is None or any(
            minor <= 0 or not currency
            for minor, currency in zip(expected.amounts_minor, expected.currencies,
                                       strict=True))
    else:
        assert sales == expected
    assert len(transactions) == len(batch)
    assert list(transactions) == decoded
    assert [txn.sequence_number for txn in transactions] == [
        txn.sequence_number for txn in batch]


@given(st.lists(st.sampled_from(["sale-1", "", "x" * 128, "x" * 129, "a\nb", "é", "\u200b", " "]),
                max_size=4))
def test_ids_checked_together_as_one_by_one(values: list[str]) -> None:
    """The common planner checks a column of ids at once (`are_valid_ids`): as each alone."""
    assert are_valid_ids(values) == all(is_valid_id(value) for value in values)
