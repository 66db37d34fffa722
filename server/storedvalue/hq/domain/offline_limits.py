"""HQ's second check of the offline risk limits, at sync: pure rules, no I/O.

The terminal enforced them while offline; HQ checks the transaction again against the limits
of the parameters version the terminal applied (its store's, at that version). A line past a
limit is still applied (the goods left the store): each breach becomes an exception of kind
OFFLINE_LIMIT_EXCEEDED, its reason naming the limit, its message saying by how much.

What HQ cannot see itself, it takes from the transaction: when the terminal last reached HQ,
and what it held unsynced when it completed the sale. It never counts less than the
transaction's own lines.
"""

from __future__ import annotations

from collections.abc import Callable

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.errors import Reason
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline_transactions import OfflineRedeemLine, OfflineTransaction
from storedvalue.hq.domain.parameters import Parameters
from storedvalue.hq.domain.value_objects import value_object

LINE_LIMIT = Reason.OFFLINE_LINE_LIMIT_EXCEEDED
UNSYNCED_LIMIT = Reason.OFFLINE_UNSYNCED_LIMIT_EXCEEDED
DURATION_LIMIT = Reason.OFFLINE_DURATION_EXCEEDED


@value_object
class LimitBreach:
    line_id: str
    reason: str
    message: str


def offline_limit_breaches(
    txn: OfflineTransaction,
    lines: list[OfflineRedeemLine],
    kind_of: Callable[[OfflineRedeemLine], CardKind],
    parameters: Parameters,
) -> list[LimitBreach]:
    """The breaches of `lines` (those of `txn` HQ applies now, validated: amounts set and
    the completion time known), in line order; `kind_of` gives each line's kind as HQ knows
    its card."""
    assert txn.completed_at is not None  # validated
    breaches: list[LimitBreach] = []
    # The totals are kept by (kind's name, currency): a kind is a member of one enum, so its
    # name tells it, and hashing a str is a C call where hashing an Enum member runs Python
    # (Enum.__hash__), eight times a transaction here.
    own: dict[tuple[str, str], int] = {}
    for line in lines:
        assert line.amount is not None  # validated
        key = (kind_of(line)._name_, line.amount.currency)
        own[key] = own.get(key, 0) + line.amount.amount_minor
    declared: dict[tuple[str, str], int] = {}
    for held in txn.unsynced_amounts:
        if held.card_kind is not None and held.amount is not None:
            key = (held.card_kind._name_, held.amount.currency)
            declared[key] = declared.get(key, 0) + held.amount.amount_minor
    # What the terminal held before this sale's lines: its word for the total, never less
    # than the lines themselves.
    running = {key: max(declared.get(key, 0) - amount, 0) for key, amount in own.items()}
    for line in lines:
        assert line.amount is not None
        kind = kind_of(line)
        limits = parameters.offline_limits(kind)
        amount = line.amount
        longest = limits.max_offline_duration
        reached = txn.last_reached_hq_at
        if longest is not None and reached is not None and txn.completed_at - reached > longest:
            breaches.append(LimitBreach(
                line.line_id, DURATION_LIMIT,
                f"{_described(kind, amount)} completed {txn.completed_at - reached} after the "
                f"terminal last reached HQ; parameters version {parameters.version} allowed "
                f"{longest}",
            ))
        largest = limits.max_line_amount
        if largest is not None and (
            amount.currency != largest.currency or amount.amount_minor > largest.amount_minor
        ):
            breaches.append(LimitBreach(
                line.line_id, LINE_LIMIT,
                f"{_described(kind, amount)}; parameters version {parameters.version} allowed "
                f"at most {largest} per offline line",
            ))
        key = (kind._name_, amount.currency)
        running[key] = running.get(key, 0) + amount.amount_minor
        most = limits.max_unsynced_amount
        if most is not None and (
            amount.currency != most.currency or running[key] > most.amount_minor
        ):
            breaches.append(LimitBreach(
                line.line_id, UNSYNCED_LIMIT,
                f"{_described(kind, amount)} brought the terminal's unsynced offline "
                f"{amount.currency} to {running[key]} minor units; parameters version "
                f"{parameters.version} allowed at most {most}",
            ))
    return breaches


def _described(kind: CardKind, amount: Money) -> str:
    """How a breach's message names the line (written only for a breach: most lines have
    none, and the text costs more than the checks)."""
    return f"{kind.value.lower().replace('_', ' ')} line of {amount}"
