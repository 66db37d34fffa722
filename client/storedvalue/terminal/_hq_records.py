"""What the library sends to HQ and keeps from its answers, as frozen values: the offline
transactions it queues (outbox payloads), HQ's debits and sync results. Their wire and
stored forms are built and read in ``_convert`` only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, overload

from ._model import (
    Card,
    CardKind,
    ConnectivityChange,
    LineState,
    Money,
    SyncOutcome,
    UnsyncedAmount,
)


@dataclass(frozen=True)
class OfflineLine:
    """A tender line completed offline: HQ debits it at sync."""

    line_id: str
    card_number: str
    card_kind: CardKind
    amount: Money
    fencing_token: int
    online_redeem_attempted: bool


@dataclass(frozen=True)
class QueuedUnlock:
    """A lock this terminal could not release online; HQ releases it at sync."""

    card_number: str
    transaction_id: str
    fencing_token: int
    """0 for a lock whose LockCard answer was lost: HQ releases by terminal and sale."""


@dataclass(frozen=True)
class QueuedReversal:
    """A line given up after its Redeem was sent: HQ credits it back or closes it at sync."""

    line_id: str
    card_number: str
    amount: Money
    fencing_token: int


@dataclass(frozen=True)
class OfflineSale:
    """One sale's offline transaction, as queued in the outbox (at most one per sale)."""

    transaction_id: str
    completed_at: datetime
    parameters_version: int
    redeem_lines: tuple[OfflineLine, ...] = ()
    unlocks: tuple[QueuedUnlock, ...] = ()
    reversals: tuple[QueuedReversal, ...] = ()
    last_reached_hq_at: datetime | None = None
    """When HQ last answered before the sale completed offline (HQ checks the offline
    duration limit against it)."""
    unsynced_amounts: tuple[UnsyncedAmount, ...] = ()
    """What the outbox held unsynced once this sale's lines were added (stamped by the
    outbox, which knows it)."""


@dataclass(frozen=True)
class OnlineDebit:
    """HQ's answer to a Redeem."""

    balance_after: Money
    remainder_credit_memo: Card | None
    stored: bytes
    """The answer as kept on disk with the line (read back by ``_convert``)."""


class LineSyncResult(NamedTuple):
    """What HQ did at sync with one offline line or one reversal (a tuple: a sync run reads
    thousands a second)."""

    line_id: str
    state: LineState
    """APPLIED_AT_SYNC or REJECTED_AT_SYNC for a line, REVERSED, NEVER_APPLIED or
    REJECTED_AT_SYNC for a reversal."""
    reason: str
    balance_after_minor: int | None
    """The card's balance right after, in the line's currency; None when HQ gave none."""
    remainder_credit_memo_number: str
    voided_credit_memo_number: str


class SyncItemResult(NamedTuple):
    """HQ's answer for one offline transaction (a tuple, as above)."""

    transaction_id: str
    sequence_number: int
    outcome: SyncOutcome | None
    """None for an outcome this library does not know (a newer HQ)."""
    first_outcome: SyncOutcome | None
    """The outcome of the first delivery (equal to ``outcome`` unless ALREADY_APPLIED)."""
    lines: tuple[LineSyncResult, ...]
    reversals: tuple[LineSyncResult, ...]
    noteworthy: bool
    """Anything but a clean application: kept as a sync report for a human."""
    stored: bytes
    """The whole answer as kept in a sync report (read back by ``_convert``); empty unless
    ``noteworthy`` (only those are kept)."""


class UsualResults(Sequence[SyncItemResult]):
    """A batch's answer when every result is the usual one (applied as sent, first delivery:
    one line applied, a balance, no reason, memo or reversal), as columns: the sync records
    them with no object made per transaction. Read as a sequence, it makes each result on
    demand (as the general path's ``SyncItemResult``)."""

    __slots__ = ("balances", "line_ids", "sequence_numbers", "transaction_ids")

    def __init__(self, transaction_ids: list[str], sequence_numbers: list[int],
                 line_ids: list[str], balances: list[int]) -> None:
        self.transaction_ids = transaction_ids
        self.sequence_numbers = sequence_numbers
        self.line_ids = line_ids
        self.balances = balances
        """Each line's card balance right after, in minor units of the line's currency."""

    def __len__(self) -> int:
        return len(self.transaction_ids)

    @overload
    def __getitem__(self, index: int) -> SyncItemResult: ...

    @overload
    def __getitem__(self, index: slice) -> UsualResults: ...

    def __getitem__(self, index: int | slice) -> SyncItemResult | UsualResults:
        if isinstance(index, slice):
            return UsualResults(self.transaction_ids[index], self.sequence_numbers[index],
                                self.line_ids[index], self.balances[index])
        return SyncItemResult(
            self.transaction_ids[index], self.sequence_numbers[index], SyncOutcome.APPLIED,
            SyncOutcome.APPLIED,
            (LineSyncResult(self.line_ids[index], LineState.APPLIED_AT_SYNC, "",
                            self.balances[index], "", ""),),
            (), False, b"")


@dataclass(frozen=True)
class StatusReport:
    """What the terminal tells HQ about itself (ReportTerminalStatus)."""

    reported_at: datetime
    link_history: tuple[ConnectivityChange, ...]
    outbox_transactions: int
    unsynced_amounts: tuple[UnsyncedAmount, ...]
    oldest_completed_at: datetime | None
    last_sequence_number: int
    parameters_version: int
    next_report_within: timedelta | None
    """None when the terminal does not report periodically."""
