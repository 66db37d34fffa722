"""The stored form of idempotent results: the compiled writer spells exactly what the generic
JSON encoding spells (stored rows and digests of them stay valid), and every result reads
back as it was."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from storedvalue.hq import records
from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.hq.domain.money import Money
from storedvalue.hq.services.cards import LockResult, RedeemResult

NOW = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
LOCK = Lock("7000000000000001", "till-é\"1", "sale\n1", 2**40, NOW + timedelta(seconds=30), NOW)
CARD = Card("7000000000000001", CardKind.GIFT_CARD, CardStatus.ACTIVE, "EUR", 10**15, NOW,
            last_fencing_token=2**40, lock=LOCK)
MEMO = Card("7000000000000002", CardKind.CREDIT_MEMO, CardStatus.REDEEMED, "USD", -5,
            NOW.astimezone(timezone(timedelta(hours=2))), remainder_of_card_number="7000")

RESULTS: list[tuple[type[Any], Any]] = [
    (LockResult, LockResult(lock=LOCK, card=CARD)),
    (RedeemResult, RedeemResult(card=CARD, debited=Money(1, "EUR"))),
    (RedeemResult, RedeemResult(card=CARD, debited=Money(7, "EUR"), remainder_credit_memo=MEMO)),
    (Card, CARD),
    (Card, MEMO),
]


@dataclass(frozen=True)
class Odd:
    """Values the online results do not hold, which the writer must still spell as json."""

    ratio: float
    lease: timedelta
    raw: bytes
    tags: tuple[str, ...]
    nothing: None = None
    flag: bool = False


def generic(value: object) -> str:
    return json.dumps(records.to_jsonable(value), separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize(("cls", "result"), RESULTS)
def test_a_stored_result_is_spelled_as_the_generic_json_encoding(
    cls: type[Any], result: object
) -> None:
    assert records.dumps(result) == generic(result)


@pytest.mark.parametrize(("cls", "result"), RESULTS)
def test_a_stored_result_reads_back_as_it_was(cls: type[Any], result: object) -> None:
    assert records.loads(cls, records.dumps(result)) == result


def test_floats_durations_bytes_and_tuples_are_spelled_as_json_spells_them() -> None:
    odd = Odd(float("nan"), timedelta(milliseconds=1500), b"\x00\xff", ("a", "\u2603"), flag=True)
    assert records.dumps(odd) == generic(odd)
    assert records.dumps([odd, None, 1.5, True, "x"]) == generic([odd, None, 1.5, True, "x"])
