"""An offline transaction's stored result (`offline_records.result_json`), in one of three
forms, told apart by the first character.

- The common result (applied as sent: one line applied, leaving a balance; no reason, memo
  or exception), written for most records, compactly, beside the record's own transaction
  id and sequence number columns (which it leaves out):

      A<balance minor> <balance currency> <line_id>

  e.g. ``A9900 EUR 1`` (the line id last: it may hold spaces).
- Any other result: a JSON object, written by `storedvalue.hq.records` as every stored value
  is (also the form of the common result before the compact one).
- Results stored by earlier versions still: JSON arrays with the fields in a fixed order:

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
from storedvalue.hq.domain.offline_common import CommonDebits, applied_result

_APPLIED = OfflineOutcome.APPLIED
_LINE_APPLIED = OfflineLineOutcome.APPLIED


def dumps(result: OfflineTransactionResult, transaction_id: str, sequence_number: int) -> str:
    """The stored form of `result`, the record of (`transaction_id`, `sequence_number`)."""
    if (result.outcome is _APPLIED and result.original_outcome is _APPLIED
            and len(result.line_results) == 1 and not result.reason and not result.message
            and not result.exception_ids and not result.reversal_results
            and result.transaction_id == transaction_id
            and result.sequence_number == sequence_number):
        (line,) = result.line_results
        balance = line.balance_after
        if (line.outcome is _LINE_APPLIED and balance is not None and not line.reason
                and not line.remainder_credit_memo_number):
            text = _applied_text(balance.amount_minor, balance.currency, line.line_id)
            if text is not None:
                return text
    return records.dumps(result)


def dumps_applied(debits: CommonDebits) -> list[str]:
    """`dumps` of each common debit's result (`applied_result`: its line applied, leaving
    its balance after), the result made only for one that does not fit the compact form."""
    sales = debits.sales
    currencies, line_ids = sales.currencies, sales.line_ids
    # (Each currency alphabetic, each line id printable: so are they all together, but an
    # empty currency is not alphabetic alone.)
    if (not currencies or "" not in currencies) and "".join(currencies).isalpha() and (
            "".join(line_ids).isprintable()):
        # As _applied_text's (an f-string in a comprehension: half the cost of mapping
        # str.format over the columns).
        return [f"A{balance} {currency} {line_id}" for balance, currency, line_id
                in zip(debits.balances_after_minor, currencies, line_ids, strict=True)]
    return [_applied_text(debit.balance_after_minor, debit.currency, debit.line_id)
            or records.dumps(applied_result(debit)) for debit in debits]


def _applied_text(balance_minor: int, currency: str, line_id: str) -> str | None:
    """The compact form of the common result (its line `line_id` leaving `balance_minor` in
    `currency`), or None when these values do not fit it (the JSON object then)."""
    if currency.isalpha() and line_id.isprintable():
        return f"A{balance_minor} {currency} {line_id}"
    return None


def applied(transaction_id: str, sequence_number: int, line_id: str,
            balance: Money) -> OfflineTransactionResult:
    """The common result: the transaction and its one line applied, leaving `balance`."""
    return OfflineTransactionResult(
        transaction_id, sequence_number, _APPLIED, _APPLIED, "", "",
        (OfflineLineResult(line_id, _LINE_APPLIED, "", balance, ""),))


def loads(text: str, transaction_id: str, sequence_number: int) -> OfflineTransactionResult:
    """The result stored as `text` in the record of (`transaction_id`, `sequence_number`)."""
    if text.startswith("A"):
        minor, currency, line_id = text[1:].split(" ", 2)
        return applied(transaction_id, sequence_number, line_id, Money(int(minor), currency))
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
