"""A SyncOfflineBatch's transactions decoded together (`offline_transactions_from_proto`,
sharing equal moments and amounts) are exactly what decoding each alone gives, whatever the
transactions hold: missing or out-of-range times, missing amounts, several lines, unlocks,
reversals, unsynced amounts, kinds HQ does not know."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from storedvalue.hq.grpc_api.convert.offline import (
    offline_transaction_from_proto,
    offline_transactions_from_proto,
)
from storedvalue.v1 import common_pb2, offline_pb2

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
    return txn


@given(st.lists(transactions(), max_size=6))
def test_a_batch_decodes_as_its_transactions_one_by_one(
    batch: list[offline_pb2.OfflineTransaction],
) -> None:
    assert offline_transactions_from_proto(batch) == [
        offline_transaction_from_proto(txn) for txn in batch
    ]
