"""Pages: what every List use case returns.

A page carries its items and the cursor of the next page: the key of its last item, as text
("" on the last page). What a cursor looks like on the wire (a page token) is the transport's
business alone; the key's type (a position, a card number, a terminal id) is the use case's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_cursor: str = ""  # "" when this is the last page


def page_of(found: Sequence[T], limit: int, key: Callable[[T], object]) -> Page[T]:
    """The page of `limit` items out of `found`, which holds up to one more: that one row past
    the page is how a list knows there is a next page without counting."""
    items = tuple(found[:limit])
    more = len(found) > limit and items
    return Page(items, str(key(items[-1])) if more else "")
