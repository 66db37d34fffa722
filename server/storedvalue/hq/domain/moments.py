"""Moments and durations as clients send them: whole seconds plus nanoseconds (the shape of
google.protobuf.Timestamp and Duration), turned into aware UTC datetimes and timedeltas only
when they are well formed and in range; and the one way HQ writes a moment as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from storedvalue.hq.domain.errors import InvalidField

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The documented range of a Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_EPOCH_SECONDS, MAX_EPOCH_SECONDS = -62_135_596_800, 253_402_300_799
# The documented range of a Duration: about +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000
INVALID_TIMESTAMP = ("is not a valid timestamp (out of range, or nanos outside "
                     "0..999,999,999)")
"""What a client is told of a Timestamp `moment_from_epoch` refuses."""
_NANOS = 1_000_000_000


def moment_from_epoch(seconds: int, nanos: int) -> datetime | None:
    """The moment `seconds` + `nanos` after the epoch (UTC, to the microsecond), or None when
    that is not a valid Timestamp (out of range, or nanos outside 0..999,999,999)."""
    if not (MIN_EPOCH_SECONDS <= seconds <= MAX_EPOCH_SECONDS and 0 <= nanos < _NANOS):
        return None
    # Positional: timedelta(days, seconds, microseconds) without keyword parsing; every
    # offline transaction carries one of these.
    return EPOCH + timedelta(0, seconds, nanos // 1000)


def micros_from_epoch(moment: datetime) -> int:
    """An aware moment as microseconds since the epoch (`moment_from_epoch`'s inverse, to
    the microsecond: `seconds * 1_000_000 + nanos // 1000`)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: HQ keeps timezone-aware UTC moments only")
    # The delta's parts (days, 0 <= seconds < 86,400, 0 <= microseconds < 10^6) summed: a
    # sixth cheaper than dividing it by one microsecond, which turns both timedeltas into
    # integers first (every online call converts a moment or two it has not seen).
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# 0 to 999 milliseconds, and 0 to 999 microseconds, by number: the batch decoder makes a
# moment from its whole second (decoded once for the batch's many moments in that second)
# plus two of these, rather than a new timedelta per moment.
MILLISECONDS = tuple(timedelta(0, 0, millis * 1000) for millis in range(1000))
MICROSECONDS = tuple(timedelta(0, 0, micros) for micros in range(1000))


def duration_from_parts(seconds: int, nanos: int, field: str) -> timedelta:
    """A Duration as a timedelta; refused unless well formed: within +-10,000 years, nanos
    within +-999,999,999 and of the same sign as seconds."""
    if not (
        -MAX_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS
        and -_NANOS < nanos < _NANOS
        and not (seconds > 0 > nanos or seconds < 0 < nanos)
    ):
        raise InvalidField(field, "is not a valid duration (seconds within +-315,576,000,000, "
                                  "nanos within +-999,999,999 and of the same sign)")
    return timedelta(seconds=seconds, microseconds=nanos // 1000 if nanos >= 0
                     else -((-nanos) // 1000))


def rfc3339(moment: datetime) -> str:
    """`moment` as HQ writes every time in text (ErrorInfo metadata, messages, logs): RFC 3339
    in UTC with a `Z`, 0, 3 or 6 fractional digits as needed, exactly as the JSON form of a
    google.protobuf.Timestamp in a response (e.g. "2026-12-02T03:04:05.120Z"), so a client
    compares the two as strings."""
    utc = moment.astimezone(UTC) if moment.utcoffset() else moment
    micros = utc.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{utc.replace(tzinfo=None, microsecond=0).isoformat()}{fraction}Z"
