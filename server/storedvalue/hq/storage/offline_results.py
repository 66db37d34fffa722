"""The stored form of an offline transaction's result (`offline_records.result_json`).

Every applied offline transaction stores its result, so the sync's throughput depends on
this encoding: a JSON array with the fields in a fixed order, which the C JSON encoder
writes in a few microseconds, where the generic dataclass encoding of
`storedvalue.hq.records` costs several times that. Results stored in that earlier form (a
JSON object) are still read.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

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

_string = encode_basestring_ascii  # what json.dumps(ensure_ascii=True) writes for a str


def dumps(result: OfflineTransactionResult) -> str:
    """[transaction_id, sequence_number, outcome, original_outcome, reason, message,
    [[line_id, outcome, reason, balance minor|null, balance currency|null, memo], ...],
    [exception_id, ...]]
    and, only when the transaction had reversals, a ninth element
    [[line_id, outcome, reason, balance minor|null, balance currency|null, voided memo,
      kept remainder memo], ...]

    Written piece by piece with the C string encoder: byte for byte what
    `json.dumps(..., separators=(",", ":"))` writes, at a fraction of its per-call cost.
    (`_value_` is the attribute behind an enum member's `value` property.)"""
    lines = [
        f"[{_string(line.line_id)},{_string(line.outcome._value_)},{_string(line.reason)},"
        f"{_money(line.balance_after)},{_string(line.remainder_credit_memo_number)}]"
        for line in result.line_results
    ]
    exception_ids = ",".join([_string(exception_id) for exception_id in result.exception_ids])
    reversals = ""
    if result.reversal_results:
        reversals = ",[" + ",".join([_reversal(r) for r in result.reversal_results]) + "]"
    return (
        f"[{_string(result.transaction_id)},{int(result.sequence_number)},"
        f"{_string(result.outcome._value_)},{_string(result.original_outcome._value_)},"
        f"{_string(result.reason)},{_string(result.message)},[{','.join(lines)}],"
        f"[{exception_ids}]{reversals}]"
    )


def _reversal(result: OfflineReversalResult) -> str:
    return (
        f"[{_string(result.line_id)},{_string(result.outcome._value_)},"
        f"{_string(result.reason)},{_money(result.balance_after)},"
        f"{_string(result.voided_credit_memo_number)},"
        f"{_string(result.remainder_credit_memo_number)}]"
    )


def _money(balance: Money | None) -> str:
    """Two JSON array items: minor units and currency, or null and null."""
    if balance is None:
        return "null,null"
    return f"{int(balance.amount_minor)},{_string(balance.currency)}"


def loads(text: str) -> OfflineTransactionResult:
    if text.startswith("{"):  # written before the compact form
        return records.loads(OfflineTransactionResult, text)
    data: list[Any] = json.loads(text)
    txn_id, sequence, outcome, original, reason, message, lines, exception_ids = data[:8]
    reversals = data[8] if len(data) > 8 else []
    return OfflineTransactionResult(
        transaction_id=txn_id,
        sequence_number=sequence,
        outcome=OfflineOutcome(outcome),
        original_outcome=OfflineOutcome(original),
        reason=reason,
        message=message,
        line_results=tuple(
            OfflineLineResult(
                line_id=line_id,
                outcome=OfflineLineOutcome(line_outcome),
                reason=line_reason,
                balance_after=None if minor is None else Money(minor, currency),
                remainder_credit_memo_number=memo,
            )
            for line_id, line_outcome, line_reason, minor, currency, memo in lines
        ),
        exception_ids=tuple(exception_ids),
        reversal_results=tuple(
            OfflineReversalResult(
                line_id=line_id,
                outcome=ReversalOutcome(reversal_outcome),
                reason=reversal_reason,
                balance_after=None if minor is None else Money(minor, currency),
                voided_credit_memo_number=voided,
                remainder_credit_memo_number=kept,
            )
            for line_id, reversal_outcome, reversal_reason, minor, currency, voided, kept
            in reversals
        ),
    )
