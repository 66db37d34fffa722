"""What the terminal library hands to a point-of-sale application: frozen values only."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Money:
    """An amount in minor units (cents for EUR) of an ISO 4217 currency. Never a float."""

    amount_minor: int
    currency_code: str

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise TypeError("amount_minor must be an int count of minor units")
        code = self.currency_code
        if len(code) != 3 or not code.isascii() or not code.isalpha() or not code.isupper():
            raise ValueError(f"currency_code must be an upper-case ISO 4217 code, got {code!r}")


class CardKind(enum.Enum):
    """Kind of stored-value instrument; each kind has its own offline permission."""

    GIFT_CARD = "GIFT_CARD"
    CREDIT_MEMO = "CREDIT_MEMO"


class CardStatus(enum.Enum):
    """Life-cycle status of a card at HQ."""

    ACTIVE = "ACTIVE"
    FLAGGED = "FLAGGED"
    REDEEMED = "REDEEMED"


@dataclass(frozen=True)
class Lock:
    """A terminal's exclusive claim on a card for one sale."""

    card_number: str
    terminal_id: str
    transaction_id: str
    fencing_token: int
    lease_expires_at: datetime | None
    acquired_at: datetime | None


@dataclass(frozen=True)
class Card:
    """A card as HQ reported it."""

    card_number: str
    kind: CardKind
    status: CardStatus
    balance: Money
    lock: Lock | None
    issued_at: datetime | None
    remainder_of_card_number: str


@dataclass(frozen=True)
class Tender:
    """A stored-value card added to an open sale: HQ locked it for this terminal."""

    transaction_id: str
    card_number: str
    kind: CardKind
    balance: Money
    """Balance HQ reported when the card was locked."""
    fencing_token: int
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class SaleLine:
    """One stored-value tender line of a sale to complete: debit ``amount`` from the card."""

    line_id: str
    """The POS's id for the line, unique within the sale; kept across retries."""
    card_number: str
    amount: Money


@dataclass(frozen=True)
class LineResult:
    """How one tender line was completed."""

    line_id: str
    card_number: str
    amount: Money
    completed_offline: bool
    online_redeem_attempted: bool
    """Offline lines only: an online Redeem was sent and its answer never came; HQ will not
    debit the card twice."""
    balance_after: Money | None
    """HQ's balance after an online debit; None when completed offline."""
    remainder_credit_memo: Card | None
    """The new credit memo holding a memo's remainder (online only; offline, it is reported
    at sync)."""


@dataclass(frozen=True)
class SaleResult:
    """A completed sale. ``completed_offline`` is what the receipt says."""

    transaction_id: str
    completed_offline: bool
    """True when at least one line was completed offline: print "completed offline"."""
    lines: tuple[LineResult, ...]
    sequence_number: int | None
    """The terminal's offline sequence number when completed offline, else None."""


@dataclass(frozen=True)
class Parameters:
    """The HQ parameters the terminal applies (the last version it received)."""

    version: int
    gift_card_offline_completion_allowed: bool
    credit_memo_offline_completion_allowed: bool
    lock_lease: timedelta
    updated_at: datetime | None

    def allows_offline(self, kind: CardKind) -> bool:
        if kind is CardKind.GIFT_CARD:
            return self.gift_card_offline_completion_allowed
        return self.credit_memo_offline_completion_allowed


NO_PARAMETERS = Parameters(
    version=0,
    gift_card_offline_completion_allowed=False,
    credit_memo_offline_completion_allowed=False,
    lock_lease=timedelta(0),
    updated_at=None,
)
"""What a terminal applies before it ever reached HQ: nothing may complete offline."""


@dataclass(frozen=True)
class SyncLimits:
    """Limits HQ enforces on offline sync."""

    max_transactions_per_batch: int
    max_lines_per_transaction: int
    max_message_bytes: int


class ConnectivityState(enum.Enum):
    """Whether the terminal currently talks to HQ."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


@dataclass(frozen=True)
class ConnectivityChange:
    """One switch of the connectivity state, as shown on the POS screen."""

    state: ConnectivityState
    previous: ConnectivityState
    cause: str
    at: datetime


@dataclass(frozen=True)
class OutboxEntry:
    """An offline transaction waiting on the terminal for sync."""

    sequence_number: int
    transaction_id: str
    completed_at: datetime
    redeem_line_count: int
    unlock_count: int


class SyncOutcome(enum.Enum):
    """What HQ did with one offline transaction. Every outcome means HQ took it durably."""

    APPLIED = "APPLIED"
    ALREADY_APPLIED = "ALREADY_APPLIED"
    APPLIED_WITH_EXCEPTION = "APPLIED_WITH_EXCEPTION"
    REJECTED = "REJECTED"


@dataclass(frozen=True)
class SyncReport:
    """A synced offline transaction worth a human's attention: an exception, a rejection or a
    remainder credit memo issued at sync. Kept on the terminal until dismissed."""

    sequence_number: int
    transaction_id: str
    outcome: SyncOutcome
    original_outcome: SyncOutcome
    reason: str
    message: str
    exception_ids: tuple[str, ...]
    remainder_credit_memo_numbers: tuple[str, ...]
    recorded_at: datetime


@dataclass(frozen=True)
class SyncProgress:
    """Progress of a sync run, reported after every acknowledged batch."""

    done: int
    total: int
    elapsed_s: float
    rate_per_s: float


@dataclass(frozen=True)
class SyncSummary:
    """What one sync run achieved."""

    sent: int
    applied: int
    already_applied: int
    applied_with_exception: int
    rejected: int
    remaining: int
    elapsed_s: float
    error: Exception | None
    """Why the run stopped early (None when the outbox was drained)."""
