"""The till's reading of HQ's SyncOfflineBatch answer from its bytes: the usual answer read
as columns gives exactly what protobuf's decoding gives, and any other answer is decoded."""

from __future__ import annotations

import uuid

import pytest

from storedvalue.terminal._convert import sync_results_from_pb, sync_results_from_wire
from storedvalue.terminal._hq_records import UsualResults
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

APPLIED = offline_pb2.OFFLINE_OUTCOME_APPLIED


def result(transaction_id: str, sequence: int, balance: int, *, line_id: str = "L1",
           currency: str = "EUR", **fields: object) -> offline_pb2.OfflineTransactionResult:
    message = offline_pb2.OfflineTransactionResult(
        transaction_id=transaction_id, sequence_number=sequence, outcome=APPLIED,
        original_outcome=APPLIED,
        line_results=[offline_pb2.OfflineLineResult(
            line_id=line_id, outcome=offline_pb2.OFFLINE_LINE_OUTCOME_APPLIED,
            balance_after=common_pb2.Money(amount_minor=balance, currency_code=currency))],
    )
    for name, value in fields.items():
        setattr(message, name, value)
    return message


def answer(*results: offline_pb2.OfflineTransactionResult, gaps: int = 0) -> bytes:
    status = offline_pb2.TerminalSyncStatus(
        terminal_id="T1", highest_contiguous_sequence=7, highest_sequence_seen=9,
        gaps=[offline_pb2.SequenceGap(first_missing=n, last_missing=n) for n in range(gaps)])
    return ts.SyncOfflineBatchResponse(results=results, sync_status=status).SerializeToString()


USUAL = {
    "short ids": [result(f"sale-{n}", n + 1, 900 - n) for n in range(3)],
    "UUID ids, large numbers": [result(str(uuid.uuid4()), 2**14 + n, 2**40 + n,
                                       line_id=str(uuid.uuid4())) for n in range(3)],
    "a negative balance": [result("sale-1", 1, -250)],
    "a two-byte sequence, a one-byte balance": [result("s", 300, 5, currency="CHF")],
}
UNUSUAL = {
    "already applied": [result("sale-1", 1, 900),
                        result("sale-2", 2, 800,
                               outcome=offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED)],
    "an id that looks like the fields after it": [
        result("a\x10\x01\x18\x01 \x01", 1, 900), result("sale-2", 2, 800)],
    "a zero balance": [result("sale-1", 1, 0)],
    "a remainder memo": [result("sale-1", 1, 900)],
    "a reason": [result("sale-1", 1, 900, reason="OFFLINE_OVERDRAFT")],
    "an id of 128 bytes": [result("x" * 128, 1, 900)],
}
UNUSUAL["a remainder memo"][0].line_results[0].remainder_credit_memo_number = "M1"


@pytest.mark.parametrize("name", list(USUAL) + list(UNUSUAL))
@pytest.mark.parametrize("gaps", [0, 40])
def test_the_answer_reads_as_protobuf_decodes_it(name: str, gaps: int) -> None:
    wire = answer(*(USUAL | UNUSUAL)[name], gaps=gaps)

    read = sync_results_from_wire(wire)

    assert isinstance(read, UsualResults) == (name in USUAL)
    assert list(read) == list(sync_results_from_pb(ts.SyncOfflineBatchResponse.FromString(wire)))
    assert list(read[1:]) == list(read)[1:]


def test_fields_after_the_sync_status_are_read_as_protobuf_reads_them() -> None:
    unknown_field = b"\xfa\x01\x03abc"  # field 31, length-delimited: unknown to the till
    later_result = ts.SyncOfflineBatchResponse(
        results=[result("sale-9", 9, 100)]).SerializeToString()
    for wire in (answer(*USUAL["short ids"]) + unknown_field,
                 answer(*USUAL["short ids"]) + later_result):
        expected = list(sync_results_from_pb(ts.SyncOfflineBatchResponse.FromString(wire)))

        assert list(sync_results_from_wire(wire)) == expected


def test_an_answer_that_is_no_response_is_refused() -> None:
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        sync_results_from_wire(answer(*USUAL["short ids"])[:-3])
