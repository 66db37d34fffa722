"""An offline result as the till receives it: every outcome under its contract name."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineReversalResult,
    OfflineTransactionResult,
    ReversalOutcome,
)
from storedvalue.hq.domain.offline_common import AppliedResults, CommonDebits, CommonSales
from storedvalue.hq.domain.terminals import SequenceGap
from storedvalue.hq.grpc_api.convert.offline import (
    complete_offline_response_wire,
    offline_result_wire,
    sync_response_wire,
)
from storedvalue.hq.services.offline import SyncStatus
from storedvalue.v1 import offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts


def offline_result_to_proto(result: OfflineTransactionResult
                            ) -> offline_pb2.OfflineTransactionResult:
    """The result as the till decodes it; its bytes are what protobuf itself would send."""
    data = offline_result_wire(result)
    message = offline_pb2.OfflineTransactionResult.FromString(data)
    assert message.SerializeToString() == data
    return message


@pytest.mark.parametrize("outcome", list(OfflineOutcome))
@pytest.mark.parametrize("original", list(OfflineOutcome))
@pytest.mark.parametrize("line_outcome", list(OfflineLineOutcome))
def test_every_outcome_reaches_the_till_under_its_contract_name(
    outcome: OfflineOutcome, original: OfflineOutcome, line_outcome: OfflineLineOutcome,
) -> None:
    result = OfflineTransactionResult(
        "sale-1", 7, outcome, original,
        line_results=(OfflineLineResult("1", line_outcome, "", Money(-5, "EUR")),))

    message = offline_result_to_proto(result)

    assert offline_pb2.OfflineOutcome.Name(message.outcome) == f"OFFLINE_OUTCOME_{outcome.value}"
    assert (offline_pb2.OfflineOutcome.Name(message.original_outcome)
            == f"OFFLINE_OUTCOME_{original.value}")
    (line,) = message.line_results
    assert (offline_pb2.OfflineLineOutcome.Name(line.outcome)
            == f"OFFLINE_LINE_OUTCOME_{line_outcome.value}")
    assert (message.transaction_id, message.sequence_number, line.line_id) == ("sale-1", 7, "1")
    assert (line.balance_after.amount_minor, line.balance_after.currency_code) == (-5, "EUR")


def test_every_field_of_a_result_reaches_the_till() -> None:
    result = OfflineTransactionResult(
        "sale-é 2", 2**40, OfflineOutcome.ALREADY_APPLIED, OfflineOutcome.APPLIED_WITH_EXCEPTION,
        "OFFLINE_OVERDRAFT", "x" * 300,
        line_results=(
            OfflineLineResult("1", OfflineLineOutcome.APPLIED_WITH_EXCEPTION, "OVERDRAFT",
                              Money(-(2**62), "USD"), "600000000000000001"),
            OfflineLineResult("", OfflineLineOutcome.REJECTED),
            OfflineLineResult("3", OfflineLineOutcome.APPLIED, "", Money(0, "")),
        ),
        exception_ids=("exc_1", "exc_2"),
        reversal_results=(
            OfflineReversalResult("4", ReversalOutcome.REVERSED, "", Money(150, "EUR"),
                                  "600000000000000002", "600000000000000003"),
            OfflineReversalResult("5", ReversalOutcome.NEVER_APPLIED, "NOT_APPLIED"),
        ),
    )

    message = offline_result_to_proto(result)

    assert (message.transaction_id, message.sequence_number) == ("sale-é 2", 2**40)
    assert (message.outcome, message.original_outcome) == (
        offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED,
        offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION)
    assert (message.reason, message.message) == ("OFFLINE_OVERDRAFT", "x" * 300)
    first, second, third = message.line_results
    assert (first.line_id, first.reason, first.remainder_credit_memo_number) == (
        "1", "OVERDRAFT", "600000000000000001")
    assert (first.balance_after.amount_minor, first.balance_after.currency_code) == (
        -(2**62), "USD")
    assert (second.line_id, second.outcome, second.HasField("balance_after")) == (
        "", offline_pb2.OFFLINE_LINE_OUTCOME_REJECTED, False)
    assert third.HasField("balance_after")  # a zero balance is still a balance
    assert list(message.exception_ids) == ["exc_1", "exc_2"]
    reversed_line, never = message.reversal_results
    assert (reversed_line.outcome, reversed_line.balance_after.amount_minor,
            reversed_line.voided_credit_memo_number,
            reversed_line.remainder_credit_memo_number) == (
        offline_pb2.OFFLINE_REVERSAL_OUTCOME_REVERSED, 150, "600000000000000002",
        "600000000000000003")
    assert (never.line_id, never.reason, never.HasField("balance_after")) == (
        "5", "NOT_APPLIED", False)


def test_a_batch_answer_carries_every_result_in_order_and_the_sync_status() -> None:
    results = [OfflineTransactionResult(
        f"sale-{n}", n, OfflineOutcome.APPLIED, OfflineOutcome.APPLIED,
        line_results=(OfflineLineResult("1", OfflineLineOutcome.APPLIED, "",
                                        Money(10_000 - n, "EUR")),))
        for n in range(1, 300)]
    status = SyncStatus("till-1", 299, 310, (SequenceGap(300, 309),), None)

    data = sync_response_wire(results, status)
    response = ts.SyncOfflineBatchResponse.FromString(data)

    assert response.SerializeToString() == data
    assert [(r.transaction_id, r.line_results[0].balance_after.amount_minor)
            for r in response.results] == [(f"sale-{n}", 10_000 - n) for n in range(1, 300)]
    assert (response.sync_status.highest_contiguous_sequence,
            response.sync_status.highest_sequence_seen,
            [(gap.first_missing, gap.last_missing) for gap in response.sync_status.gaps]) == (
        299, 310, [(300, 309)])
    single = ts.CompleteOfflineResponse.FromString(
        complete_offline_response_wire(results[0], status))
    assert single.result == response.results[0]
    assert single.sync_status == response.sync_status


@pytest.mark.parametrize("number", [1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**40])
def test_usual_results_encode_as_protobuf_does_at_every_varint_length(number: int) -> None:
    results = [OfflineTransactionResult(
        txn_id, number, OfflineOutcome.APPLIED, OfflineOutcome.APPLIED,
        line_results=(OfflineLineResult(line_id, OfflineLineOutcome.APPLIED, "",
                                        Money(balance, "EUR")),))
        for txn_id, line_id, balance in (("sale-1", "1", number), ("s" * 120, "é", 1),
                                         ("sale-2", "2", 0))]
    status = SyncStatus("till-1", 0, 0, (), None)

    data = sync_response_wire(results, status)
    response = ts.SyncOfflineBatchResponse.FromString(data)

    assert response.SerializeToString() == data
    assert [(r.transaction_id, r.sequence_number, r.line_results[0].line_id,
             r.line_results[0].balance_after.amount_minor) for r in response.results] == [
        ("sale-1", number, "1", number), ("s" * 120, number, "é", 1), ("sale-2", number, "2", 0)]


@pytest.mark.parametrize("number", [1, 127, 128, 16_383, 16_384, 2**21 - 1, 2**21, 2**40])
def test_the_common_paths_results_encode_as_protobuf_does_at_every_varint_length(
        number: int) -> None:
    sales = CommonSales(
        transaction_ids=["sale-1", "s" * 120, "sale-2"], sequence_numbers=[number] * 3,
        completed_micros=[0] * 3, parameters_versions=[1] * 3, fingerprints=[b""] * 3,
        line_ids=["1", "é", "2"], card_numbers=["c1", "c2", "c3"], amounts_minor=[5] * 3,
        currencies=["EUR"] * 3, fencing_tokens=[1] * 3)
    written = AppliedResults(CommonDebits(sales, [number, 1, 0]))
    status = SyncStatus("till-1", 0, 0, (), None)

    data = sync_response_wire(written, status)

    assert data == field_by_field(list(written), status)
    assert [(r.sequence_number, r.line_results[0].balance_after.amount_minor)
            for r in ts.SyncOfflineBatchResponse.FromString(data).results] == [
        (number, number), (number, 1), (number, 0)]


def field_by_field(results: list[OfflineTransactionResult], status: SyncStatus) -> bytes:
    """The response as the protobuf runtime builds and serializes it: what the written
    bytes must equal, byte for byte."""
    response = ts.SyncOfflineBatchResponse()
    for result in results:
        message = response.results.add(
            transaction_id=result.transaction_id, sequence_number=result.sequence_number,
            outcome=offline_pb2.OfflineOutcome.Value(f"OFFLINE_OUTCOME_{result.outcome.value}"),
            original_outcome=offline_pb2.OfflineOutcome.Value(
                f"OFFLINE_OUTCOME_{result.original_outcome.value}"),
            reason=result.reason, message=result.message,
            exception_ids=list(result.exception_ids))
        for line in result.line_results:
            sent = message.line_results.add(
                line_id=line.line_id, reason=line.reason,
                outcome=offline_pb2.OfflineLineOutcome.Value(
                    f"OFFLINE_LINE_OUTCOME_{line.outcome.value}"),
                remainder_credit_memo_number=line.remainder_credit_memo_number)
            if line.balance_after is not None:
                sent.balance_after.SetInParent()
                sent.balance_after.amount_minor = line.balance_after.amount_minor
                sent.balance_after.currency_code = line.balance_after.currency
    response.sync_status.terminal_id = status.terminal_id
    return response.SerializeToString(deterministic=True)


NUMBERS = st.sampled_from([-(2**63), -1, 0, 1, 127, 128, 16_383, 16_384, 2**21, 2**63 - 1])
TEXTS = st.sampled_from(["", "1", "sale-7", "é", "x" * 120, "y" * 200])
# Mostly what the usual result's formatting takes (varints of one or two bytes, short
# texts), and its edges.
USUAL_NUMBERS = st.sampled_from([1, 127, 128, 16_383, 16_384]) | NUMBERS
USUAL_TEXTS = st.sampled_from(["1", "sale-7", "é", "z" * 90]) | TEXTS.filter(bool)


def changes(**values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """No change, one field of another value (each as likely), or several."""
    one = [st.fixed_dictionaries({name: strategy}) for name, strategy in values.items()]
    return st.just({}) | st.one_of(one) | st.fixed_dictionaries({}, optional=values)


@st.composite
def results(draw: st.DrawFn) -> OfflineTransactionResult:
    """Mostly the usual result (written without a call) at every varint and text length,
    else one with a field or more of another value."""
    line = replace(OfflineLineResult(
        draw(USUAL_TEXTS), OfflineLineOutcome.APPLIED,
        balance_after=Money(draw(USUAL_NUMBERS), draw(st.sampled_from(["EUR", "é"])))),
        **draw(changes(line_id=st.just(""),
                       outcome=st.sampled_from(list(OfflineLineOutcome)),
                       reason=st.just("OVERDRAFT"),
                       balance_after=st.none() | st.just(Money(5, "")),
                       remainder_credit_memo_number=st.just("7001"))))
    return replace(OfflineTransactionResult(
        draw(USUAL_TEXTS), draw(USUAL_NUMBERS), OfflineOutcome.APPLIED, OfflineOutcome.APPLIED,
        line_results=(line,)),
        **draw(changes(transaction_id=st.just(""),
                       outcome=st.sampled_from(list(OfflineOutcome)),
                       original_outcome=st.sampled_from(list(OfflineOutcome)),
                       reason=st.just("OVERDRAFT"),
                       message=st.just("m"),
                       exception_ids=st.just(("exc_1",)),
                       line_results=st.sampled_from([(), (line, line)]))))


@settings(max_examples=300)
@given(st.lists(results(), max_size=5))
def test_a_batch_answer_is_what_protobuf_writes(batch: list[OfflineTransactionResult]) -> None:
    status = SyncStatus("till-1", 0, 0, (), None)
    assert sync_response_wire(batch, status) == field_by_field(batch, status)
