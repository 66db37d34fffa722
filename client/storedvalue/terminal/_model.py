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
    """A completed sale. ``completed_offline`` is what the receipt says.

    Calling ``complete_sale`` again with the same lines returns this same result."""

    transaction_id: str
    completed_offline: bool
    """True when at least one line was completed offline: print "completed offline"."""
    lines: tuple[LineResult, ...]
    """The lines paid by stored value, in the order asked, then any line HQ had already
    debited that the last call left out (the money moved: it stays part of the sale)."""
    sequence_number: int | None
    """The terminal's offline sequence number when something of the sale waits in the outbox
    (lines completed offline, reversals, locks to release), else None."""
    reversed_lines: tuple[SaleLine, ...] = ()
    """Lines left out whose Redeem was sent without an answer: HQ may have debited them, so
    each one's reversal is queued in the outbox (print "reversed" for them). HQ credits the
    card back if it had debited it, or makes sure it never will; ``Terminal.sale`` tells
    which once HQ answered."""


class SaleStatus(enum.Enum):
    """Where a sale stands on this terminal."""

    OPEN = "OPEN"
    """Cards added or lines tried; neither completed nor abandoned yet."""
    COMPLETED_ONLINE = "COMPLETED_ONLINE"
    """Every line debited online."""
    COMPLETED_OFFLINE = "COMPLETED_OFFLINE"
    """At least one line completed offline: in the outbox until synced."""
    ABANDONED = "ABANDONED"
    """Abandoned: its locks released and its lines that reached HQ reversed."""


class LineState(enum.Enum):
    """Where one stored-value line of a sale stands."""

    PENDING = "PENDING"
    """Given to ``complete_sale`` but never sent, or refused by HQ: nothing was debited."""
    ATTEMPTED = "ATTEMPTED"
    """Its Redeem was sent and no answer came: HQ may have debited it. Complete the sale with
    it (the same request id is resent, so HQ debits it at most once) or leave it out (it is
    then reversed)."""
    DEBITED = "DEBITED"
    """HQ debited it online."""
    QUEUED_OFFLINE = "QUEUED_OFFLINE"
    """Completed offline; in the outbox."""
    APPLIED_AT_SYNC = "APPLIED_AT_SYNC"
    """Completed offline and applied by HQ at sync (possibly with an exception, or recognised
    as already debited online)."""
    REJECTED_AT_SYNC = "REJECTED_AT_SYNC"
    """HQ rejected the offline transaction carrying it (or its reversal) and kept it for the
    back office; see ``hq_reason``."""
    REVERSAL_QUEUED = "REVERSAL_QUEUED"
    """Left out of the completed sale, or abandoned, after its Redeem was sent: its reversal
    is in the outbox."""
    REVERSED = "REVERSED"
    """HQ had debited it and credited it back."""
    NEVER_APPLIED = "NEVER_APPLIED"
    """HQ had not debited it and recorded that it never will."""

    @property
    def paid(self) -> bool:
        """The customer paid this line with the card (online, or offline and synced or not)."""
        return self in (LineState.DEBITED, LineState.QUEUED_OFFLINE, LineState.APPLIED_AT_SYNC)


@dataclass(frozen=True)
class LineStatus:
    """The durable state of one line of a sale (``Terminal.sale``)."""

    line_id: str
    card_number: str
    amount: Money
    state: LineState
    result: LineResult | None
    """The line's result for a paid line; None otherwise."""
    hq_reason: str = ""
    """HQ's reason at sync for an exception or a rejection (ErrorReason name), else empty."""
    balance_after: Money | None = None
    """The card's balance after an online debit or after a reversal credited it back."""
    remainder_credit_memo_number: str = ""
    """A remainder credit memo HQ reported at sync: issued for an offline line, or kept
    valid by a reversal (the customer's value is then split over the two memos)."""
    voided_credit_memo_number: str = ""
    """REVERSED credit memo line: the remainder memo HQ voided (its value went back)."""


@dataclass(frozen=True)
class SaleTender:
    """A card added to an open sale."""

    card_number: str
    tender: Tender | None
    """What HQ answered to LockCard; None while the lock is unconfirmed (its answer was
    lost): add the tender again to confirm it, or leave it to be released with the sale."""
    release_queued: bool
    """Removed while OFFLINE: its release reaches HQ when the link returns."""


@dataclass(frozen=True)
class Sale:
    """A sale as this terminal keeps it durably (``Terminal.sale``, ``Terminal.open_sales``):
    enough for a POS restarted after a crash to finish or abandon it."""

    transaction_id: str
    status: SaleStatus
    tenders: tuple[SaleTender, ...]
    """Cards added and not yet released (open sales only)."""
    lines: tuple[LineStatus, ...]
    """Lines asked for (open sales), or completed and reversed (finished sales)."""
    result: SaleResult | None
    """For a completed sale, what ``complete_sale`` returned (and returns again)."""
    sequence_number: int | None
    """The sale's offline transaction in the outbox, if it has one."""
    synced: bool
    """HQ acknowledged that offline transaction (True when there is none)."""


@dataclass(frozen=True)
class OfflineRiskLimits:
    """How much of one tender kind the terminal may take offline before HQ sees it. Each
    limit that is None is unlimited (the default)."""

    max_line_amount: Money | None = None
    """Largest amount one offline line may take (a line in another currency is refused)."""
    max_unsynced_amount: Money | None = None
    """Largest total of offline lines of this kind the outbox may hold unsynced, the new
    sale's lines included."""
    max_offline_duration: timedelta | None = None
    """Longest time since the terminal last reached HQ during which it may still complete
    sales of this kind offline."""


NO_LIMITS = OfflineRiskLimits()


@dataclass(frozen=True)
class Parameters:
    """The HQ parameters the terminal applies (the last version it received): the global
    parameters with its store's override on top."""

    version: int
    gift_card_offline_completion_allowed: bool
    credit_memo_offline_completion_allowed: bool
    lock_lease: timedelta
    updated_at: datetime | None
    gift_card_offline_limits: OfflineRiskLimits = NO_LIMITS
    credit_memo_offline_limits: OfflineRiskLimits = NO_LIMITS
    store_id: str = ""
    """The store these parameters are for ("" for none: the global parameters)."""

    def allows_offline(self, kind: CardKind) -> bool:
        if kind is CardKind.GIFT_CARD:
            return self.gift_card_offline_completion_allowed
        return self.credit_memo_offline_completion_allowed

    def offline_limits(self, kind: CardKind) -> OfflineRiskLimits:
        if kind is CardKind.GIFT_CARD:
            return self.gift_card_offline_limits
        return self.credit_memo_offline_limits


NO_PARAMETERS = Parameters(
    version=0,
    gift_card_offline_completion_allowed=False,
    credit_memo_offline_completion_allowed=False,
    lock_lease=timedelta(0),
    updated_at=None,
)
"""What a terminal applies before it ever reached HQ: nothing may complete offline."""


@dataclass(frozen=True)
class UnsyncedAmount:
    """What the outbox holds unsynced of offline lines of one tender kind in one currency:
    the terminal's exposure, what ``OfflineRiskLimits.max_unsynced_amount`` bounds."""

    card_kind: CardKind
    amount: Money
    line_count: int


@dataclass(frozen=True)
class SyncLimits:
    """Limits HQ enforces on offline sync."""

    max_transactions_per_batch: int
    max_lines_per_transaction: int
    max_message_bytes: int
    max_sequence_jump: int = 0
    """How far past the highest sequence number HQ received a transaction's may be (0: not
    told, as from an HQ that predates it)."""


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
    reversal_count: int = 0


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
