"""The one encoding of what HQ stores verbatim: the first result of an idempotent request,
an offline transaction's outcome, a transaction kept for review, a terminal's report.

JSON objects written and read by msgspec straight from and into the domain's dataclasses
(in C: an online call stores its result on every call, the sync one per transaction).
Dataclasses, enums, datetimes, durations, bytes, tuples and optionals of those round-trip.

Rows written by earlier versions still read: their objects had the same field names, with
durations as seconds (read here because the decoder is not strict: it also takes a number
of seconds for a duration, where msgspec writes ISO 8601) and datetimes in ISO 8601, as
now. Offline results of earlier versions were JSON arrays: `storage.offline_results` reads
those."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def dumps(value: object) -> str:
    """`value` as compact JSON (a dataclass as an object, fields in declaration order)."""
    return _ENCODER.encode(value).decode()


def loads(cls: type[T], text: str | bytes) -> T:
    """The `cls` stored as `text` (by `dumps`, or by an earlier version: see above)."""
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls, strict=False)
    result: T = decoder.decode(text)
    return result
