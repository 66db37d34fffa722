"""Which lines may complete offline: pure rules, no I/O.

A line may complete offline only on a card this terminal locked for the sale before the link
dropped (HQ confirmed the lock, so no other till can spend it), of a kind HQ's parameters
allow offline, in the card's currency, within the balance seen when it was locked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._errors import OfflineRefusal
from ._model import Parameters, SaleLine, Tender


def offline_refusals(
    lines: Sequence[SaleLine],
    locks: Mapping[str, Tender | None],
    parameters: Parameters,
) -> tuple[OfflineRefusal, ...]:
    """The lines that may not complete offline, with why. ``locks`` maps each card the sale
    locked to HQ's answer, or to None when LockCard's answer was lost."""
    refusals = []
    for line in lines:
        why = _why_not(line, locks, parameters)
        if why:
            refusals.append(OfflineRefusal(line.line_id, line.card_number, why))
    return tuple(refusals)


def _why_not(line: SaleLine, locks: Mapping[str, Tender | None], parameters: Parameters) -> str:
    if line.card_number not in locks:
        return "NOT_LOCKED"
    held = locks[line.card_number]
    if held is None:
        # HQ may have refused the lock (another till holds the card, the card is flagged or
        # unknown): spending it offline could spend someone else's lock.
        return "LOCK_UNCONFIRMED"
    if not parameters.allows_offline(held.kind):
        return "KIND_NOT_ALLOWED"
    if line.amount.currency_code != held.balance.currency_code:
        return "CURRENCY_MISMATCH"
    if line.amount.amount_minor > held.balance.amount_minor:
        return "OVER_BALANCE"
    return ""
