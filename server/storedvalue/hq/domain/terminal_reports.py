"""What a terminal reports of itself when it reaches HQ (its link history, what its outbox
still holds), and how the back office reads it: online or offline, since when, how much
unsynced. Pure rules, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.money import positive_money
from storedvalue.hq.domain.offline_transactions import UnsyncedAmount

MAX_LINK_CHANGES = 100
MAX_CAUSE_LENGTH = 200
DEFAULT_NEXT_REPORT_WITHIN = timedelta(minutes=5)
MAX_NEXT_REPORT_WITHIN = timedelta(days=1)


class LinkState(enum.Enum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


@dataclass(frozen=True, slots=True)
class LinkChange:
    state: LinkState
    changed_at: datetime  # terminal clock
    cause: str


@dataclass(frozen=True, slots=True)
class TerminalReport:
    """One report as the terminal sent it; HQ keeps the newest per terminal."""

    reported_at: datetime  # terminal clock
    link_history: tuple[LinkChange, ...]
    outbox_transactions: int
    unsynced_amounts: tuple[UnsyncedAmount, ...]
    oldest_completed_at: datetime | None
    last_sequence_number: int
    parameters_version: int
    next_report_within: timedelta

    def validate(self) -> TerminalReport:
        if len(self.link_history) > MAX_LINK_CHANGES:
            raise InvalidField("report.link_history", f"has more than {MAX_LINK_CHANGES} "
                                                      "entries")
        for index, change in enumerate(self.link_history):
            if len(change.cause) > MAX_CAUSE_LENGTH or not change.cause.isprintable():
                raise InvalidField(f"report.link_history[{index}].cause",
                                   f"must be at most {MAX_CAUSE_LENGTH} printable characters")
        for index, held in enumerate(self.unsynced_amounts):
            field = f"report.outbox.unsynced_amounts[{index}]"
            if held.card_kind is None:
                raise InvalidField(f"{field}.card_kind", "is required")
            positive_money(held.amount, f"{field}.amount")
            if held.line_count < 1:
                raise InvalidField(f"{field}.line_count", "must be at least 1")
        for name in ("outbox_transactions", "last_sequence_number", "parameters_version"):
            if getattr(self, name) < 0:
                raise InvalidField(f"report.{name}", "must not be negative")
        if not timedelta(0) < self.next_report_within <= MAX_NEXT_REPORT_WITHIN:
            raise InvalidField("report.next_report_within", "must be positive, at most 1 day")
        return self


@dataclass(frozen=True, slots=True)
class ReceivedReport:
    """A report with when HQ received it (HQ clock)."""

    report: TerminalReport
    received_at: datetime


@dataclass(frozen=True, slots=True)
class TerminalLink:
    """A terminal's link as HQ judges it now; `since` on HQ's clock."""

    state: LinkState | None  # None: the terminal never reported
    since: datetime | None


NEVER_REPORTED = TerminalLink(state=None, since=None)


def link_now(received: ReceivedReport | None, now: datetime) -> TerminalLink:
    """ONLINE since the terminal last switched online when its latest report is fresh (HQ
    heard from it within the time it promised its next report); else OFFLINE since HQ last
    heard from it. The terminal's times are moved onto HQ's clock by the difference its
    report showed (its clock at sending against HQ's at receiving)."""
    if received is None:
        return NEVER_REPORTED
    report = received.report
    if now > received.received_at + report.next_report_within:
        return TerminalLink(state=LinkState.OFFLINE, since=received.received_at)
    skew = received.received_at - report.reported_at
    online_since = next(
        (change.changed_at + skew for change in reversed(report.link_history)
         if change.state is LinkState.ONLINE),
        received.received_at,
    )
    return TerminalLink(state=LinkState.ONLINE, since=min(online_since, received.received_at))
