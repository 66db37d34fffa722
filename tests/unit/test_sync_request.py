"""The till's SyncOfflineBatch request, joined from the outbox's stored transactions: HQ
reads exactly the transactions the outbox holds, in order, whatever their size."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storedvalue.terminal import CardKind, Money
from storedvalue.terminal._convert import offline_sale_to_bytes, sync_batch_request_bytes
from storedvalue.terminal._hq_records import OfflineLine, OfflineSale, QueuedReversal
from storedvalue.v1 import terminal_service_pb2 as ts


def sale(number: int, lines: int) -> OfflineSale:
    return OfflineSale(
        transaction_id=f"sale-é-{number}",
        completed_at=datetime(2026, 12, 2, 5, 0, number % 60, tzinfo=UTC),
        parameters_version=7,
        redeem_lines=tuple(
            OfflineLine(line_id=str(index), card_number=f"{4000_0000_0000_0000 + index}",
                        card_kind=CardKind.GIFT_CARD, amount=Money(100 + index, "EUR"),
                        fencing_token=index + 1, online_redeem_attempted=index % 2 == 0)
            for index in range(lines)
        ),
        reversals=(QueuedReversal(line_id="r", card_number="4000000000000099",
                                  amount=Money(5, "EUR"), fencing_token=3),) if lines else (),
    )


@pytest.mark.parametrize("lines", [
    [],  # an empty batch
    [0, 1, 2],  # payloads under 128 bytes and over: one-byte and two-byte lengths
    [450],  # a payload over 16 KiB: a three-byte length
])
def test_hq_reads_the_outbox_transactions_in_order(lines: list[int]) -> None:
    payloads = [offline_sale_to_bytes(sale(number, count), number + 1)
                for number, count in enumerate(lines)]

    request = ts.SyncOfflineBatchRequest.FromString(
        sync_batch_request_bytes("batch-é-1", payloads))

    assert request.request_id == "batch-é-1"
    assert [t.SerializeToString() for t in request.transactions] == payloads
    assert [t.sequence_number for t in request.transactions] == list(range(1, len(lines) + 1))
    assert [len(t.redeem_lines) for t in request.transactions] == lines
    built = ts.SyncOfflineBatchRequest(request_id="batch-é-1")
    for payload in payloads:
        built.transactions.add().MergeFromString(payload)
    assert request == built
