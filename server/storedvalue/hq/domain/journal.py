"""The append-only journal: every movement of value on a card."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

from storedvalue.hq.domain.value_objects import value_object


class JournalEntryKind(enum.Enum):
    ISSUE = "ISSUE"
    ADD_VALUE = "ADD_VALUE"
    REDEEM = "REDEEM"
    REMAINDER_OUT = "REMAINDER_OUT"
    REMAINDER_IN = "REMAINDER_IN"
    FORCED_UNLOCK = "FORCED_UNLOCK"  # amount zero; `note` holds the back office's reason
    REVERSAL = "REVERSAL"  # a reversed line's debit (and voided remainder) moved back


@value_object
class JournalEntry:
    card_number: str
    kind: JournalEntryKind
    amount_minor: int  # signed: positive credits the card, negative debits it
    currency: str
    balance_after_minor: int
    terminal_id: str
    transaction_id: str
    line_id: str
    offline: bool
    occurred_at: datetime
    recorded_at: datetime
    entry_id: int = 0  # assigned by storage
    note: str = ""


def journal_balance(entries: Iterable[JournalEntry]) -> int:
    """Conservation: a card's balance is the sum of its journal, issued + added - redeemed."""
    return sum(entry.amount_minor for entry in entries)
