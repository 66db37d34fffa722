"""HQ parameters, versioned: what terminals may do offline, and how long a lock lasts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.errors import InvalidField

# The lease trades availability against risk (README: "Lock lease"). Hours, not seconds: a
# till that lost HQ has that long to sync before another till may take the card.
DEFAULT_LOCK_LEASE = timedelta(hours=4)
MIN_LOCK_LEASE = timedelta(minutes=1)
MAX_LOCK_LEASE = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class Parameters:
    version: int
    gift_card_offline_completion_allowed: bool
    credit_memo_offline_completion_allowed: bool
    lock_lease: timedelta
    updated_at: datetime
    updated_by: str

    def offline_completion_allowed(self, kind: CardKind) -> bool:
        if kind is CardKind.GIFT_CARD:
            return self.gift_card_offline_completion_allowed
        return self.credit_memo_offline_completion_allowed


def initial_parameters(now: datetime) -> Parameters:
    """Version 1, made when HQ first starts: offline completion off until HQ opts in."""
    return Parameters(
        version=1,
        gift_card_offline_completion_allowed=False,
        credit_memo_offline_completion_allowed=False,
        lock_lease=DEFAULT_LOCK_LEASE,
        updated_at=now,
        updated_by="system",
    )


@dataclass(frozen=True, slots=True)
class ParametersChange:
    """What a back-office user asks to change; None keeps the current value."""

    gift_card_offline_completion_allowed: bool | None = None
    credit_memo_offline_completion_allowed: bool | None = None
    lock_lease: timedelta | None = None

    def apply_to(self, current: Parameters, *, now: datetime, updated_by: str) -> Parameters:
        lease = current.lock_lease if self.lock_lease is None else self.lock_lease
        if not MIN_LOCK_LEASE <= lease <= MAX_LOCK_LEASE:
            raise InvalidField("lock_lease", "must be between 1 minute and 7 days")
        return Parameters(
            version=current.version + 1,
            gift_card_offline_completion_allowed=_pick(
                self.gift_card_offline_completion_allowed,
                current.gift_card_offline_completion_allowed,
            ),
            credit_memo_offline_completion_allowed=_pick(
                self.credit_memo_offline_completion_allowed,
                current.credit_memo_offline_completion_allowed,
            ),
            lock_lease=lease,
            updated_at=now,
            updated_by=updated_by,
        )


def _pick(new: bool | None, current: bool) -> bool:
    return current if new is None else new
