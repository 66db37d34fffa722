"""Engines for the HQ database, and what their failures mean to the services.

SQLite (the embedded default): WAL, `synchronous=FULL`, a busy timeout, foreign keys on, and
transactions begun by us rather than by the driver, so a writing unit of work takes the write
lock at once (`BEGIN IMMEDIATE`) instead of failing half-way when it first writes. A
":memory:" database is one shared connection, used by one unit of work at a time.

PostgreSQL (`postgresql+psycopg://...`): READ COMMITTED plus row locks
(`SELECT ... FOR UPDATE`), which is what several HQ replicas on one database rely on.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import namedtuple
from collections.abc import Iterable, Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Dialect,
    Engine,
    Executable,
    Insert,
    Row,
    Select,
    Table,
    Update,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from storedvalue.hq.services.unit_of_work import ConcurrentUpdate

# Execution option a writing unit of work sets on its connection before it begins.
WRITE_OPTION = "storedvalue_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# PostgreSQL SQLSTATEs that mean "another transaction got there first".
_PG_RACES = {
    "23505": "unique key taken",
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available",
}
_SQLITE_UNIQUE = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}

T = TypeVar("T", str, int)


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def open_engine(
    url: str | URL, *, pool_size: int = 8, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS
) -> Engine:
    """An engine configured for HQ. `pool_size` bounds connections per process (PostgreSQL
    and SQLite files); a SQLite memory database always has exactly one.
    `sqlite_busy_timeout_ms`: how long a SQLite writer waits for another to finish before
    its unit of work fails with ConcurrentUpdate."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, sqlite_busy_timeout_ms)
    if backend == "postgresql":
        engine = create_engine(
            parsed,
            isolation_level="READ COMMITTED",
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # psycopg prepares a statement after a few runs; PostgreSQL then soon settles on
            # a generic plan, costed when our tables were small, which seq-scans a big IN
            # list. Planning every run with its real parameters keeps the index lookups.
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET plan_cache_mode = force_custom_plan")
            dbapi_connection.commit()

        return engine
    raise ValueError(f"unsupported database backend {backend!r}: use sqlite or postgresql")


def _sqlite_engine(url: URL, pool_size: int, busy_timeout_ms: int) -> Engine:
    memory = is_sqlite_memory(url)
    if memory:
        engine = create_engine(
            url, poolclass=SerialStaticPool, connect_args={"check_same_thread": False}
        )
    else:
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver: it would begin lazily, on the first
        # write, and never with IMMEDIATE. SQLAlchemy's documented recipe.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class SerialStaticPool(StaticPool):
    """The one connection of a SQLite memory database, lent to one checkout at a time: a
    thread holds it for a whole unit of work, other threads wait their turn. (Gating in
    the pool, before a checkout starts, keeps SQLAlchemy's bookkeeping of the shared
    connection straight.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = threading.Lock()
        self._holder: int | None = None

    def _do_get(self) -> ConnectionPoolEntry:
        if self._holder == threading.get_ident():
            raise RuntimeError(
                "this thread already holds the SQLite memory database's only connection "
                "(a unit of work opened inside another?)"
            )
        self._gate.acquire()
        self._holder = threading.get_ident()
        try:
            return super()._do_get()
        except BaseException:
            self._release()
            raise

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        super()._do_return_conn(record)
        self._release()

    def _release(self) -> None:
        self._holder = None
        self._gate.release()


def as_concurrent_update(error: DBAPIError) -> ConcurrentUpdate | None:
    """The race `error` reports, if it is one; None for any other failure.

    The message names the kind of race (and the constraint), never the key values: those
    can be card numbers, which must not reach logs.
    """
    orig = error.orig
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _PG_RACES:
        diag = getattr(orig, "diag", None)
        constraint = getattr(diag, "constraint_name", None) if diag is not None else None
        suffix = f" ({constraint})" if constraint else ""
        return ConcurrentUpdate(_PG_RACES[sqlstate] + suffix)
    if isinstance(orig, sqlite3.Error):
        name = getattr(orig, "sqlite_errorname", "")
        if isinstance(error, IntegrityError) and (
            name in _SQLITE_UNIQUE or "UNIQUE constraint failed" in str(orig)
        ):
            # SQLite's message names the columns, not the values.
            return ConcurrentUpdate(f"unique key taken: {orig}")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(orig):
            return ConcurrentUpdate(f"database busy: {orig}")
    return None


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


class Transaction:
    """One open database transaction. Every statement runs through it, so a lost race
    surfaces as ConcurrentUpdate wherever it happens."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._dialect = connection.dialect
        self._cursor: Any = None

    def rows(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        try:
            return self.connection.execute(statement, params).all()
        except DBAPIError as error:
            raise _translated(error) from None

    def first(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Row[Any] | None:
        found = self.rows(statement, params)
        return found[0] if found else None

    def fetch_first(self, query: Query, params: Mapping[str, Any]) -> Any:
        """The first row of `query` (a named tuple), or None."""
        sql, order, defaults, row_type = query.compiled_for(self._dialect)
        merged = {**defaults, **params} if defaults else params
        bound: Any = merged if order is None else tuple([merged[name] for name in order])
        cursor = self._driver_cursor()
        try:
            cursor.execute(sql, bound)
            found = cursor.fetchone()
        except self._dialect.loaded_dbapi.Error as error:
            raise self._driver_error(sql, bound, error) from None
        return None if found is None else row_type._make(found)  # type: ignore[attr-defined]

    def write(self, statement: Executable, params: Mapping[str, Any]) -> None:
        try:
            self.connection.execute(statement, params)
        except DBAPIError as error:
            raise _translated(error) from None

    def write_many(self, bulk: BulkWrite, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany; every row has the same keys (a column or a bind name each)."""
        if not rows:
            return
        keys = tuple(rows[0])
        dialect = self._dialect
        sql, order = bulk.compiled_for(dialect, keys)
        cursor = self._driver_cursor()
        params: Any
        try:
            if dialect.name == "postgresql":
                params = {f"c{i}": [row[key] for row in rows] for i, key in enumerate(keys)}
                cursor.execute(sql, params)
            elif order is not None:
                pick = itemgetter(*order)
                params = [pick(row) for row in rows] if len(order) > 1 else [
                    (row[order[0]],) for row in rows
                ]
                cursor.executemany(sql, params)
            else:
                params = list(rows)
                cursor.executemany(sql, params)
        except dialect.loaded_dbapi.Error as error:
            raise self._driver_error(sql, None, error) from None

    def _driver_cursor(self) -> Any:
        # The driver's own cursor, in the transaction SQLAlchemy began on this connection
        # (begun again after a commit, as SQLAlchemy's own execute would).
        if not self.connection.in_transaction():
            self.connection.begin()
        if self._cursor is None:
            self._cursor = self.connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        return self._cursor

    def _driver_error(self, sql: str, params: Any, error: Exception) -> Exception:
        wrapped = DBAPIError.instance(sql, params, error, self._dialect.loaded_dbapi.Error)
        return _translated(wrapped) if isinstance(wrapped, DBAPIError) else wrapped


def _translated(error: DBAPIError) -> Exception:
    race = as_concurrent_update(error)
    if race is not None:
        return race
    return error
