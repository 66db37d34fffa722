"""How the terminal commands show money, card numbers and times to people, and read money
back.

Amounts are typed and shown in major units ("12.50 EUR"); the library only ever sees minor
units. Card numbers are masked to their last four digits, as on a receipt. Times are RFC 3339
in UTC with a `Z`, as HQ writes them in errors and as a Timestamp reads in JSON.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from google.protobuf import timestamp_pb2

from storedvalue.terminal import Money

# ISO 4217 currencies whose minor unit is not the cent (the rest have two decimals).
_DECIMALS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF",
                     "UGX", "UYI", "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
}


def decimals(currency_code: str) -> int:
    return _DECIMALS.get(currency_code, 2)


def format_moment(moment: datetime) -> str:
    """"2026-12-02T03:04:05.120Z": protobuf's own JSON form of a Timestamp, the form HQ's
    error metadata uses too."""
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(moment)
    return timestamp.ToJsonString()


def format_money(money: Money) -> str:
    places = decimals(money.currency_code)
    major = Decimal(money.amount_minor).scaleb(-places)
    return f"{major:.{places}f} {money.currency_code}"


def parse_money(amount: str, currency_code: str) -> Money:
    """``"12.50", "EUR"`` -> 1250 EUR minor units; refuses more decimals than the currency
    has, negative amounts and anything that is not a plain decimal number."""
    code = currency_code.strip().upper()
    places = decimals(code)
    try:
        major = Decimal(amount.strip())
    except InvalidOperation:
        raise ValueError(f"{amount!r} is not an amount (e.g. 12.50)") from None
    if not major.is_finite() or major < 0:
        raise ValueError(f"{amount!r} is not a positive amount")
    minor = major.scaleb(places)
    if minor != minor.to_integral_value():
        raise ValueError(f"{amount!r} has more than {places} decimals for {code}")
    return Money(int(minor), code)


def mask(card_number: str) -> str:
    """``6012345678901234`` -> ``****1234``: enough to tell cards apart on a screen."""
    return "****" + card_number[-4:] if len(card_number) > 4 else "****"
