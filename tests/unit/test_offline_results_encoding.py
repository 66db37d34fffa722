"""The stored form of offline results: every field survives, and the array form that
earlier versions stored still reads."""

from __future__ import annotations

from dataclasses import replace

import pytest

from storedvalue.hq import records
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineReversalResult,
    OfflineTransactionResult,
    ReversalOutcome,
)
from storedvalue.hq.storage import offline_results

RESULTS = [
    OfflineTransactionResult("t-1", 1, OfflineOutcome.APPLIED, OfflineOutcome.APPLIED),
    OfflineTransactionResult(
        transaction_id="t-é\"2",
        sequence_number=2**40,
        outcome=OfflineOutcome.ALREADY_APPLIED,
        original_outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        reason="OVERDRAFT",
        message='balance "short"\nby 5',
        line_results=(
            OfflineLineResult("1", OfflineLineOutcome.APPLIED, "", Money(0, "EUR"), "7001"),
            OfflineLineResult("2", OfflineLineOutcome.REJECTED, "CARD_NOT_FOUND", None, ""),
            OfflineLineResult("3", OfflineLineOutcome.APPLIED_WITH_EXCEPTION, "OVERDRAFT",
                              Money(-250, "USD")),
        ),
        exception_ids=("x-1", "x-2"),
    ),
    OfflineTransactionResult(
        transaction_id="t-3",
        sequence_number=3,
        outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        original_outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        reason="REMAINDER_MEMO_IN_USE",
        exception_ids=("x-3",),
        reversal_results=(
            OfflineReversalResult("L0", ReversalOutcome.REVERSED, "REMAINDER_MEMO_IN_USE",
                                  Money(500, "EUR"), "", "7002"),
            OfflineReversalResult("L1", ReversalOutcome.REVERSED, "", Money(2000, "EUR"),
                                  "7003"),
            OfflineReversalResult("L2", ReversalOutcome.NEVER_APPLIED),
            OfflineReversalResult("L3", ReversalOutcome.REJECTED, "\"odd\"\n"),
        ),
    ),
]


@pytest.mark.parametrize("result", RESULTS)
def test_an_offline_result_reads_back_as_it_was_stored(result: OfflineTransactionResult) -> None:
    stored = offline_results.dumps(result, result.transaction_id, result.sequence_number)
    assert offline_results.loads(stored, result.transaction_id, result.sequence_number) == result
    # As earlier versions wrote every result: a JSON object.
    assert offline_results.loads(
        records.dumps(result), result.transaction_id, result.sequence_number) == result


# Written by earlier versions, which stored offline results as JSON arrays.
EARLIER_ARRAYS = [
    '["t-1",1,"APPLIED","APPLIED","","",[],[]]',
    '["t-\\u00e9\\"2",1099511627776,"ALREADY_APPLIED","APPLIED_WITH_EXCEPTION","OVERDRAFT",'
    '"balance \\"short\\"\\nby 5",[["1","APPLIED","",0,"EUR","7001"],'
    '["2","REJECTED","CARD_NOT_FOUND",null,null,""],'
    '["3","APPLIED_WITH_EXCEPTION","OVERDRAFT",-250,"USD",""]],["x-1","x-2"]]',
    '["t-3",3,"APPLIED_WITH_EXCEPTION","APPLIED_WITH_EXCEPTION","REMAINDER_MEMO_IN_USE","",[],'
    '["x-3"],[["L0","REVERSED","REMAINDER_MEMO_IN_USE",500,"EUR","","7002"],'
    '["L1","REVERSED","",2000,"EUR","7003",""],["L2","NEVER_APPLIED","",null,null,"",""],'
    '["L3","REJECTED","\\"odd\\"\\n",null,null,"",""]]]',
]


@pytest.mark.parametrize(("text", "result"), list(zip(EARLIER_ARRAYS, RESULTS, strict=True)))
def test_an_offline_result_stored_as_an_array_by_an_earlier_version_still_reads(
    text: str, result: OfflineTransactionResult,
) -> None:
    assert offline_results.loads(text, result.transaction_id, result.sequence_number) == result


def applied(txn_id: str, sequence: int, line_id: str, balance: Money
            ) -> OfflineTransactionResult:
    return OfflineTransactionResult(
        txn_id, sequence, OfflineOutcome.APPLIED, OfflineOutcome.APPLIED,
        line_results=(OfflineLineResult(line_id, OfflineLineOutcome.APPLIED, "", balance),))


COMMON = [
    applied("sale-1", 1, "1", Money(9_900, "EUR")),
    applied("sale 2", 2**40, "line two é", Money(0, "USD")),
    applied("s", 3, " A1 2 ", Money(-5, "EUR")),
]


@pytest.mark.parametrize("result", COMMON)
def test_the_common_result_is_stored_compactly_and_reads_back_as_it_was(
    result: OfflineTransactionResult,
) -> None:
    stored = offline_results.dumps(result, result.transaction_id, result.sequence_number)
    balance = result.line_results[0].balance_after
    assert balance is not None
    assert stored == (f"A{balance.amount_minor} {balance.currency} "
                      f"{result.line_results[0].line_id}")
    assert offline_results.loads(stored, result.transaction_id, result.sequence_number) == result
    # The JSON object of the same result (as stored before the compact form) reads alike.
    assert offline_results.loads(
        records.dumps(result), result.transaction_id, result.sequence_number) == result


@pytest.mark.parametrize("result", [
    replace(COMMON[0], outcome=OfflineOutcome.ALREADY_APPLIED),
    replace(COMMON[0], message="m"),
    replace(COMMON[0], exception_ids=("x-1",)),
    replace(COMMON[0], line_results=()),
    replace(COMMON[0], line_results=COMMON[0].line_results * 2),
    replace(COMMON[0], line_results=(replace(COMMON[0].line_results[0], balance_after=None),)),
    replace(COMMON[0], line_results=(replace(COMMON[0].line_results[0], reason="R"),)),
    replace(COMMON[0], line_results=(replace(COMMON[0].line_results[0],
                                             remainder_credit_memo_number="7001"),)),
    replace(COMMON[0], line_results=(replace(COMMON[0].line_results[0], line_id="a\nb"),)),
    replace(COMMON[0], line_results=(replace(COMMON[0].line_results[0],
                                             balance_after=Money(1, "E R")),)),
])
def test_any_other_result_is_stored_as_a_json_object(result: OfflineTransactionResult) -> None:
    stored = offline_results.dumps(result, result.transaction_id, result.sequence_number)
    assert stored == records.dumps(result)
    assert offline_results.loads(stored, result.transaction_id, result.sequence_number) == result


def test_a_common_result_of_another_record_is_stored_as_a_json_object() -> None:
    result = COMMON[0]
    assert offline_results.dumps(result, "other", 1) == records.dumps(result)
    assert offline_results.dumps(result, result.transaction_id, 2) == records.dumps(result)
