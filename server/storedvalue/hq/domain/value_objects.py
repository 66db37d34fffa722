"""Value objects: frozen dataclasses to the type checker, plain slotted classes at run time.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, about five
times the cost of a plain assignment, and the offline sync builds a dozen value objects for
every transaction it applies (its lines and money, results, records, journal entries). So
``@value_object`` makes, at run time, a slotted dataclass whose ``__init__`` assigns plainly,
equal values hashing alike as frozen ones do; mypy (strict, in CI) sees a frozen dataclass
and refuses any assignment to a field: that is where these values are kept immutable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value_object(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)
