"""How the fake HQ applies one offline transaction: exactly once, all or nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storedvalue.v1 import common_pb2, offline_pb2

if TYPE_CHECKING:
    from .fake_hq_state import HQState

opb = offline_pb2


def apply_offline_transaction(
    state: HQState, terminal: str, item: offline_pb2.OfflineTransaction
) -> offline_pb2.OfflineTransactionResult:
    key = (terminal, item.transaction_id)
    body = item.SerializeToString(deterministic=True)
    if key in state.offline:
        first_body, first = state.offline[key]
        if first_body == body:
            again = opb.OfflineTransactionResult()
            again.CopyFrom(first)
            again.outcome = opb.OFFLINE_OUTCOME_ALREADY_APPLIED
            return again
        return opb.OfflineTransactionResult(
            transaction_id=item.transaction_id,
            sequence_number=item.sequence_number,
            outcome=opb.OFFLINE_OUTCOME_REJECTED,
            original_outcome=opb.OFFLINE_OUTCOME_REJECTED,
            reason="TRANSACTION_CONFLICT",
        )
    state.sequences.setdefault(terminal, []).append(item.sequence_number)
    result = _apply(state, terminal, item)
    state.offline[key] = (body, result)
    return result


def _apply(
    state: HQState, terminal: str, item: offline_pb2.OfflineTransaction
) -> offline_pb2.OfflineTransactionResult:
    result = opb.OfflineTransactionResult(
        transaction_id=item.transaction_id,
        sequence_number=item.sequence_number,
        outcome=opb.OFFLINE_OUTCOME_APPLIED,
        original_outcome=opb.OFFLINE_OUTCOME_APPLIED,
    )
    # As the real HQ: any unknown card, in a redeem line or an unlock, rejects the whole
    # transaction.
    cards = [line.card_number for line in item.redeem_lines]
    cards += [unlock.card_number for unlock in item.unlocks]
    if any(number not in state.cards for number in cards):
        result.outcome = result.original_outcome = opb.OFFLINE_OUTCOME_REJECTED
        result.reason = "CARD_NOT_FOUND"
        for line in item.redeem_lines:
            result.line_results.add(line_id=line.line_id, outcome=opb.OFFLINE_LINE_OUTCOME_REJECTED)
        return result
    for line in item.redeem_lines:
        card = state.cards[line.card_number]
        line_result = result.line_results.add(line_id=line.line_id)
        if (terminal, item.transaction_id, line.line_id) in state.online_redeemed:
            line_result.outcome = opb.OFFLINE_LINE_OUTCOME_ALREADY_REDEEMED_ONLINE
            line_result.reason = "ALREADY_REDEEMED_ONLINE"
        else:
            card.balance -= line.amount.amount_minor
            line_result.outcome = opb.OFFLINE_LINE_OUTCOME_APPLIED
            if card.balance < 0:
                card.status = common_pb2.CARD_STATUS_FLAGGED
                line_result.outcome = opb.OFFLINE_LINE_OUTCOME_APPLIED_WITH_EXCEPTION
                line_result.reason = "OFFLINE_OVERDRAFT"
                flagged = opb.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION
                result.outcome = result.original_outcome = flagged
                result.reason = "OFFLINE_OVERDRAFT"
                result.exception_ids.append(f"exc-{item.transaction_id}-{line.line_id}")
        line_result.balance_after.amount_minor = card.balance
        line_result.balance_after.currency_code = card.currency
        _release(card, terminal, item.transaction_id)
    for unlock in item.unlocks:
        _release(state.cards[unlock.card_number], terminal, unlock.transaction_id)
    return result


def _release(card: object, terminal: str, transaction_id: str) -> None:
    lock = getattr(card, "lock", None)
    if lock is not None and (lock.terminal_id, lock.transaction_id) == (terminal, transaction_id):
        card.lock = None  # type: ignore[attr-defined]
