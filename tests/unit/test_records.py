"""The stored form of results (`storedvalue.hq.records`): every result reads back as it was,
and rows written by earlier versions (sorted keys, durations as seconds) still read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from storedvalue.hq import records
from storedvalue.hq.domain.cards import Card, CardKind, CardStatus, Lock
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.parameters import OfflineRiskLimits, Parameters
from storedvalue.hq.services.cards import LockResult, RedeemResult

NOW = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
LOCK = Lock("7000000000000001", "till-é\"1", "sale\n1", 2**40, NOW + timedelta(seconds=30), NOW)
CARD = Card("7000000000000001", CardKind.GIFT_CARD, CardStatus.ACTIVE, "EUR", 10**15, NOW,
            last_fencing_token=2**40, lock=LOCK)
MEMO = Card("7000000000000002", CardKind.CREDIT_MEMO, CardStatus.REDEEMED, "USD", -5,
            NOW.astimezone(timezone(timedelta(hours=2))), remainder_of_card_number="7000")
PARAMETERS = Parameters(
    3, True, False, timedelta(hours=4, milliseconds=500), NOW, "admin",
    gift_card_offline_limits=OfflineRiskLimits(
        max_line_amount=Money(5000, "EUR"), max_offline_duration=timedelta(hours=2)),
    store_id="S1",
)

RESULTS: list[tuple[type[Any], Any]] = [
    (LockResult, LockResult(lock=LOCK, card=CARD)),
    (RedeemResult, RedeemResult(card=CARD, debited=Money(1, "EUR"))),
    (RedeemResult, RedeemResult(card=CARD, debited=Money(7, "EUR"), remainder_credit_memo=MEMO)),
    (Card, CARD),
    (Card, MEMO),
    (Parameters, PARAMETERS),
]


@dataclass(frozen=True)
class Odd:
    """Values the online results do not hold, which must still round-trip."""

    ratio: float
    lease: timedelta
    raw: bytes
    tags: tuple[str, ...]
    nothing: None = None
    flag: bool = False


@pytest.mark.parametrize(("cls", "result"), RESULTS)
def test_a_stored_result_reads_back_as_it_was(cls: type[Any], result: object) -> None:
    assert records.loads(cls, records.dumps(result)) == result


def test_floats_durations_bytes_and_tuples_read_back_as_they_were() -> None:
    odd = Odd(1.5, timedelta(milliseconds=1500), b"\x00\xff", ("a", "\u2603"), flag=True)
    assert records.loads(Odd, records.dumps(odd)) == odd


# Written by the encoder of earlier versions (json.dumps of the fields, sorted keys,
# durations as seconds): rows of databases made by them.
EARLIER_REDEEM_RESULT = (
    '{"card":{"balance_minor":1000000000000000,"card_number":"7000000000000001",'
    '"currency":"EUR","issued_at":"2024-05-01T12:30:15.123456+00:00","kind":"GIFT_CARD",'
    '"last_fencing_token":1099511627776,"lock":{"acquired_at":"2024-05-01T12:30:15.123456+00:00",'
    '"card_number":"7000000000000001","fencing_token":1099511627776,'
    '"lease_expires_at":"2024-05-01T12:30:45.123456+00:00","terminal_id":"till-\\u00e9\\"1",'
    '"transaction_id":"sale\\n1"},"remainder_of_card_number":"","status":"ACTIVE"},'
    '"debited":{"amount_minor":7,"currency":"EUR"},"remainder_credit_memo":{"balance_minor":-5,'
    '"card_number":"7000000000000002","currency":"USD",'
    '"issued_at":"2024-05-01T14:30:15.123456+02:00","kind":"CREDIT_MEMO",'
    '"last_fencing_token":0,"lock":null,"remainder_of_card_number":"7000","status":"REDEEMED"}}'
)
EARLIER_PARAMETERS = (
    '{"credit_memo_offline_completion_allowed":false,"credit_memo_offline_limits":'
    '{"max_line_amount":null,"max_offline_duration":null,"max_unsynced_amount":null},'
    '"gift_card_offline_completion_allowed":true,"gift_card_offline_limits":'
    '{"max_line_amount":{"amount_minor":5000,"currency":"EUR"},"max_offline_duration":7200.0,'
    '"max_unsynced_amount":null},"lock_lease":14400.5,"store_id":"S1",'
    '"updated_at":"2024-05-01T12:30:15.123456+00:00","updated_by":"admin","version":3}'
)


def test_a_result_stored_by_an_earlier_version_still_reads() -> None:
    assert records.loads(RedeemResult, EARLIER_REDEEM_RESULT) == RESULTS[2][1]


def test_durations_stored_as_seconds_by_an_earlier_version_still_read() -> None:
    assert records.loads(Parameters, EARLIER_PARAMETERS) == PARAMETERS
