"""What an offline transaction must satisfy before any card is touched. Each check raises the
error the item is REJECTED with (and kept for review); none of them fails the batch.

The unknown-card limit reaches the offline path here: a line on a card its terminal did not
lock for the sale tells whether that card exists, so it spends the terminal's budget of such
answers, and once the budget is spent HQ does not look those cards up at all (every such
item gets the same RATE_LIMITED, whether its cards exist or not).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from storedvalue.hq.domain.cards import Card, is_valid_card_number
from storedvalue.hq.domain.client_text import MAX_ID_LENGTH, is_valid_id, validate_id
from storedvalue.hq.domain.errors import (
    CardNotFound,
    CurrencyMismatch,
    InvalidCardNumber,
    InvalidField,
    LimitExceeded,
    RateLimited,
    StoredValueError,
)
from storedvalue.hq.domain.moments import INVALID_TIMESTAMP
from storedvalue.hq.domain.money import (
    MAX_AMOUNT_MINOR,
    positive_money,
    require_balance_within_limit,
)
from storedvalue.hq.domain.offline_transactions import OfflineTransaction


@dataclass(frozen=True, slots=True)
class ItemLimits:
    """Documented limits on one offline transaction; past one, that item is rejected."""

    max_lines: int = 200
    """Redeem lines plus unlocks plus reversals."""
    max_sequence_jump: int = 10_000
    """How far a sequence number may run ahead of the highest HQ has received: one lost
    transaction leaves a gap, a number near 2**63 would leave one for good."""


DEFAULT_ITEM_LIMITS = ItemLimits()


@dataclass(slots=True)
class UnknownCardBudget:
    """How many more answers about cards it did not lock a terminal may get now."""

    remaining: int
    spent: int = 0

    def spend(self, lookups: int) -> None:
        self.remaining -= lookups
        self.spent += lookups


def envelope_error(txn: OfflineTransaction, *, highest_sequence_seen: int,
                   limits: ItemLimits) -> StoredValueError | None:
    """Why HQ cannot take the item under its id and sequence number at all (it is then kept
    for review without taking either), or None."""
    if not is_valid_id(txn.transaction_id):
        return InvalidField("transaction_id", f"is required: 1 to {MAX_ID_LENGTH} printable "
                                              "characters")
    if txn.sequence_number < 1:
        return InvalidField("sequence_number", "must be >= 1")
    if txn.sequence_number > highest_sequence_seen + limits.max_sequence_jump:
        return InvalidField(
            "sequence_number",
            f"is more than {limits.max_sequence_jump} past the highest sequence number "
            f"received from this terminal ({highest_sequence_seen})",
        )
    return None


def validate_content(txn: OfflineTransaction, limits: ItemLimits) -> None:
    # Field names are only formatted for an error: this runs for every line HQ applies.
    lines = len(txn.redeem_lines) + len(txn.unlocks) + len(txn.reversals)
    if lines > limits.max_lines:
        raise LimitExceeded("max_lines_per_transaction", limits.max_lines, lines)
    if txn.unreadable_fields:
        raise InvalidField(txn.unreadable_fields[0], INVALID_TIMESTAMP)
    if txn.completed_at is None:
        raise InvalidField("completed_at", "is required")
    seen: set[str] = set()
    for i, line in enumerate(txn.redeem_lines):
        line_id = line.line_id
        if not is_valid_id(line_id):
            validate_id(line_id, f"redeem_lines[{i}].line_id")
        if line_id in seen:
            raise InvalidField(f"redeem_lines[{i}].line_id", "is repeated in the transaction")
        seen.add(line_id)
        if not is_valid_card_number(line.card_number):
            raise InvalidCardNumber(f"redeem_lines[{i}].card_number", missing=not line.card_number)
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
            raise InvalidCardNumber(f"unlocks[{i}].card_number", missing=not unlock.card_number)
        validate_id(unlock.transaction_id, f"unlocks[{i}].transaction_id")


def check_cards(txn: OfflineTransaction, cards: Mapping[str, Card],
                locked_for_sale: Collection[str], budget: UnknownCardBudget) -> None:
    """Every debited card is known and in the line's currency. `locked_for_sale`: the cards
    this terminal locked for this sale, which it knows exist. An unlock of an unknown card
    releases nothing (a till whose LockCard never reached HQ queues one): it must not reject
    a real sale, and it tells nothing."""
    strangers = {line.card_number for line in txn.redeem_lines} - set(locked_for_sale)
    if strangers and budget.remaining <= 0:
        raise RateLimited()
    missing = sorted(number for number in strangers if number not in cards)
    if missing:
        budget.spend(len(missing))
        raise CardNotFound(missing[0])
    for line in txn.redeem_lines:
        card = cards[line.card_number]
        assert line.amount is not None  # validated
        if line.amount.currency != card.currency:
            if line.card_number in strangers:
                budget.spend(1)
            raise CurrencyMismatch(card.currency, line.amount.currency)


def check_balances(txn: OfflineTransaction, cards: Mapping[str, Card]) -> None:
    """No card would leave the documented balance range: debits only lower a balance, so the
    transaction's total per card is what to check."""
    if len(txn.redeem_lines) == 1:
        (line,) = txn.redeem_lines
        assert line.amount is not None  # validated
        require_balance_within_limit(cards[line.card_number].balance_minor
                                     - line.amount.amount_minor)
        return
    totals: dict[str, int] = {}
    for line in txn.redeem_lines:
        assert line.amount is not None  # validated
        totals[line.card_number] = totals.get(line.card_number, 0) + line.amount.amount_minor
    for number, total in totals.items():
        require_balance_within_limit(cards[number].balance_minor - total)
