"""AIP-158 paging on the wire: page sizes and opaque page tokens.

A token is the base64 of "<list name>:<cursor>", so a token handed out by one list is refused
by another, and callers cannot mistake it for something they may build themselves.
"""

from __future__ import annotations

import base64
import binascii

from storedvalue.hq.domain.errors import InvalidField

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    """0 means the default; more than the maximum is served as the maximum."""
    if requested < 0:
        raise InvalidField("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(list_name: str, cursor: str) -> str:
    """The next_page_token for `cursor`; empty when there is no next page."""
    if not cursor:
        return ""
    return base64.urlsafe_b64encode(f"{list_name}:{cursor}".encode()).decode()


def decode_token(list_name: str, token: str) -> str:
    """The cursor inside a page_token ('' for the first page)."""
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidField("page_token", "is not a token this list returned") from None
    name, sep, cursor = text.partition(":")
    if not sep or name != list_name or not cursor:
        raise InvalidField("page_token", "is not a token this list returned")
    return cursor


def decode_int_token(list_name: str, token: str) -> int:
    cursor = decode_token(list_name, token)
    if not cursor:
        return 0
    if not cursor.isdigit():
        raise InvalidField("page_token", "is not a token this list returned")
    return int(cursor)
