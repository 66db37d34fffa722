"""Moments and durations as clients send them (seconds + nanos), read only when well formed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2

from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.moments import (
    EPOCH,
    duration_from_parts,
    micros_from_epoch,
    moment_from_epoch,
    rfc3339,
)
from storedvalue.hq.storage.rows import from_micros, to_micros


def test_a_timestamp_in_range_is_the_utc_moment_to_the_microsecond() -> None:
    assert moment_from_epoch(1_790_000_000, 123_456_789) == datetime(
        2026, 9, 21, 14, 13, 20, 123_456, tzinfo=UTC)
    assert moment_from_epoch(-62_135_596_800, 0) == datetime(1, 1, 1, tzinfo=UTC)
    assert moment_from_epoch(253_402_300_799, 999_999_999) == datetime(
        9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "nanos"), [
    (253_402_300_800, 0), (-62_135_596_801, 0), (2**63 - 1, 0), (0, -1), (0, 10**9),
])
def test_a_timestamp_out_of_range_or_with_bad_nanos_is_unreadable(seconds: int, nanos: int
                                                                   ) -> None:
    assert moment_from_epoch(seconds, nanos) is None


def test_a_well_formed_duration_is_a_timedelta_of_either_sign() -> None:
    assert duration_from_parts(3_600, 500_000_000, "d") == timedelta(hours=1, milliseconds=500)
    assert duration_from_parts(-3_600, -500_000_000, "d") == -timedelta(hours=1,
                                                                         milliseconds=500)
    assert duration_from_parts(0, -1_000, "d") == -timedelta(microseconds=1)


@pytest.mark.parametrize(("seconds", "nanos"), [
    (2**62, 0), (-(2**62), 0), (315_576_000_001, 0), (3_600, -1), (-3_600, 5), (0, 10**9),
])
def test_a_duration_out_of_range_or_with_nanos_of_the_wrong_sign_is_refused(
    seconds: int, nanos: int
) -> None:
    with pytest.raises(InvalidField) as raised:
        duration_from_parts(seconds, nanos, "lock_lease")
    assert raised.value.metadata == {"field": "lock_lease"}


@pytest.mark.parametrize("moment", [
    datetime(2026, 12, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 12, 2, 3, 4, 5, 120_000, tzinfo=UTC),
    datetime(2026, 12, 2, 3, 4, 5, 123_456, tzinfo=UTC),
    datetime(2026, 12, 2, 3, 4, 5, 1, tzinfo=UTC),
    datetime(2026, 12, 2, 4, 4, 5, 250_000, tzinfo=timezone(timedelta(hours=1))),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
])
def test_a_moment_is_written_exactly_as_a_response_timestamp_in_json(moment: datetime) -> None:
    # The JSON form of google.protobuf.Timestamp (what grpcurl and other languages print for
    # a response's times) is the reference: ErrorInfo metadata must compare equal to it.
    as_json = timestamp_pb2.Timestamp()
    as_json.FromDatetime(moment)

    written = rfc3339(moment)

    assert written == as_json.ToJsonString()
    assert written.endswith("Z") and "+00:00" not in written
    assert datetime.fromisoformat(written) == moment


def test_stored_moments_read_back_as_the_same_utc_moment_whatever_was_converted_before(
) -> None:
    # The storage remembers recent conversions: a moment written with another offset still
    # reads back in UTC, the same moment twice converts the same, and naive ones are refused.
    paris = datetime(2026, 12, 2, 15, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=1)))
    micros = to_micros(paris)
    assert micros == to_micros(paris) == 1_796_220_000_250_000
    back = from_micros(micros)
    assert back == paris and back.tzinfo is UTC
    utc = datetime(2026, 12, 2, 14, 0, 0, 250_001, tzinfo=UTC)
    assert from_micros(to_micros(utc)) == utc
    assert from_micros(-1) == datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    with pytest.raises(ValueError, match="naive"):
        to_micros(utc.replace(tzinfo=None))



@pytest.mark.parametrize("moment", [
    datetime(2026, 12, 5, 21, 59, 59, 999_999, tzinfo=UTC),
    EPOCH,
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # the microsecond before
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 1, 1, 3, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
])
def test_a_moment_s_microseconds_since_the_epoch_are_its_exact_distance_from_it(
    moment: datetime,
) -> None:
    micros = micros_from_epoch(moment)
    assert micros == (moment - EPOCH) // timedelta(microseconds=1)
    assert EPOCH + timedelta(microseconds=micros) == moment
    assert moment_from_epoch(micros // 1_000_000, micros % 1_000_000 * 1000) == moment


@pytest.mark.parametrize("moment", [
    datetime(2026, 12, 4, 16, 45, 1, 123_456, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),  # before the epoch: nanos stay >= 0
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(2026, 1, 1, 3, tzinfo=timezone(timedelta(hours=-5))),
    datetime(2026, 6, 1, 12, 30),  # naive: local time, as Timestamp.FromDatetime takes it
])
def test_the_terminal_writes_a_moment_as_protobuf_s_own_conversion_does(moment: datetime
                                                                          ) -> None:
    from storedvalue.terminal._convert import timestamp_to_pb

    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment.astimezone(UTC))
    assert timestamp_to_pb(moment) == expected
