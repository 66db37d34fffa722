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


def _write(value: Any) -> str:
    write = _WRITERS.get(value.__class__)
    if write is None:
        write = _writer_for(value.__class__)
    return write(value)


def _writer_for(cls: type) -> Callable[[Any], str]:
    writer: Callable[[Any], str]
    if dataclasses.is_dataclass(cls):
        writer = _dataclass_writer(cls)
    elif issubclass(cls, enum.Enum):
        def writer(value: Any) -> str:
            return dumps(value.value)
    else:
        # Floats (json's spelling of their special values), timedeltas, anything else.
        writer = _generic_text
    _WRITERS[cls] = writer
    return writer


def _dataclass_writer(cls: type) -> Callable[[Any], str]:
    """A function written for `cls`: its fields (the same as to_jsonable's, in json's
    sort_keys order) read and spelled one after another, with no loop and, for fields
    whose declared type is a plain str, int, bool, datetime or str-valued enum, no lookup
    of a writer when the value is of that very type (anything else: the generic path)."""
    names = sorted(f.name for f in dataclasses.fields(cls) if f.compare)
    if not names:
        return lambda _value: "{}"
    hints = _hints(cls)
    namespace: dict[str, Any] = {"_write": _write, "_quote": _quote}
    lines = ["def writer(v):"]
    pieces = []
    for index, name in enumerate(names):
        variable = f"x{index}"
        lines.append(f"    {variable} = v.{name}")
        namespace[f"P{index}"] = ("{" if index == 0 else ",") + _quote(name) + ":"
        pieces += [f"P{index}", _field_expression(hints.get(name), variable, namespace)]
    lines.append(f"    return ''.join(({', '.join(pieces)}, '}}'))")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own field names, checked
    compiled: Callable[[Any], str] = namespace["writer"]
    return compiled


def _field_expression(hint: Any, variable: str, namespace: dict[str, Any]) -> str:
    """Python source spelling `variable` (a field declared as `hint`) as JSON."""
    generic = f"_write({variable})"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        others = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(others) == 1 and len(typing.get_args(hint)) == 2:
            inner = _field_expression(others[0], variable, namespace)
            return f"('null' if {variable} is None else {inner})"
        return generic
    if not isinstance(hint, type):
        return generic
    name = f"T_{hint.__name__}_{id(hint)}"
    namespace[name] = hint
    check = f"{variable}.__class__ is {name}"
    if hint is str:
        fast = f"_quote({variable})"
    elif hint is int:
        fast = f"{variable}.__repr__()"
    elif hint is bool:
        fast = f"('true' if {variable} else 'false')"
    elif hint is datetime:
        fast = f"_quote({variable}.isoformat())"
    elif issubclass(hint, enum.Enum) and all(isinstance(m.value, str) for m in hint):
        fast = f"_quote({variable}._value_)"
    else:
        return generic
    return f"({fast} if {check} else {generic})"


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
