"""Offline transactions and the rules for applying them exactly once.

`plan_offline_batch` is pure: given what the database holds, it decides every item's outcome
and mutates the loaded cards in memory. Items are validated completely before any card is
touched, so each item is all-or-nothing even when a batch shares one database transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from storedvalue.hq.domain.cards import Card, CardKind, issue_card
from storedvalue.hq.domain.client_text import is_valid_id
from storedvalue.hq.domain.errors import Reason, StoredValueError
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline_checks import (
    DEFAULT_ITEM_LIMITS,
    ItemLimits,
    UnknownCardBudget,
    check_balances,
    check_cards,
    envelope_error,
    validate_content,
)
from storedvalue.hq.domain.offline_limits import LimitBreach, offline_limit_breaches
from storedvalue.hq.domain.offline_locks import LockGrant, why_offline_line_is_untrusted
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

_NO_GRANTS: Mapping[str, list[LockGrant]] = {}


def plan_offline_batch(
    *,
    terminal_id: str,
    transactions: list[OfflineTransaction],
    cards: Mapping[str, Card],
    known: Mapping[str, OfflineRecord],
    sequence_owners: Mapping[int, str],
    redemptions: Mapping[tuple[str, str, str], Redemption],
    parameters: Mapping[int, Parameters],
    lock_grants: Iterable[LockGrant],
    highest_sequence_seen: int,
    unknown_card_budget: int,
    now: datetime,
    new_card_number: Callable[[], str],
    limits: ItemLimits = DEFAULT_ITEM_LIMITS,
) -> OfflineBatchPlan:
    """Decide each transaction's outcome, in order, mutating `cards` (and later items see the
    earlier items' effects). `known` holds earlier deliveries by transaction id,
    `sequence_owners` which transaction already took a sequence number, `redemptions` the
    lines already applied (online or offline), `parameters` the versions the items name,
    `lock_grants` the locks this terminal got for the batch's sales (the lock history),
    `highest_sequence_seen` the terminal's highest sequence number so far, and
    `unknown_card_budget` how many answers about cards it did not lock it may still get,
    `limits` the documented limits on one item.
    A bad item is rejected (and kept for review) alone: it never fails the batch."""
    plan = OfflineBatchPlan()
    known = dict(known)
    owners = dict(sequence_owners)
    applied_lines = dict(redemptions)
    grants: dict[str, dict[str, list[LockGrant]]] = {}  # sale -> card -> its locks
    for grant in lock_grants:
        grants.setdefault(grant.transaction_id, {}).setdefault(grant.card_number, []).append(
            grant)
    budget = UnknownCardBudget(unknown_card_budget)
    highest_seen = highest_sequence_seen
    for txn in transactions:
        unusable = envelope_error(txn, highest_sequence_seen=highest_seen, limits=limits)
        if unusable is not None:
            # Neither its id nor its sequence number is taken: a resend is judged again.
            plan.results.append(_reject(plan, terminal_id, txn, now, unusable))
            continue
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
            validate_content(txn, limits)
            validate_reversals(txn)
            sale_grants = grants.get(txn.transaction_id, _NO_GRANTS)
            check_cards(txn, cards, sale_grants, budget)
            check_balances(txn, cards)
        except StoredValueError as error:
            result = _reject(plan, terminal_id, txn, now, error)
        else:
            result = _apply(plan, terminal_id, txn, cards, applied_lines, parameters,
                            sale_grants, grants, now, new_card_number)
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
        highest_seen = max(highest_seen, txn.sequence_number)
    plan.unknown_card_lookups = budget.spent
    return plan


def _apply(
    plan: OfflineBatchPlan,
    terminal_id: str,
    txn: OfflineTransaction,
    cards: Mapping[str, Card],
    applied_lines: dict[tuple[str, str, str], Redemption],
    parameters: Mapping[int, Parameters],
    sale_grants: Mapping[str, list[LockGrant]],
    grants: dict[str, dict[str, list[LockGrant]]],
    now: datetime,
    new_card_number: Callable[[], str],
) -> OfflineTransactionResult:
    """Apply a validated transaction. `sale_grants`: the locks this terminal got for this
    sale, by card; `grants`: the same for every sale of the batch, updated when a queued
    unlock releases one (a later item must see it released)."""
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

    breaches: dict[str, list[LimitBreach]] = {}
    if applied_params is not None:
        fresh = [line for line in txn.redeem_lines
                 if (terminal_id, txn.transaction_id, line.line_id) not in applied_lines]
        for breach in offline_limit_breaches(
            txn, fresh, lambda line: cards[line.card_number].kind, applied_params
        ):
            breaches.setdefault(breach.line_id, []).append(breach)
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
                    reason=Reason.ALREADY_REDEEMED_ONLINE,
                    balance_after=card.balance,
                    remainder_credit_memo_number=earlier.remainder_card_number,
                )
            )
            card.release_if_held(terminal_id=terminal_id, transaction_id=txn.transaction_id)
            continue
        reasons: list[str] = []
        if applied_params is None or not applied_params.offline_completion_allowed(card.kind):
            reasons.append(record(
                OfflineExceptionKind.OFFLINE_NOT_ALLOWED, Reason.OFFLINE_NOT_ALLOWED, line,
                f"parameters version {txn.parameters_version} did not allow completing "
                f"{card.kind.value} sales offline; applied because the goods left the store",
            ))
        for breach in breaches.get(line.line_id, ()):
            reasons.append(record(
                OfflineExceptionKind.OFFLINE_LIMIT_EXCEEDED, breach.reason, line,
                f"{breach.message}; applied because the goods left the store",
            ))
        untrusted = why_offline_line_is_untrusted(line.fencing_token,
                                                  sale_grants.get(line.card_number, ()))
        if untrusted is not None:
            reasons.append(record(
                OfflineExceptionKind.LOCK_NOT_HELD, Reason.LOCK_NOT_HELD, line,
                f"{untrusted}; applied because the goods left the store",
            ))
        overdrawn, remainder = card.debit_offline(
            terminal_id=terminal_id, transaction_id=txn.transaction_id, line_id=line.line_id,
            amount_minor=line.amount.amount_minor, occurred_at=txn.completed_at, now=now,
        )
        if overdrawn:
            reasons.append(record(
                OfflineExceptionKind.OVERDRAFT, Reason.OFFLINE_OVERDRAFT, line,
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
        held = unlocked.lock if unlocked is not None else None
        if unlocked is not None and held is not None and unlocked.release_if_held(
            terminal_id=terminal_id, transaction_id=unlock.transaction_id
        ):
            # The terminal released it itself: a later line under it is not trusted.
            plan.released_by_holder.append(held)
            sale = grants.get(unlock.transaction_id)
            if sale is not None and held.card_number in sale:
                sale[held.card_number] = [
                    grant.released_by_holder(now) if grant.fencing_token == held.fencing_token
                    else grant
                    for grant in sale[held.card_number]
                ]
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
                           Reason.TRANSACTION_CONFLICT, message)
    return OfflineTransactionResult(
        transaction_id=txn.transaction_id, sequence_number=txn.sequence_number,
        outcome=OfflineOutcome.REJECTED, original_outcome=OfflineOutcome.REJECTED,
        reason=Reason.TRANSACTION_CONFLICT, message=message,
        line_results=tuple(
            OfflineLineResult(line_id=line.line_id, outcome=OfflineLineOutcome.REJECTED,
                              reason=Reason.TRANSACTION_CONFLICT)
            for line in txn.redeem_lines
        ),
        exception_ids=(exc.exception_id,),
        reversal_results=rejected_reversals(txn, Reason.TRANSACTION_CONFLICT),
    )


def _keep_for_review(
    plan: OfflineBatchPlan, kind: OfflineExceptionKind, terminal_id: str,
    txn: OfflineTransaction, now: datetime, reason: str, message: str,
) -> OfflineException:
    # An id that is no valid id is not written where ids go (the kept transaction has it).
    txn_id = txn.transaction_id if is_valid_id(txn.transaction_id) else ""
    exc = OfflineException(
        exception_id=new_exception_id(), kind=kind, terminal_id=terminal_id,
        transaction_id=txn_id, line_id="", card_number="", amount=None,
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
]
