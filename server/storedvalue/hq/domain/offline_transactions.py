"""What an offline transaction is, and what HQ made of it: the records of exactly-once sync.

Plain data; the rules that produce the results live in `storedvalue.hq.domain.offline`.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from storedvalue.hq.domain.cards import Card, CardKind, Lock
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.value_objects import value_object


@value_object
class OfflineRedeemLine:
    line_id: str
    card_number: str
    card_kind: CardKind | None
    amount: Money | None
    fencing_token: int = 0
    online_redeem_attempted: bool = False


@value_object
class OfflineUnlock:
    card_number: str
    transaction_id: str
    fencing_token: int = 0


@value_object
class OfflineReversal:
    """A tender line the terminal gives up although its Redeem may have reached HQ; the
    rules are in `storedvalue.hq.domain.reversals`."""

    line_id: str
    card_number: str
    amount: Money | None
    fencing_token: int = 0


@value_object
class UnsyncedAmount:
    """What a terminal held unsynced of offline lines of one kind in one currency."""

    card_kind: CardKind | None  # None: a kind this HQ does not know
    amount: Money | None
    line_count: int = 0


@value_object
class OfflineTransaction:
    transaction_id: str
    sequence_number: int
    completed_at: datetime | None
    parameters_version: int
    redeem_lines: tuple[OfflineRedeemLine, ...] = ()
    unlocks: tuple[OfflineUnlock, ...] = ()
    # Digest of the transaction's content as received; the same id with another digest is a
    # conflicting resend.
    fingerprint: bytes = b""
    reversals: tuple[OfflineReversal, ...] = ()
    # Fields that arrived but could not be read (a completion time outside the Timestamp
    # range): the transaction is rejected for them and kept for review.
    unreadable_fields: tuple[str, ...] = ()
    # What the terminal says it knew when it completed the sale, for the offline risk limits:
    # when HQ last answered it, and what it held unsynced (this sale included).
    last_reached_hq_at: datetime | None = None
    unsynced_amounts: tuple[UnsyncedAmount, ...] = ()


class OfflineOutcome(enum.Enum):
    APPLIED = "APPLIED"
    ALREADY_APPLIED = "ALREADY_APPLIED"
    APPLIED_WITH_EXCEPTION = "APPLIED_WITH_EXCEPTION"
    REJECTED = "REJECTED"


class OfflineLineOutcome(enum.Enum):
    APPLIED = "APPLIED"
    ALREADY_REDEEMED_ONLINE = "ALREADY_REDEEMED_ONLINE"
    APPLIED_WITH_EXCEPTION = "APPLIED_WITH_EXCEPTION"
    REJECTED = "REJECTED"


class ReversalOutcome(enum.Enum):
    REVERSED = "REVERSED"  # the line had been debited; credited back
    NEVER_APPLIED = "NEVER_APPLIED"  # the line had not been debited, and never will be
    REJECTED = "REJECTED"  # the whole transaction was rejected (results only, never stored)


class OfflineExceptionKind(enum.Enum):
    OVERDRAFT = "OVERDRAFT"
    OFFLINE_NOT_ALLOWED = "OFFLINE_NOT_ALLOWED"
    LOCK_NOT_HELD = "LOCK_NOT_HELD"
    REJECTED = "REJECTED"
    CONFLICT = "CONFLICT"
    REVERSAL = "REVERSAL"
    OFFLINE_LIMIT_EXCEEDED = "OFFLINE_LIMIT_EXCEEDED"


@value_object
class OfflineLineResult:
    line_id: str
    outcome: OfflineLineOutcome
    reason: str = ""
    balance_after: Money | None = None
    remainder_credit_memo_number: str = ""


@value_object
class OfflineReversalResult:
    line_id: str
    outcome: ReversalOutcome
    reason: str = ""
    balance_after: Money | None = None
    voided_credit_memo_number: str = ""
    remainder_credit_memo_number: str = ""


@value_object
class OfflineTransactionResult:
    transaction_id: str
    sequence_number: int
    outcome: OfflineOutcome
    original_outcome: OfflineOutcome
    reason: str = ""
    message: str = ""
    line_results: tuple[OfflineLineResult, ...] = ()
    exception_ids: tuple[str, ...] = ()
    reversal_results: tuple[OfflineReversalResult, ...] = ()

    def as_redelivery(self) -> OfflineTransactionResult:
        """What a resend of the same transaction gets: its first outcome, nothing new."""
        return OfflineTransactionResult(
            transaction_id=self.transaction_id,
            sequence_number=self.sequence_number,
            outcome=OfflineOutcome.ALREADY_APPLIED,
            original_outcome=self.original_outcome,
            reason=self.reason,
            message=self.message,
            line_results=self.line_results,
            exception_ids=self.exception_ids,
            reversal_results=self.reversal_results,
        )


def new_exception_id() -> str:
    return "exc_" + secrets.token_hex(10)


@dataclass(slots=True)
class OfflineException:
    exception_id: str
    kind: OfflineExceptionKind
    terminal_id: str
    transaction_id: str
    line_id: str
    card_number: str
    amount: Money | None
    reason: str
    message: str
    created_at: datetime
    resolved_at: datetime | None = None
    resolved_by: str = ""
    resolution: str = ""
    # For REJECTED and CONFLICT: the transaction as received, kept for review.
    transaction: OfflineTransaction | None = None

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


@value_object
class Redemption:
    """What HQ decided for one tender line, keyed by (terminal, transaction, line): the key
    that makes a line apply once. Normally a debit applied online or at sync; with
    `reversal` REVERSED that debit was credited back since, and with NEVER_APPLIED nothing
    was debited and the line is closed for good (a tombstone: `amount_minor` is what the
    reversal named, `offline` is True)."""

    terminal_id: str
    transaction_id: str
    line_id: str
    card_number: str
    amount_minor: int
    currency: str
    remainder_card_number: str
    offline: bool
    recorded_at: datetime
    reversal: ReversalOutcome | None = None
    reversed_at: datetime | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.terminal_id, self.transaction_id, self.line_id)


@value_object
class OfflineRecord:
    """An offline transaction HQ has taken (applied or kept as rejected), with its result."""

    terminal_id: str
    transaction_id: str
    sequence_number: int
    fingerprint: bytes
    result: OfflineTransactionResult
    received_at: datetime


@dataclass(slots=True)
class OfflineBatchPlan:
    """Everything applying a batch changes, for the service layer to persist at once."""

    results: list[OfflineTransactionResult] = field(default_factory=list)
    records: list[OfflineRecord] = field(default_factory=list)
    new_cards: list[Card] = field(default_factory=list)
    redemptions: list[Redemption] = field(default_factory=list)
    # Lines already stored whose debit a reversal credited back (their new state).
    reversed_redemptions: list[Redemption] = field(default_factory=list)
    exceptions: list[OfflineException] = field(default_factory=list)
    # Locks the terminal released itself (queued unlocks).
    released_by_holder: list[Lock] = field(default_factory=list)
    # Answers about cards the terminal did not lock: they spend its unknown-card limit.
    unknown_card_lookups: int = 0
