"""Reversals: a terminal gives up a tender line whose Redeem may have reached HQ.

A card terminal whose authorisation answer never came sends a reversal of it (ISO 8583's
reversal advice, Adyen's technical cancel); a till does the same for a stored-value line it
leaves out of a sale, or abandons, after its Redeem was sent. The reversal travels in the
sale's offline transaction, so it is applied exactly once, in the till's sequence order.

The rules, all keyed by (terminal, transaction, line) like the Redeem itself:
- a line HQ debited is credited back (journal kind REVERSAL) and recorded as REVERSED. For a
  credit memo whose remainder went to a new memo: if nobody used or locked that memo (still
  ACTIVE, no lock at all), it is voided and its value moved back too, so the customer holds
  the original memo with its whole value again. Otherwise the remainder memo stays valid, the
  original gets the debit back, and an exception tells the back office that the customer's
  value is now split over two memos: charged once either way, and every card's balance still
  equals the sum of its journal.
- a line HQ never debited gets a tombstone (NEVER_APPLIED): a Redeem of it arriving later is
  refused (LINE_REVERSED), whatever its request id.
- either way the lock this terminal holds on the card for the transaction is released.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import replace
from datetime import datetime

from storedvalue.hq.domain.cards import Card, CardStatus, is_valid_card_number
from storedvalue.hq.domain.client_text import is_valid_id, validate_id
from storedvalue.hq.domain.errors import InvalidCardNumber, InvalidField, LineReversed, Reason
from storedvalue.hq.domain.money import Money, positive_money
from storedvalue.hq.domain.offline_transactions import (
    OfflineBatchPlan,
    OfflineException,
    OfflineExceptionKind,
    OfflineOutcome,
    OfflineReversal,
    OfflineReversalResult,
    OfflineTransaction,
    OfflineTransactionResult,
    Redemption,
    ReversalOutcome,
    new_exception_id,
)

LineKey = tuple[str, str, str]


def validate_reversals(txn: OfflineTransaction) -> None:
    """Each reversal names a line once, not also debited by the same transaction, with a
    well-formed card number and a positive amount."""
    redeemed = {line.line_id for line in txn.redeem_lines}
    seen: set[str] = set()
    for i, reversal in enumerate(txn.reversals):
        line_id = reversal.line_id
        if not is_valid_id(line_id):
            validate_id(line_id, f"reversals[{i}].line_id")
        if line_id in seen:
            raise InvalidField(f"reversals[{i}].line_id", "is repeated in the transaction")
        if line_id in redeemed:
            raise InvalidField(
                f"reversals[{i}].line_id", "is also a redeem line of the transaction"
            )
        seen.add(line_id)
        if not is_valid_card_number(reversal.card_number):
            raise InvalidCardNumber(f"reversals[{i}].card_number",
                                    missing=not reversal.card_number)
        positive_money(reversal.amount, f"reversals[{i}].amount")


def refuse_if_reversed(line: Redemption | None) -> None:
    """An online Redeem of a line the terminal reversed is refused, first send or resend."""
    if line is not None and line.reversal is not None:
        raise LineReversed(line.transaction_id, line.line_id, line.reversal.value)


def reversal_keys(terminal_id: str, transactions: list[OfflineTransaction]) -> set[LineKey]:
    return {
        (terminal_id, txn.transaction_id, reversal.line_id)
        for txn in transactions
        for reversal in txn.reversals
    }


def cards_a_reversal_touches(line: Redemption) -> tuple[str, ...]:
    """Cards to load (for update) before reversing this stored line."""
    if line.reversal is not None:
        return ()
    if line.remainder_card_number:
        return (line.card_number, line.remainder_card_number)
    return (line.card_number,)


def rejected_reversals(txn: OfflineTransaction, reason: str) -> tuple[OfflineReversalResult, ...]:
    return tuple(
        OfflineReversalResult(line_id=r.line_id, outcome=ReversalOutcome.REJECTED, reason=reason)
        for r in txn.reversals
    )


def apply_reversals(
    plan: OfflineBatchPlan,
    *,
    terminal_id: str,
    txn: OfflineTransaction,
    cards: Mapping[str, Card],
    lines: MutableMapping[LineKey, Redemption],
    now: datetime,
    result: OfflineTransactionResult,
) -> OfflineTransactionResult:
    """Apply the transaction's reversals after its redeem lines and unlocks; `lines` holds
    what HQ decided so far for every line of the batch (updated here). Returns `result`
    with the reversal results, and the exceptions they recorded, added."""
    results: list[OfflineReversalResult] = []
    exception_ids: list[str] = []
    for reversal in txn.reversals:
        key = (terminal_id, txn.transaction_id, reversal.line_id)
        stored = lines.get(key)
        if stored is None:
            tombstone = _tombstone(terminal_id, txn.transaction_id, reversal, now)
            plan.redemptions.append(tombstone)
            lines[key] = tombstone
            card = cards.get(reversal.card_number)
            if card is not None:
                card.release_if_held(terminal_id=terminal_id, transaction_id=txn.transaction_id)
            results.append(
                OfflineReversalResult(line_id=reversal.line_id,
                                      outcome=ReversalOutcome.NEVER_APPLIED)
            )
        elif stored.reversal is not None:
            results.append(OfflineReversalResult(line_id=reversal.line_id,
                                                 outcome=stored.reversal))
        else:
            reversed_result, exceptions = _reverse_debit(stored, reversal, cards, now)
            for exc in exceptions:
                plan.exceptions.append(exc)
                exception_ids.append(exc.exception_id)
            reversed_line = replace(stored, reversal=ReversalOutcome.REVERSED, reversed_at=now)
            plan.reversed_redemptions.append(reversed_line)
            lines[key] = reversed_line
            results.append(reversed_result)
    if not exception_ids:
        return replace(result, reversal_results=tuple(results))
    all_ids = (*result.exception_ids, *exception_ids)
    return replace(
        result, outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        original_outcome=OfflineOutcome.APPLIED_WITH_EXCEPTION,
        reason=result.reason or next(r.reason for r in results if r.reason),
        message=f"{len(all_ids)} exception(s) recorded", exception_ids=all_ids,
        reversal_results=tuple(results),
    )


def _tombstone(
    terminal_id: str, transaction_id: str, reversal: OfflineReversal, now: datetime
) -> Redemption:
    assert reversal.amount is not None  # validated
    return Redemption(
        terminal_id=terminal_id, transaction_id=transaction_id, line_id=reversal.line_id,
        card_number=reversal.card_number, amount_minor=reversal.amount.amount_minor,
        currency=reversal.amount.currency, remainder_card_number="", offline=True,
        recorded_at=now, reversal=ReversalOutcome.NEVER_APPLIED, reversed_at=now,
    )


def _reverse_debit(
    stored: Redemption, reversal: OfflineReversal, cards: Mapping[str, Card], now: datetime
) -> tuple[OfflineReversalResult, list[OfflineException]]:
    """Credit a debited line back; void its remainder memo when nobody touched it."""
    card = cards[stored.card_number]
    exceptions: list[OfflineException] = []

    def move(target: Card, amount_minor: int) -> None:
        target.record_reversal(amount_minor, terminal_id=stored.terminal_id,
                               transaction_id=stored.transaction_id, line_id=stored.line_id,
                               now=now)

    def exception(reason: str, message: str) -> None:
        exceptions.append(OfflineException(
            exception_id=new_exception_id(), kind=OfflineExceptionKind.REVERSAL,
            terminal_id=stored.terminal_id, transaction_id=stored.transaction_id,
            line_id=stored.line_id, card_number=stored.card_number,
            amount=Money(stored.amount_minor, stored.currency), reason=reason,
            message=message, created_at=now,
        ))

    assert reversal.amount is not None  # validated
    if (reversal.card_number, reversal.amount) != (
        stored.card_number, Money(stored.amount_minor, stored.currency)
    ):
        exception(Reason.REVERSAL_MISMATCH,
                  f"the reversal named {reversal.amount} on card ending "
                  f"{reversal.card_number[-4:]}; HQ reversed what it debited for the line, "
                  f"{Money(stored.amount_minor, stored.currency)} on card ending "
                  f"{stored.card_number[-4:]}")
    moved_back, voided, kept = 0, "", ""
    if stored.remainder_card_number:
        memo = cards[stored.remainder_card_number]
        if memo.status is CardStatus.ACTIVE and memo.lock is None and memo.balance_minor > 0:
            moved_back, voided = memo.balance_minor, memo.card_number
            move(memo, -moved_back)
        else:
            kept = memo.card_number
            exception(Reason.REMAINDER_MEMO_IN_USE,
                      f"remainder memo ending {kept[-4:]} was used or locked since; it stays "
                      f"valid and the memo got only the debit back: the customer's value is "
                      f"split over the two memos")
    move(card, stored.amount_minor + moved_back)
    card.release_if_held(terminal_id=stored.terminal_id, transaction_id=stored.transaction_id)
    return OfflineReversalResult(
        line_id=stored.line_id, outcome=ReversalOutcome.REVERSED,
        reason=exceptions[0].reason if exceptions else "", balance_after=card.balance,
        voided_credit_memo_number=voided, remainder_credit_memo_number=kept,
    ), exceptions
