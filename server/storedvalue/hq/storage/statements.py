"""Statements the storage runs on the driver's cursor, compiled once per dialect: bulk
writes, single-row reads, and the IN-list chunking of lookups by many keys."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Dialect, Insert, Select, Table, Update

T = TypeVar("T", str, int)

# Keys per IN list: far under SQLite's bound-variable limit (32766; 999 before 3.32), and
# small enough that PostgreSQL plans each chunk as an index lookup.
IN_CHUNK = 500


def in_chunks(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """Sorted, de-duplicated chunks: rows get locked in key order, chunk after chunk."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


class BulkWrite:
    """An INSERT, or an UPDATE whose WHERE matches `key_<column>` binds, run as one
    driver-level statement per batch and compiled once per dialect and set of keys.

    SQLAlchemy's per-row parameter handling costs more than the database's own work per row,
    and the offline sync writes tens of thousands of rows a second. Our column types need no
    bind processing (ints, strings, bools, bytes), so rows go to the driver as they are:
    SQLite gets one executemany; PostgreSQL gets ONE statement reading the rows from arrays
    (`unnest`), one round trip instead of one per row. Rows of one UPDATE batch must have
    distinct keys.
    """

    def __init__(self, statement: Insert | Update) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...] | None]] = {}

    def compiled_for(
        self, dialect: Dialect, keys: tuple[str, ...]
    ) -> tuple[str, tuple[str, ...] | None]:
        """The SQL text and, for positional paramstyles, the order of its parameters."""
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            if dialect.name == "postgresql":
                found = (self._from_arrays(dialect, keys), None)
            else:
                compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
                order = tuple(compiled.positiontup or ()) if dialect.positional else None
                found = (str(compiled), order)
            self._compiled[(dialect.name, keys)] = found
        return found

    def _from_arrays(self, dialect: Dialect, keys: tuple[str, ...]) -> str:
        table = self.statement.table
        assert isinstance(table, Table)
        quote = dialect.identifier_preparer.quote
        arrays = ", ".join(
            f"%(c{i})b::{table.c[key.removeprefix('key_')].type.compile(dialect=dialect)}[]"
            for i, key in enumerate(keys)
        )
        if isinstance(self.statement, Insert):
            columns = ", ".join(quote(key) for key in keys)
            # Identifiers come from our own tables, quoted; every value is bound.
            return f"INSERT INTO {quote(table.name)} ({columns}) SELECT * FROM unnest({arrays})"  # noqa: S608
        names = ", ".join(quote(key) for key in keys)
        assignments = ", ".join(
            f"{quote(key)} = v.{quote(key)}" for key in keys if not key.startswith("key_")
        )
        matches = " AND ".join(
            f"{quote(table.name)}.{quote(key.removeprefix('key_'))} = v.{quote(key)}"
            for key in keys
            if key.startswith("key_")
        )
        return (
            f"UPDATE {quote(table.name)} SET {assignments} "  # noqa: S608 - as above
            f"FROM unnest({arrays}) AS v({names}) WHERE {matches}"
        )


class Query:
    """A SELECT without expanding binds, compiled once per dialect and run on the driver's
    cursor: the online calls' single-row reads, where SQLAlchemy's per-execution work costs
    more than SQLite's own. Rows come back as named tuples (columns as attributes)."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, Any, dict[str, Any], type[tuple[Any, ...]]]] = {}

    def compiled_for(
        self, dialect: Dialect
    ) -> tuple[str, Any, dict[str, Any], type[tuple[Any, ...]]]:
        """SQL text, the parameter order (positional paramstyles) or None, the binds' own
        values (e.g. a LIMIT), and the row type."""
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            defaults = {
                name: bind.effective_value
                for name, bind in compiled.binds.items()
                if bind.value is not None
            }
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            row_type = namedtuple("QueryRow", self.statement.selected_columns.keys())  # type: ignore[misc]
            found = (str(compiled), order, defaults, row_type)
            self._compiled[dialect.name] = found
        return found

