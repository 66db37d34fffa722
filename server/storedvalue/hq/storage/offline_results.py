"""An offline transaction's stored result (`offline_records.result_json`): written by
`storedvalue.hq.records` as every stored value is; read here, because results stored by
earlier versions are JSON arrays with the fields in a fixed order:

    [transaction_id, sequence_number, outcome, original_outcome, reason, message,
     [[line_id, outcome, reason, balance minor|null, balance currency|null, memo], ...],
     [exception_id, ...]]
    and, only when the transaction had reversals, a ninth element
    [[line_id, outcome, reason, balance minor|null, balance currency|null, voided memo,
      kept remainder memo], ...]
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
    OfflineReversalResult,
    OfflineTransactionResult,
    ReversalOutcome,
)


def loads(text: str) -> OfflineTransactionResult:
    if not text.startswith("["):
        return records.loads(OfflineTransactionResult, text)
    data: list[Any] = json.loads(text)  # an earlier version's array
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
