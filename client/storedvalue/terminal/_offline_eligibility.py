"""Which lines may complete offline: pure rules, no I/O.

A line may complete offline only on a card this terminal locked for the sale before the link
dropped (HQ confirmed the lock, so no other till can spend it), of a kind HQ's parameters
allow offline, in the card's currency, within the balance seen when it was locked, and within
the offline risk limits of its kind: the largest offline line, the most the terminal may hold
unsynced (what its outbox holds plus this sale's earlier lines), and the longest time since
the terminal last reached HQ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from ._errors import OfflineRefusal
from ._model import CardKind, Money, OfflineRiskLimits, Parameters, SaleLine, Tender

Unsynced = Mapping[tuple[CardKind, str], int]
"""What the outbox holds unsynced, in minor units, by (tender kind, currency)."""


def offline_refusals(
    lines: Sequence[SaleLine],
    locks: Mapping[str, Tender | None],
    parameters: Parameters,
    *,
    unsynced: Unsynced,
    last_reached_hq_at: datetime | None,
    now: datetime,
) -> tuple[OfflineRefusal, ...]:
    """The lines that may not complete offline, with why. ``locks`` maps each card the sale
    locked to HQ's answer, or to None when LockCard's answer was lost; ``unsynced`` is what
    the outbox holds before this sale; ``last_reached_hq_at`` when HQ last answered (None if
    the terminal does not know)."""
    refusals = []
    taken: dict[tuple[CardKind, str], int] = {}  # this sale's earlier lines, per kind
    for line in lines:
        refusal = _structural(line, locks, parameters)
        if refusal is None:
            held = locks[line.card_number]
            assert held is not None  # a structurally eligible line has a confirmed lock
            refusal = _over_limits(
                line, held.kind, parameters.offline_limits(held.kind), unsynced, taken,
                last_reached_hq_at, now,
            )
        if refusal is not None:
            refusals.append(refusal)
    return tuple(refusals)


def _structural(line: SaleLine, locks: Mapping[str, Tender | None], parameters: Parameters
                ) -> OfflineRefusal | None:
    why = ""
    held = locks.get(line.card_number)
    if line.card_number not in locks:
        why = "NOT_LOCKED"
    elif held is None:
        # HQ may have refused the lock (another till holds the card, the card is flagged or
        # unknown): spending it offline could spend someone else's lock.
        why = "LOCK_UNCONFIRMED"
    elif not parameters.allows_offline(held.kind):
        why = "KIND_NOT_ALLOWED"
    elif line.amount.currency_code != held.balance.currency_code:
        why = "CURRENCY_MISMATCH"
    elif line.amount.amount_minor > held.balance.amount_minor:
        why = "OVER_BALANCE"
    return OfflineRefusal(line.line_id, line.card_number, why) if why else None


def _over_limits(
    line: SaleLine,
    kind: CardKind,
    limits: OfflineRiskLimits,
    unsynced: Unsynced,
    taken: dict[tuple[CardKind, str], int],
    last_reached_hq_at: datetime | None,
    now: datetime,
) -> OfflineRefusal | None:
    """The first limit the line is over, in the order a cashier can do least about: time
    offline, then the line's own amount, then the total unsynced. A line within every limit
    counts towards the total for the sale's next lines."""
    amount = line.amount
    longest = limits.max_offline_duration
    if longest is not None and (
        last_reached_hq_at is None or now - last_reached_hq_at > longest
    ):
        return OfflineRefusal(line.line_id, line.card_number, "OFFLINE_DURATION_EXCEEDED",
                              time_left=timedelta(0))
    largest = limits.max_line_amount
    if largest is not None and (
        amount.currency_code != largest.currency_code
        or amount.amount_minor > largest.amount_minor
    ):
        return OfflineRefusal(line.line_id, line.card_number, "OFFLINE_LINE_LIMIT_EXCEEDED",
                              amount_left=_left(largest, amount, largest.amount_minor))
    key = (kind, amount.currency_code)
    most = limits.max_unsynced_amount
    if most is not None:
        held = unsynced.get(key, 0) + taken.get(key, 0)
        if amount.currency_code != most.currency_code or (
            held + amount.amount_minor > most.amount_minor
        ):
            return OfflineRefusal(line.line_id, line.card_number,
                                  "OFFLINE_UNSYNCED_LIMIT_EXCEEDED",
                                  amount_left=_left(most, amount, most.amount_minor - held))
    taken[key] = taken.get(key, 0) + amount.amount_minor
    return None


def _left(limit: Money, amount: Money, left_minor: int) -> Money:
    """What the limit still allows: nothing for a line in another currency."""
    if amount.currency_code != limit.currency_code:
        return Money(0, limit.currency_code)
    return Money(max(left_minor, 0), limit.currency_code)
