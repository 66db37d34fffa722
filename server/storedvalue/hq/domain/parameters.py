"""HQ parameters, versioned: what terminals may do offline, how much they may take offline
(the offline risk limits), and how long a lock lasts; global, with per-store overrides.

Every change, of the global parameters or of one store's override, gets the next version
number of one sequence and is kept (a `ParameterSet`: the values of one scope as of that
version). What a terminal applies (`Parameters`) is the global set with its store's override
on top; its version is that of the latest change among the two, so HQ can rebuild exactly
what a terminal applied from the version it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.money import Money, positive_money

# The lease trades availability against risk (README: "Lock lease"). Hours, not seconds: a
# till that lost HQ has that long to sync before another till may take the card.
DEFAULT_LOCK_LEASE = timedelta(hours=4)
MIN_LOCK_LEASE = timedelta(minutes=1)
MAX_LOCK_LEASE = timedelta(days=7)
MIN_OFFLINE_DURATION = timedelta(minutes=1)
MAX_OFFLINE_DURATION = timedelta(days=31)

T = TypeVar("T")

GLOBAL = ""
"""The scope of the global parameters (a store id names a store's override)."""
_STORE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate_store_id(store_id: str, field: str = "store_id") -> str:
    if _STORE_ID.fullmatch(store_id) is None:
        if not store_id:
            raise InvalidField(field, "is required")
        raise InvalidField(field, "must be 1-64 letters, digits, '-', '_' or '.'")
    return store_id


@dataclass(frozen=True, slots=True)
class OfflineRiskLimits:
    """How much of one tender kind a terminal may take offline. None: no limit set (in the
    global parameters, unlimited; in a store's override, the global value)."""

    max_line_amount: Money | None = None
    max_unsynced_amount: Money | None = None
    max_offline_duration: timedelta | None = None

    def over(self, base: OfflineRiskLimits) -> OfflineRiskLimits:
        """These limits where set, `base`'s elsewhere."""
        return OfflineRiskLimits(
            max_line_amount=_first(self.max_line_amount, base.max_line_amount),
            max_unsynced_amount=_first(self.max_unsynced_amount, base.max_unsynced_amount),
            max_offline_duration=_first(self.max_offline_duration, base.max_offline_duration),
        )

    def validate(self, field: str) -> OfflineRiskLimits:
        for name in ("max_line_amount", "max_unsynced_amount"):
            amount = getattr(self, name)
            if amount is not None:
                positive_money(amount, f"{field}.{name}")
        duration = self.max_offline_duration
        if duration is not None and not MIN_OFFLINE_DURATION <= duration <= MAX_OFFLINE_DURATION:
            raise InvalidField(f"{field}.max_offline_duration",
                               "must be between 1 minute and 31 days")
        return self


NO_LIMITS = OfflineRiskLimits()
_LIMITS = ("max_line_amount", "max_unsynced_amount", "max_offline_duration")
_KIND_LIMITS = {
    CardKind.GIFT_CARD: "gift_card_offline_limits",
    CardKind.CREDIT_MEMO: "credit_memo_offline_limits",
}


@dataclass(frozen=True, slots=True)
class Parameters:
    """The parameters a terminal applies: the global ones with its store's override on top."""

    version: int
    gift_card_offline_completion_allowed: bool
    credit_memo_offline_completion_allowed: bool
    lock_lease: timedelta
    updated_at: datetime
    updated_by: str
    gift_card_offline_limits: OfflineRiskLimits = NO_LIMITS
    credit_memo_offline_limits: OfflineRiskLimits = NO_LIMITS
    store_id: str = GLOBAL

    def offline_completion_allowed(self, kind: CardKind) -> bool:
        if kind is CardKind.GIFT_CARD:
            return self.gift_card_offline_completion_allowed
        return self.credit_memo_offline_completion_allowed

    def offline_limits(self, kind: CardKind) -> OfflineRiskLimits:
        if kind is CardKind.GIFT_CARD:
            return self.gift_card_offline_limits
        return self.credit_memo_offline_limits


@dataclass(frozen=True, slots=True)
class ParameterValues:
    """The values one scope sets. The global set has every flag and the lease; a store's
    override only what it overrides (None: the global value)."""

    gift_card_offline_completion_allowed: bool | None = None
    credit_memo_offline_completion_allowed: bool | None = None
    lock_lease: timedelta | None = None
    gift_card_offline_limits: OfflineRiskLimits = NO_LIMITS
    credit_memo_offline_limits: OfflineRiskLimits = NO_LIMITS

    @property
    def empty(self) -> bool:
        return self == NO_VALUES


NO_VALUES = ParameterValues()


@dataclass(frozen=True, slots=True)
class ParameterSet:
    """The values of one scope (GLOBAL or a store id) as one change left them."""

    version: int
    store_id: str
    values: ParameterValues
    changed_at: datetime
    changed_by: str


@dataclass(frozen=True, slots=True)
class ParametersChangeRecord:
    """One change as the back office reads it: who, when, which scope, before and after."""

    version: int
    store_id: str
    changed_at: datetime
    changed_by: str
    old_values: ParameterValues
    new_values: ParameterValues


def initial_parameters(now: datetime) -> Parameters:
    """Version 1, made when HQ first starts: offline completion off until HQ opts in, no
    offline limit."""
    return effective(initial_set(now), None)


def initial_set(now: datetime) -> ParameterSet:
    return ParameterSet(
        version=1,
        store_id=GLOBAL,
        values=ParameterValues(
            gift_card_offline_completion_allowed=False,
            credit_memo_offline_completion_allowed=False,
            lock_lease=DEFAULT_LOCK_LEASE,
        ),
        changed_at=now,
        changed_by="system",
    )


def effective(global_set: ParameterSet, override: ParameterSet | None,
              store_id: str = GLOBAL) -> Parameters:
    """What the terminals of `store_id` apply: `global_set` with `override` (that store's
    latest override, if any) on top. Its version and author are those of the later change."""
    top = global_set
    values = global_set.values
    if override is not None:
        ours = override.values
        values = ParameterValues(
            gift_card_offline_completion_allowed=_first(
                ours.gift_card_offline_completion_allowed,
                values.gift_card_offline_completion_allowed),
            credit_memo_offline_completion_allowed=_first(
                ours.credit_memo_offline_completion_allowed,
                values.credit_memo_offline_completion_allowed),
            lock_lease=_first(ours.lock_lease, values.lock_lease),
            gift_card_offline_limits=ours.gift_card_offline_limits.over(
                values.gift_card_offline_limits),
            credit_memo_offline_limits=ours.credit_memo_offline_limits.over(
                values.credit_memo_offline_limits),
        )
        if override.version > global_set.version:
            top = override
    return Parameters(
        version=top.version,
        gift_card_offline_completion_allowed=bool(values.gift_card_offline_completion_allowed),
        credit_memo_offline_completion_allowed=bool(
            values.credit_memo_offline_completion_allowed),
        lock_lease=values.lock_lease or DEFAULT_LOCK_LEASE,
        updated_at=top.changed_at,
        updated_by=top.changed_by,
        gift_card_offline_limits=values.gift_card_offline_limits,
        credit_memo_offline_limits=values.credit_memo_offline_limits,
        store_id=store_id,
    )


@dataclass(frozen=True, slots=True)
class ParametersChange:
    """What a back-office user asks to change: None (and limits left unset) keeps the current
    value; `cleared` names values to clear ("gift_card_offline_limits.max_line_amount", ...;
    for a store also the flags, "lock_lease", or "*" for the whole override)."""

    gift_card_offline_completion_allowed: bool | None = None
    credit_memo_offline_completion_allowed: bool | None = None
    lock_lease: timedelta | None = None
    gift_card_offline_limits: OfflineRiskLimits = NO_LIMITS
    credit_memo_offline_limits: OfflineRiskLimits = NO_LIMITS
    cleared: tuple[str, ...] = ()

    def applied(self, current: ParameterValues, *, store: bool) -> ParameterValues:
        """`current` (the scope's values) with this change; raises InvalidField for a value
        out of range, a name that cannot be cleared in this scope, or one set and cleared."""
        self._validate(store=store)
        values = current
        if "*" in self.cleared:
            values = NO_VALUES
        for name in self.cleared:
            if name == "*":
                continue
            group, _, limit = name.partition(".")
            if limit:
                limits = getattr(values, group)
                values = replace(values, **{group: replace(limits, **{limit: None})})
            else:
                unset: dict[str, Any] = {name: None}
                values = replace(values, **unset)
        for name in ("gift_card_offline_completion_allowed",
                     "credit_memo_offline_completion_allowed", "lock_lease"):
            new = getattr(self, name)
            if new is not None:
                values = replace(values, **{name: new})
        for group in _KIND_LIMITS.values():
            values = replace(values, **{group: getattr(self, group).over(getattr(values, group))})
        return values

    def _validate(self, *, store: bool) -> None:
        lease = self.lock_lease
        if lease is not None and not MIN_LOCK_LEASE <= lease <= MAX_LOCK_LEASE:
            raise InvalidField("lock_lease", "must be between 1 minute and 7 days")
        for group in _KIND_LIMITS.values():
            getattr(self, group).validate(group)
        clearable = _CLEARABLE_IN_STORE if store else _CLEARABLE_GLOBALLY
        for index, name in enumerate(self.cleared):
            field = f"clear_fields[{index}]"
            if name not in clearable:
                raise InvalidField(field, f"{name[:80]!r} cannot be cleared here; one of: "
                                          + ", ".join(sorted(clearable)))
            if self._sets(name):
                raise InvalidField(field, f"{name!r} is both set and cleared")

    def _sets(self, name: str) -> bool:
        if name == "*":
            return False
        group, _, limit = name.partition(".")
        if limit:
            return getattr(getattr(self, group), limit) is not None
        return getattr(self, name) is not None


_CLEARABLE_GLOBALLY = frozenset(
    f"{group}.{limit}" for group in _KIND_LIMITS.values() for limit in _LIMITS
)
_CLEARABLE_IN_STORE = _CLEARABLE_GLOBALLY | {
    "gift_card_offline_completion_allowed", "credit_memo_offline_completion_allowed",
    "lock_lease", "*",
}


def _first(value: T | None, fallback: T | None) -> T | None:
    return fallback if value is None else value
