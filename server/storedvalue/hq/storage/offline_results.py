"""The stored form of an offline transaction's result (`offline_records.result_json`).

Every applied offline transaction stores its result, so the sync's throughput depends on
this encoding: a JSON array with the fields in a fixed order, which the C JSON encoder
writes in a few microseconds, where the generic dataclass encoding of
`storedvalue.hq.records` costs several times that. Results stored in that earlier form (a
JSON object) are still read.
"""

from __future__ import annotations

import json
from typing import Any

from storedvalue.hq import records
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import (
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineTransactionResult,
)

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


def dumps(result: OfflineTransactionResult) -> str:
    """[transaction_id, sequence_number, outcome, original_outcome, reason, message,
    [[line_id, outcome, reason, balance minor|null, balance currency|null, memo], ...],
    [exception_id, ...]]"""
    lines = []
    for line in result.line_results:
        balance = line.balance_after
        lines.append([
            line.line_id,
            line.outcome.value,
            line.reason,
            None if balance is None else balance.amount_minor,
            None if balance is None else balance.currency,
            line.remainder_credit_memo_number,
        ])
    return _compact([
        result.transaction_id,
        result.sequence_number,
        result.outcome.value,
        result.original_outcome.value,
        result.reason,
        result.message,
        lines,
        list(result.exception_ids),
    ])


def loads(text: str) -> OfflineTransactionResult:
    if text.startswith("{"):  # written before the compact form
        return records.loads(OfflineTransactionResult, text)
    data: list[Any] = json.loads(text)
    txn_id, sequence, outcome, original, reason, message, lines, exception_ids = data
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
    )
