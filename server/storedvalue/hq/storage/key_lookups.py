"""Bulk reads by a list of keys (`WHERE key IN (...)`), compiled once per dialect and list
length and run as driver SQL.

SQLAlchemy renders an expanding IN parameter again on every execution, one bind name per
key: for the offline sync's 500-key lists that costs more than the database's own lookups.
Here the statement is compiled once, the IN list's placeholders are spliced in per length
(cached), and the rows come back as SQLAlchemy rows (columns as attributes), untouched by
result processing: our column types need none (ints, strings, bools, bytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Dialect, Row, Select
from sqlalchemy.exc import DBAPIError

from storedvalue.hq.storage.database import Transaction, as_concurrent_update


class KeyLookup:
    """A SELECT with exactly one expanding bind (`bindparam(name, expanding=True)`)."""

    def __init__(self, statement: Select[Any], keys_bind: str) -> None:
        self.statement = statement
        self.keys_bind = keys_bind
        self._templates: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        self._compiled: dict[tuple[str, int], str] = {}

    def sql_for(self, dialect: Dialect, count: int) -> tuple[str, tuple[str, ...] | None]:
        """SQL text for `count` keys and, for positional paramstyles, the parameter order
        (the keys bind standing for all its keys)."""
        template, order = self._template(dialect)
        sql = self._compiled.get((dialect.name, count))
        if sql is None:
            if order is not None:
                placeholders = ", ".join(["?"] * count)
            else:
                placeholders = ", ".join(
                    f"%({self.keys_bind}_{i})s" for i in range(count)
                )
            sql = template.replace(f"__[POSTCOMPILE_{self.keys_bind}]", placeholders)
            self._compiled[(dialect.name, count)] = sql
        return sql, order

    def _template(self, dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
        found = self._templates.get(dialect.name)
        if found is None:
            if dialect.paramstyle not in ("qmark", "pyformat"):
                raise ValueError(f"unsupported paramstyle {dialect.paramstyle!r}")
            compiled = self.statement.compile(dialect=dialect)
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            found = (str(compiled), order)
            self._templates[dialect.name] = found
        return found


def fetch_by_keys(
    tx: Transaction, lookup: KeyLookup, keys: Sequence[Any], params: Mapping[str, Any]
) -> Sequence[Row[Any]]:
    """The rows of `lookup` for `keys` (one IN list: the caller chunks) and the other binds
    in `params`."""
    if not keys:
        return []
    connection = tx.connection
    sql, order = lookup.sql_for(connection.dialect, len(keys))
    bound: Any
    if order is not None:
        values: list[Any] = []
        for name in order:
            if name == lookup.keys_bind:
                values.extend(keys)
            else:
                values.append(params[name])
        bound = tuple(values)
    else:
        bound = dict(params)
        name = lookup.keys_bind
        for i, key in enumerate(keys):
            bound[f"{name}_{i}"] = key
    try:
        return connection.exec_driver_sql(sql, bound).all()
    except DBAPIError as error:
        race = as_concurrent_update(error)
        raise (error if race is None else race) from None
