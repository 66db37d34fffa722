"""JSON encoding of the domain's frozen result types, for what HQ stores verbatim: the first
result of an idempotent request, an offline transaction's outcome, a transaction kept for
review. Dataclasses, enums, datetimes, bytes, tuples and optionals of those round-trip."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import json.encoder
import types
import typing
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar, cast

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    encode = _ENCODERS.get(type(value))
    if encode is None:
        encode = _encoder_for(type(value))
    return encode(value)


def _identity(value: Any) -> Any:
    return value


def _sequence(value: Any) -> Any:
    return [to_jsonable(v) for v in value]


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    str: _identity,
    int: _identity,
    bool: _identity,
    float: _identity,
    type(None): _identity,
    list: _sequence,
    tuple: _sequence,
    datetime: lambda v: v.isoformat(),
    timedelta: lambda v: v.total_seconds(),
    bytes: lambda v: base64.b64encode(v).decode(),
}


def _encoder_for(cls: type) -> Callable[[Any], Any]:
    """Build (once per type) an encoder; dataclasses are the hot path of offline sync."""
    encoder: Callable[[Any], Any]
    if dataclasses.is_dataclass(cls):
        # compare=False marks in-memory working state, never stored
        names = tuple(f.name for f in dataclasses.fields(cls) if f.compare)

        def encoder(value: Any) -> Any:
            return {name: to_jsonable(getattr(value, name)) for name in names}
    elif issubclass(cls, enum.Enum):
        def encoder(value: Any) -> Any:
            return value.value
    else:
        encoder = _identity
    _ENCODERS[cls] = encoder
    return encoder


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys. Built straight from the objects by a writer compiled
    once per type (stored requests' results are written on every online call); the text
    is exactly `json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)`, so
    what is stored, and digests of it, never depend on which of the two wrote it."""
    write = _WRITERS.get(type(value))
    if write is None:
        write = _writer_for(type(value))
    return write(value)


def _generic_text(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _none_text(_value: None) -> str:
    return "null"


def _sequence_text(value: Any) -> str:
    return "[" + ",".join([dumps(v) for v in value]) + "]"


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii

_WRITERS: dict[type, Callable[[Any], str]] = {
    str: _quote,
    int: int.__repr__,
    bool: _bool_text,
    type(None): _none_text,
    list: _sequence_text,
    tuple: _sequence_text,
    datetime: lambda v: _quote(v.isoformat()),
    bytes: lambda v: _quote(base64.b64encode(v).decode()),
}


def _writer_for(cls: type) -> Callable[[Any], str]:
    writer: Callable[[Any], str]
    if dataclasses.is_dataclass(cls):
        # The same fields as to_jsonable's, in json's sort_keys order.
        names = sorted(f.name for f in dataclasses.fields(cls) if f.compare)
        prefixes = [("{" if i == 0 else ",") + _quote(n) + ":" for i, n in enumerate(names)]
        pairs = tuple(zip(prefixes, names, strict=True))
        empty = "{}"

        def writer(value: Any) -> str:
            if not pairs:
                return empty
            parts = []
            for prefix, name in pairs:
                field = getattr(value, name)
                write = _WRITERS.get(type(field))
                if write is None:
                    write = _writer_for(type(field))
                parts.append(prefix)
                parts.append(write(field))
            parts.append("}")
            return "".join(parts)
    elif issubclass(cls, enum.Enum):
        def writer(value: Any) -> str:
            return dumps(value.value)
    else:
        # Floats (json's spelling of their special values), timedeltas, anything else.
        writer = _generic_text
    _WRITERS[cls] = writer
    return writer


def loads(cls: type[T], text: str) -> T:
    return cast(T, from_jsonable(cls, json.loads(text)))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_jsonable(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_jsonable(inner, data)
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(tp)
        return tuple(from_jsonable(inner, v) for v in data)
    if origin is list:
        (inner,) = typing.get_args(tp)
        return [from_jsonable(inner, v) for v in data]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = _hints(tp)
        return tp(**{name: from_jsonable(hints[name], v) for name, v in data.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp is datetime:
        return datetime.fromisoformat(data)
    if tp is timedelta:
        return timedelta(seconds=data)
    if tp is bytes:
        return base64.b64decode(data)
    return data
