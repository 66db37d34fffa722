"""JSON encoding of the domain's frozen result types, for what HQ stores verbatim: the first
result of an idempotent request, an offline transaction's outcome, a transaction kept for
review. Dataclasses, enums, datetimes, bytes, tuples and optionals of those round-trip."""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import types
import typing
from datetime import datetime, timedelta
from functools import cache
from typing import Any, TypeVar, cast

T = TypeVar("T")


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.compare  # compare=False marks in-memory working state, never stored
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"), sort_keys=True)


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
