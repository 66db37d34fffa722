"""What clients may write in identifiers and free-text fields.

Every string a client sends ends up in a database column, a log line or a back-office
screen, so each is bounded and free of control characters (PostgreSQL refuses NUL; a line
break in an id forges log lines and splits CSV exports).
"""

from __future__ import annotations

from collections.abc import Collection

from storedvalue.hq.domain.errors import InvalidField

MAX_ID_LENGTH = 128
MAX_REASON_LENGTH = 500  # a forced unlock's reason, kept in the journal
MAX_RESOLUTION_LENGTH = 2_000  # what the back office did about an offline exception
_TEXT_BREAKS = frozenset("\n\t")


def is_valid_id(value: str, *, max_length: int = MAX_ID_LENGTH) -> bool:
    return 0 < len(value) <= max_length and value.isprintable()


def are_valid_ids(values: Collection[str], *, max_length: int = MAX_ID_LENGTH) -> bool:
    """Whether every one of `values` `is_valid_id`, checked a column at a time (a string is
    printable when each of its characters is, so the values are when they are together)."""
    return not values or (
        "" not in values and max(map(len, values)) <= max_length
        and "".join(values).isprintable())


def validate_id(value: str, field_name: str, *, max_length: int = MAX_ID_LENGTH) -> str:
    """Client-chosen identifiers (transaction, line, request ids): 1 to `max_length`
    printable characters (no control, format or line-break characters; spaces allowed)."""
    if not value:
        raise InvalidField(field_name, "is required")
    if len(value) > max_length:
        raise InvalidField(field_name, f"must be at most {max_length} characters")
    if not value.isprintable():
        raise InvalidField(field_name, "must not contain control or line-break characters")
    return value


def validate_free_text(value: str, field_name: str, *, max_length: int) -> str:
    """A note for people (a reason, a resolution, a display name): at most `max_length`
    characters, printable apart from line breaks and tabs."""
    if len(value) > max_length:
        raise InvalidField(field_name, f"must be at most {max_length} characters")
    if not value.isprintable() and not all(c.isprintable() or c in _TEXT_BREAKS for c in value):
        raise InvalidField(field_name, "must not contain control characters")
    return value


def required_free_text(value: str, field_name: str, *, max_length: int, why: str) -> str:
    """A note the back office must give (a reason, a resolution), as `validate_free_text`,
    not blank; `why` says what it is for. Returns it stripped."""
    validate_free_text(value, field_name, max_length=max_length)
    if not value.strip():
        raise InvalidField(field_name, f"is required: {why}")
    return value.strip()
