"""AIP-158 paging on the wire: page sizes and opaque page tokens, the one codec for them.

A token is the base64 of "<list name>:<cursor>", so a token handed out by one list is refused
by another, and callers cannot mistake it for something they may build themselves. A list
read with filters (one card's journal, one terminal's locks) is named with them (`scoped`):
as AIP-158 asks, a token is good only for the request it came from, so card A's journal
token sent with card B is refused rather than served as a position in B's entries. The use
cases below only see cursors (keys) and return a `Page`; a token that is not one this server
issued is a domain `InvalidField("page_token")`, mapped like any other bad field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable
from typing import Any

from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.paging import Page

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Our tokens are a list name and a key of at most a few dozen characters.
MAX_TOKEN_LENGTH = 512
_MAX_POSITION = 2**63 - 1
_MAX_POSITION_DIGITS = len(str(_MAX_POSITION))


def scoped(list_name: str, *filters: object) -> str:
    """The name of `list_name` read with these filter values: a digest of them, so the name
    stays short and free of the ':' that ends it whatever a filter holds."""
    digest = hashlib.sha256(repr(filters).encode()).hexdigest()[:16]
    return f"{list_name}.{digest}"


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is served as the maximum."""
    if requested < 0:
        raise InvalidField("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def next_page_token(list_name: str, page: Page[Any]) -> str:
    """The next_page_token of `page`; empty when it is the last one."""
    if not page.next_cursor:
        return ""
    return base64.urlsafe_b64encode(f"{list_name}:{page.next_cursor}".encode()).decode()


def decode_token(list_name: str, token: str, is_valid_cursor: Callable[[str], bool]) -> str:
    """The cursor inside a page_token ('' for the first page). Anything this server could not
    have issued for this list (not base64, not UTF-8, another list's, a cursor that is not
    one of this list's keys) is INVALID_ARGUMENT: it never reaches the database."""
    if not token:
        return ""
    cursor = _cursor(list_name, token)
    if cursor is None or not is_valid_cursor(cursor):
        raise InvalidField("page_token", "is not a token this list returned")
    return cursor


def decode_int_token(list_name: str, token: str) -> int:
    """A cursor that is a position (a row id, a version): a decimal int64."""
    cursor = decode_token(list_name, token, is_position)
    return int(cursor) if cursor else 0


def is_position(cursor: str) -> bool:
    return (
        0 < len(cursor) <= _MAX_POSITION_DIGITS
        and cursor.isascii()
        and cursor.isdigit()
        and int(cursor) <= _MAX_POSITION
    )


def _cursor(list_name: str, token: str) -> str | None:
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        text = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        return None
    name, sep, cursor = text.partition(":")
    if not sep or name != list_name or not cursor:
        return None
    return cursor
