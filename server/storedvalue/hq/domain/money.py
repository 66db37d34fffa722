"""Money: integer minor units and an ISO 4217 code. Never a float."""

from __future__ import annotations

import re

from storedvalue.hq.domain.errors import InvalidAmount, InvalidField, LimitExceeded
from storedvalue.hq.domain.value_objects import value_object

_CURRENCY = re.compile(r"[A-Z]{3}")
# Far above any real card balance, far below int64 overflow when balances are summed.
MAX_AMOUNT_MINOR = 10**15
# A card's balance stays within [-MAX_BALANCE_MINOR, MAX_BALANCE_MINOR]: whatever the
# sequence of loads and offline debits, it and every journal sum fit in an int64.
MAX_BALANCE_MINOR = 10**15


@value_object
class Money:
    amount_minor: int
    currency: str

    def __str__(self) -> str:
        return f"{self.amount_minor} {self.currency} (minor units)"


def validate_currency(currency: str, field: str) -> str:
    # fullmatch: `$` would also match before a trailing newline ("EUR\n").
    if not _CURRENCY.fullmatch(currency):
        if not currency:
            raise InvalidField(field, "is required")
        raise InvalidField(field, "must be a three-letter upper-case ISO 4217 code")
    return currency


def positive_money(money: Money | None, field: str) -> Money:
    """A request amount: present, strictly positive, bounded, with a well-formed currency."""
    if money is None:
        raise InvalidAmount(field, "is required")
    validate_currency(money.currency, f"{field}.currency_code")
    if money.amount_minor <= 0:
        raise InvalidAmount(f"{field}.amount_minor", "must be strictly positive")
    if money.amount_minor > MAX_AMOUNT_MINOR:
        raise InvalidAmount(f"{field}.amount_minor", f"must be at most {MAX_AMOUNT_MINOR}")
    return money


def require_balance_within_limit(balance_minor: int) -> int:
    """A balance a movement would leave on a card; past the documented maximum (either
    sign) the movement is refused."""
    if not -MAX_BALANCE_MINOR <= balance_minor <= MAX_BALANCE_MINOR:
        raise LimitExceeded("max_balance_minor", MAX_BALANCE_MINOR, balance_minor)
    return balance_minor
