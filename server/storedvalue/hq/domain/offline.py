"""Offline transactions and the rules for applying them exactly once.

`plan_offline_batch` is pure: given what the database holds, it decides every item's outcome
and mutates the loaded cards in memory. Items are validated completely before any card is
touched, so each item is all-or-nothing even when a batch shares one database transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from storedvalue.hq.domain.cards import Card, CardKind, is_valid_card_number, issue_card
from storedvalue.hq.domain.errors import (
    CardNotFound,
    CurrencyMismatch,
    InvalidCardNumber,
    InvalidField,
    StoredValueError,
)
from storedvalue.hq.domain.money import MAX_AMOUNT_MINOR, Money, positive_money
from storedvalue.hq.domain.offline_transactions import (
    OfflineBatchPlan,
    OfflineException,
    OfflineExceptionKind,
    OfflineLineOutcome,
    OfflineLineResult,
    OfflineOutcome,
    OfflineRecord,
    OfflineRedeemLine,
    OfflineReversal,
    OfflineReversalResult,
    OfflineTransaction,
    OfflineTransactionResult,
    OfflineUnlock,
    Redemption,
    ReversalOutcome,
    new_exception_id,
)
from storedvalue.hq.domain.parameters import Parameters
from storedvalue.hq.domain.reversals import (
    apply_reversals,
    rejected_reversals,
    validate_reversals,
)


def validate_offline_envelope(txn: OfflineTransaction, index: int) -> None:
    """What HQ needs to identify an item at all; without it the whole batch is refused."""
    if not txn.transaction_id or len(txn.transaction_id) > 128:
        raise InvalidField(
            f"transactions[{index}].transaction_id", "is required, at most 128 characters"
        )
    if txn.sequence_number < 1:
        raise InvalidField(f"transactions[{index}].sequence_number", "must be >= 1")


def _validate_content(txn: OfflineTransaction) -> None:
    # Field names are only formatted for an error: this runs for every line HQ applies.
    if txn.completed_at is None:
        raise InvalidField("completed_at", "is required")
    seen: set[str] = set()
    for i, line in enumerate(txn.redeem_lines):
        line_id = line.line_id
        if not line_id or len(line_id) > 128:
            raise InvalidField(f"redeem_lines[{i}].line_id", "is required, at most 128 characters")
        if line_id in seen:
            raise InvalidField(f"redeem_lines[{i}].line_id", "is repeated in the transaction")
        seen.add(line_id)
        if not is_valid_card_number(line.card_number):
            raise InvalidCardNumber(f"redeem_lines[{i}].card_number")
        amount = line.amount
        if (
            amount is None
            or not 0 < amount.amount_minor <= MAX_AMOUNT_MINOR
            or len(currency := amount.currency) != 3
            or not (currency.isascii() and currency.isalpha() and currency.isupper())
        ):
            # Anything short of plainly valid gets the full check and its exact error.
            positive_money(amount, f"redeem_lines[{i}].amount")
    for i, unlock in enumerate(txn.unlocks):
        if not is_valid_card_number(unlock.card_number):
            raise InvalidCardNumber(f"unlocks[{i}].card_number")
        if not unlock.transaction_id:
            raise InvalidField(f"unlocks[{i}].transaction_id", "is required")


def plan_offline_batch(
    *,
    terminal_id: str,
    transactions: list[OfflineTransaction],
    cards: Mapping[str, Card],
    known: Mapping[str, OfflineRecord],
    sequence_owners: Mapping[int, str],
    redemptions: Mapping[tuple[str, str, str], Redemption],
    parameters: Mapping[int, Parameters],
    now: datetime,
    new_card_number: Callable[[], str],
) -> OfflineBatchPlan:
    """Decide each transaction's outcome, in order, mutating `cards` (and later items see the
    earlier items' effects). `known` holds earlier deliveries by transaction id,
    `sequence_owners` which transaction already took a sequence number, `redemptions` the
    lines already applied (online or offline), `parameters` the versions the items name."""
    plan = OfflineBatchPlan()
    known = dict(known)
    owners = dict(sequence_owners)
    applied_lines = dict(redemptions)
    for txn in transactions:
        previous = known.get(txn.transaction_id)
        if previous is not None:
            if previous.fingerprint == txn.fingerprint:
                plan.results.append(previous.result.as_redelivery())
            else:
                plan.results.append(
                    _conflict(plan, terminal_id, txn, now, "this transaction_id was delivered "
                              "before with different content; the new content is kept for review")
                )
            continue
        owner = owners.get(txn.sequence_number)
        if owner is not None and owner != txn.transaction_id:
            plan.results.append(
                _conflict(plan, terminal_id, txn, now, f"sequence number {txn.sequence_number} "
                          f"was already used by transaction {owner!r}")
            )
            continue
        try:
            _validate_content(txn)
            validate_reversals(txn)
            _check_cards(txn, cards)
        except StoredValueError as error:
            result = _reject(plan, terminal_id, txn, now, error)
        else:
            result = _apply(plan, terminal_id, txn, cards, applied_lines, parameters, now,
                            new_card_number)
            if txn.reversals:
                result = apply_reversals(plan, terminal_id=terminal_id, txn=txn, cards=cards,
                                         lines=applied_lines, now=now, result=result)
        record = OfflineRecord(
            terminal_id=terminal_id,
            transaction_id=txn.transaction_id,
            sequence_number=txn.sequence_number,
            fingerprint=txn.fingerprint,
            result=result,
            received_at=now,
        )
        plan.records.append(record)
        plan.results.append(result)
        known[txn.transaction_id] = record
        owners[txn.sequence_number] = txn.transaction_id
    return plan


def _check_cards(txn: OfflineTransaction, cards: Mapping[str, Card]) -> None:
    # Only debits need a known card. An unlock of an unknown card releases nothing (a till
    # whose LockCard never reached HQ queues one), so it must not reject a real sale.
    missing = [line.card_number for line in txn.redeem_lines if line.card_number not in cards]
    if missing:
        raise CardNotFound(min(missing))
    for line in txn.redeem_lines:
        card = cards[line.card_number]
        assert line.amount is not None  # validated
        if line.amount.currency != card.currency:
            raise CurrencyMismatch(card.currency, line.amount.currency)


def _apply(
    plan: OfflineBatchPlan,
    terminal_id: str,
    txn: OfflineTransaction,
    cards: Mapping[str, Card],
    applied_lines: dict[tuple[str, str, str], Redemption],
    parameters: Mapping[int, Parameters],
    now: datetime,
    new_card_number: Callable[[], str],
) -> OfflineTransactionResult:
    assert txn.completed_at is not None  # validated
    applied_params = parameters.get(txn.parameters_version)
    line_results: list[OfflineLineResult] = []
    exception_ids: list[str] = []
    first_reason = ""

    def record(kind: OfflineExceptionKind, reason: str, line: OfflineRedeemLine, message: str
               ) -> str:
        exc = OfflineException(
            exception_id=new_exception_id(), kind=kind, terminal_id=terminal_id,
            transaction_id=txn.transaction_id, line_id=line.line_id,
            card_number=line.card_number, amount=line.amount, reason=reason, message=message,
            created_at=now,
        )
        plan.exceptions.append(exc)
        exception_ids.append(exc.exception_id)
        return reason

    for line in txn.redeem_lines:
        assert line.amount is not None  # validated
        card = cards[line.card_number]
        key = (terminal_id, txn.transaction_id, line.line_id)
        earlier = applied_lines.get(key)
        if earlier is not None:
            line_results.append(
                OfflineLineResult(
                    line_id=line.line_id,
                    outcome=OfflineLineOutcome.ALREADY_REDEEMED_ONLINE,
                    reason="ALREADY_REDEEMED_ONLINE",
                    balance_after=card.balance,
                    remainder_credit_memo_number=earlier.remainder_card_number,
                )
            )
            card.release_if_held(terminal_id=terminal_id, transaction_id=txn.transaction_id)
            continue
        reasons: list[str] = []
        if applied_params is None or not applied_params.offline_completion_allowed(card.kind):
            reasons.append(record(
                OfflineExceptionKind.OFFLINE_NOT_ALLOWED, "OFFLINE_NOT_ALLOWED", line,
                f"parameters version {txn.parameters_version} did not allow completing "
                f"{card.kind.value} sales offline; applied because the goods left the store",
            ))
        if line.fencing_token == 0:
            reasons.append(record(
                OfflineExceptionKind.LOCK_NOT_HELD, "LOCK_NOT_HELD", line,
                "the terminal completed the line offline without holding the card's lock",
            ))
        overdrawn, remainder = card.debit_offline(
            terminal_id=terminal_id, transaction_id=txn.transaction_id, line_id=line.line_id,
            amount_minor=line.amount.amount_minor, occurred_at=txn.completed_at, now=now,
        )
        if overdrawn:
            reasons.append(record(
                OfflineExceptionKind.OVERDRAFT, "OFFLINE_OVERDRAFT", line,
                f"offline debit of {line.amount} left the card at {card.balance}; "
                "the card is flagged",
            ))
        card.release_if_held(terminal_id=terminal_id, transaction_id=txn.transaction_id)
        remainder_number = ""
        if remainder > 0:
            memo = issue_card(
                card_number=new_card_number(), kind=CardKind.CREDIT_MEMO,
                value=Money(remainder, card.currency), terminal_id=terminal_id,
                transaction_id=txn.transaction_id, now=now, remainder_of=card,
                line_id=line.line_id, offline=True, occurred_at=txn.completed_at,
            )
            plan.new_cards.append(memo)
            remainder_number = memo.card_number
        redemption = Redemption(
            terminal_id=terminal_id, transaction_id=txn.transaction_id, line_id=line.line_id,
            card_number=card.card_number, amount_minor=line.amount.amount_minor,
            currency=card.currency, remainder_card_number=remainder_number, offline=True,
            recorded_at=now,
        )
        plan.redemptions.append(redemption)
        applied_lines[key] = redemption
        first_reason = first_reason or (reasons[0] if reasons else "")
        line_results.append(
            OfflineLineResult(
                line_id=line.line_id,
                outcome=(OfflineLineOutcome.APPLIED_WITH_EXCEPTION if reasons
                         else OfflineLineOutcome.APPLIED),
                reason=reasons[0] if reasons else "",
                balance_after=card.balance,
                remainder_credit_memo_number=remainder_number,
            )
        )
    for unlock in txn.unlocks:
        unlocked = cards.get(unlock.card_number)
        if unlocked is not None:
            unlocked.release_if_held(terminal_id=terminal_id, transaction_id=unlock.transaction_id)
    outcome = (OfflineOutcome.APPLIED_WITH_EXCEPTION if exception_ids
               else OfflineOutcome.APPLIED)
    return OfflineTransactionResult(
        transaction_id=txn.transaction_id, sequence_number=txn.sequence_number,
        outcome=outcome, original_outcome=outcome, reason=first_reason,
        message="" if not exception_ids else f"{len(exception_ids)} exception(s) recorded",
        line_results=tuple(line_results), exception_ids=tuple(exception_ids),
    )


def _reject(
    plan: OfflineBatchPlan, terminal_id: str, txn: OfflineTransaction, now: datetime,
    error: StoredValueError,
) -> OfflineTransactionResult:
    exc = _keep_for_review(plan, OfflineExceptionKind.REJECTED, terminal_id, txn, now,
                           error.reason, error.message)
    return OfflineTransactionResult(
        transaction_id=txn.transaction_id, sequence_number=txn.sequence_number,
        outcome=OfflineOutcome.REJECTED, original_outcome=OfflineOutcome.REJECTED,
        reason=error.reason, message=error.message,
        line_results=tuple(
            OfflineLineResult(line_id=line.line_id, outcome=OfflineLineOutcome.REJECTED,
                              reason=error.reason)
            for line in txn.redeem_lines
        ),
        exception_ids=(exc.exception_id,),
        reversal_results=rejected_reversals(txn, error.reason),
    )


def _conflict(
    plan: OfflineBatchPlan, terminal_id: str, txn: OfflineTransaction, now: datetime,
    message: str,
) -> OfflineTransactionResult:
    exc = _keep_for_review(plan, OfflineExceptionKind.CONFLICT, terminal_id, txn, now,
                           "TRANSACTION_CONFLICT", message)
    return OfflineTransactionResult(
        transaction_id=txn.transaction_id, sequence_number=txn.sequence_number,
        outcome=OfflineOutcome.REJECTED, original_outcome=OfflineOutcome.REJECTED,
        reason="TRANSACTION_CONFLICT", message=message,
        line_results=tuple(
            OfflineLineResult(line_id=line.line_id, outcome=OfflineLineOutcome.REJECTED,
                              reason="TRANSACTION_CONFLICT")
            for line in txn.redeem_lines
        ),
        exception_ids=(exc.exception_id,),
        reversal_results=rejected_reversals(txn, "TRANSACTION_CONFLICT"),
    )


def _keep_for_review(
    plan: OfflineBatchPlan, kind: OfflineExceptionKind, terminal_id: str,
    txn: OfflineTransaction, now: datetime, reason: str, message: str,
) -> OfflineException:
    exc = OfflineException(
        exception_id=new_exception_id(), kind=kind, terminal_id=terminal_id,
        transaction_id=txn.transaction_id, line_id="", card_number="", amount=None,
        reason=reason, message=message, created_at=now, transaction=txn,
    )
    plan.exceptions.append(exc)
    return exc


# The types are re-exported: callers import the whole offline vocabulary from here.
__all__ = [
    "OfflineBatchPlan",
    "OfflineException",
    "OfflineExceptionKind",
    "OfflineLineOutcome",
    "OfflineLineResult",
    "OfflineOutcome",
    "OfflineRecord",
    "OfflineRedeemLine",
    "OfflineReversal",
    "OfflineReversalResult",
    "OfflineTransaction",
    "OfflineTransactionResult",
    "OfflineUnlock",
    "Redemption",
    "ReversalOutcome",
    "new_exception_id",
    "plan_offline_batch",
    "validate_offline_envelope",
]
