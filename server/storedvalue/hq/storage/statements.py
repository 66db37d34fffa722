"""The storage's one statement type: a SQLAlchemy Core statement compiled once per dialect and
run on the driver's cursor by `Transaction`, plus the IN-list chunking of lookups by many keys.

SQLAlchemy's per-execution work (bind processing, result processing, rendering expanding
binds) costs more than the database's own work for an online call, and the offline sync
reads and writes tens of thousands of rows a second. Our column types need no bind or
result processing (ints, strings, bools, bytes), so values go to the driver as they are and
rows come back as named tuples (columns as attributes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Dialect, Insert, Select, Table, Update, literal, literal_column
from sqlalchemy.sql.util import find_tables

from storedvalue.hq.storage.sqlalchemy_internals import (
    CompiledSql,
    compile_statement,
    with_in_list,
)

T = TypeVar("T", str, int)

# Keys per IN list: far under SQLite's bound-variable limit (32766; 999 before 3.32), and
# small enough that PostgreSQL plans each chunk as an index lookup.
IN_CHUNK = 500


def in_chunks(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """Sorted, de-duplicated chunks: rows get locked in key order, chunk after chunk."""
    ordered = sorted(set(values))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


class Statement:
    """A SELECT, INSERT or UPDATE, compiled on first use for each dialect.

    - A SELECT may have one expanding bind (`bindparam(name, expanding=True)`), named by
      `in_list`; it is compiled once and its placeholders spliced in per list length.
    - An INSERT or UPDATE is compiled per set of keys written (an UPDATE matches
      `key_<column>` binds in its WHERE). Several rows at once: SQLite gets one
      executemany; PostgreSQL gets ONE statement reading the rows from arrays (`unnest`),
      one round trip instead of one per row. Rows of one UPDATE batch must have distinct
      keys.
    - An INSERT or UPDATE may write `constants`: values the same in every row, written into
      the SQL (NULL, a flag, a fixed word) rather than bound for each row (binding costs the
      driver more than the row's B-tree work in a bulk write). Only our own fixed values,
      never one a caller sent.
    - A SELECT may name tables it reads only while the transaction holds back no append to
      them (`read_unheld`): appends held back for those are not sent before it.
    """

    def __init__(self, statement: Select[Any] | Insert | Update, *, in_list: str | None = None,
                 constants: dict[str, str | bool | None] | None = None,
                 read_unheld: frozenset[str] = frozenset()) -> None:
        if in_list is not None and not isinstance(statement, Select):
            raise ValueError("only a SELECT reads by a list of keys")
        if constants and isinstance(statement, Select):
            raise ValueError("a SELECT writes no constants")
        if read_unheld and not isinstance(statement, Select):
            raise ValueError("only a SELECT reads without the appends held back")
        self.statement = statement
        self.in_list = in_list
        self.constants = dict(constants or {})
        self.tables = frozenset(
            table.name for table in find_tables(statement, include_crud=True, include_joins=True)
            if isinstance(table, Table)) - read_unheld
        """The names of the tables it reads or writes, but `read_unheld`'s: appends held back
        for these are sent before it (Transaction.append)."""
        self._compiled: dict[tuple[Any, ...], CompiledSql] = {}

    def compiled_read(self, dialect: Dialect, count: int = 0) -> CompiledSql:
        """The SELECT for `count` keys in its IN list (0 without one)."""
        found = self._compiled.get((dialect.name, count))
        if found is None:
            if not isinstance(self.statement, Select):
                raise TypeError("not a SELECT")
            base = self._compiled.get((dialect.name, 0))
            if base is None:
                base = self._compiled[(dialect.name, 0)] = compile_statement(
                    self.statement, dialect
                )
            found = base
            if self.in_list is not None and count:
                found = with_in_list(base, dialect, self.in_list, count)
            self._compiled[(dialect.name, count)] = found
        return found

    def compiled_write(self, dialect: Dialect, keys: tuple[str, ...], *, many: bool
                       ) -> CompiledSql:
        """The INSERT or UPDATE writing `keys`; `many`: PostgreSQL's form for many rows
        (parameters `c0`, `c1`, ... are arrays, one per key, in `keys` order)."""
        cache_key = (dialect.name, keys, many)
        found = self._compiled.get(cache_key)
        if found is None:
            if isinstance(self.statement, Select):
                raise TypeError("a SELECT writes nothing")
            if many and dialect.name == "postgresql":
                found = CompiledSql(self._from_arrays(dialect, keys), None, {}, None, dict)
            else:
                statement = self.statement
                if self.constants:
                    assert isinstance(statement, Insert | Update)
                    statement = statement.values({
                        key: literal_column(self._constant_sql(dialect, key))
                        for key in self.constants})
                found = compile_statement(statement, dialect, keys)
            self._compiled[cache_key] = found
        return found

    def compiled_rows(self, dialect: Dialect, keys: tuple[str, ...], rows: int,
                      shared: tuple[str, ...] = ()) -> CompiledSql:
        """SQLite: the INSERT or UPDATE writing `keys` for `rows` rows in one statement.
        An INSERT's VALUES list is repeated `rows` times; an UPDATE reads its rows from a
        VALUES list (`UPDATE ... FROM (VALUES ...) AS v`, each bound value of the one-row
        UPDATE becoming a column of v). Rows of one UPDATE must have distinct keys.

        An INSERT may have `shared` keys, the same in every row, bound once for all
        (numbered parameters: the shared values first, in `shared` order, then each row's
        in the returned `order`, row after row)."""
        cache_key = (dialect.name, keys, "rows", rows, shared)
        found = self._compiled.get(cache_key)
        if found is None:
            single = self.compiled_write(dialect, (*keys, *shared), many=False)
            order = single.order or ()
            if isinstance(self.statement, Insert):
                head, separator, values = single.sql.partition(" VALUES ")
                pieces = values.split("?")
                if (not separator or " VALUES " in values or len(pieces) - 1 != len(order)
                        or not (values.startswith("(") and values.endswith(")"))):
                    raise ValueError(f"not a single-row INSERT: {single.sql}")
                row_order = tuple(key for key in order if key not in shared)
                numbers = [len(shared) + row_order.index(key) + 1 if key not in shared
                           else shared.index(key) + 1 for key in order]
                width = len(row_order)
                sql = f"{head} VALUES " + ", ".join(
                    "".join(f"{piece}?{number + row * width}" if key not in shared
                            else f"{piece}?{number}"
                            for piece, key, number in zip(pieces[:-1], order, numbers, strict=True))
                    + pieces[-1]
                    for row in range(rows))
                order = row_order
            elif shared:
                raise ValueError("only an INSERT binds shared values once")
            elif isinstance(self.statement, Update):
                pieces = single.sql.split("?")
                count = len(pieces) - 1
                head, separator, _where = single.sql.partition(" WHERE ")
                if (not separator or " WHERE " in _where or " FROM " in single.sql
                        or count != len(single.order or ())):
                    raise ValueError(f"not a one-row UPDATE of ours: {single.sql}")
                columns = "".join(
                    f"{piece}v.column{i + 1}" for i, piece in enumerate(pieces[:-1]))
                columns += pieces[-1]
                head, _, where = columns.partition(" WHERE ")
                values = "(" + ", ".join(["?"] * count) + ")"
                sql = (f"{head} FROM (VALUES {', '.join([values] * rows)}) AS v "
                       f"WHERE {where}")
            else:
                raise TypeError("a SELECT writes nothing")
            found = CompiledSql(sql, order, single.defaults, None, single.bind)
            self._compiled[cache_key] = found
        return found

    def _table(self) -> Table:
        statement = self.statement
        assert isinstance(statement, Insert | Update)
        table = statement.table
        assert isinstance(table, Table)
        return table

    def _constant_sql(self, dialect: Dialect, key: str) -> str:
        """The SQL literal of the constant written to column `key`."""
        value = self.constants[key]
        if value is None:
            return "NULL"
        rendered = literal(value, self._table().c[key].type).compile(
            dialect=dialect, compile_kwargs={"literal_binds": True})
        return str(rendered)

    def _from_arrays(self, dialect: Dialect, keys: tuple[str, ...]) -> str:
        statement = self.statement
        table = self._table()
        quote = dialect.identifier_preparer.quote
        arrays = ", ".join(
            f"%(c{i})b::{table.c[key.removeprefix('key_')].type.compile(dialect=dialect)}[]"
            for i, key in enumerate(keys)
        )
        constants = {key: self._constant_sql(dialect, key) for key in self.constants}
        if isinstance(statement, Insert):
            columns = ", ".join(quote(key) for key in (*keys, *constants))
            values = ", ".join(["*", *constants.values()])
            # Identifiers come from our own tables, quoted; every value is bound or one of
            # our constants.
            return (f"INSERT INTO {quote(table.name)} ({columns}) "  # noqa: S608
                    f"SELECT {values} FROM unnest({arrays})")
        names = ", ".join(quote(key) for key in keys)
        assignments = ", ".join(
            [f"{quote(key)} = v.{quote(key)}" for key in keys if not key.startswith("key_")]
            + [f"{quote(key)} = {sql}" for key, sql in constants.items()]
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
