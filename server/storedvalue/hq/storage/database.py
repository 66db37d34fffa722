"""Engines for the HQ database, and what their failures mean to the services.

SQLite (the embedded default): WAL, `synchronous=FULL`, a busy timeout, foreign keys on, and
transactions begun by us rather than by the driver, so a writing unit of work takes the write
lock at once (`BEGIN IMMEDIATE`) instead of failing half-way when it first writes. A
":memory:" database is one shared connection, used by one unit of work at a time.

PostgreSQL (`postgresql+psycopg://...`): READ COMMITTED plus row locks
(`SELECT ... FOR UPDATE`), which is what several HQ replicas on one database rely on.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    Row,
    create_engine,
    event,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection, StaticPool

from storedvalue.hq.services.unit_of_work import ConcurrentUpdate
from storedvalue.hq.storage.statements import IN_CHUNK, BulkWrite, Query, in_chunks

__all__ = [
    "IN_CHUNK",
    "WRITE_OPTION",
    "BulkWrite",
    "Query",
    "Transaction",
    "as_concurrent_update",
    "in_chunks",
    "is_sqlite_memory",
    "open_engine",
]

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


def sqlite_file_path(url: URL) -> Path | None:
    """The file of a SQLite URL; None for a memory database or a `file:` URI."""
    if url.get_backend_name() != "sqlite" or is_sqlite_memory(url) or url.query.get("uri"):
        return None
    return Path(url.database or "")


def make_private_database_file(path: Path) -> None:
    """Create the SQLite file, and its directory if missing, private to this user (0600 in
    a 0700 directory) before SQLite creates it with the umask's mode; SQLite gives the -wal
    and -shm files the database file's mode. A file made by an earlier version with group
    or other access is made private too."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        for existing in (path, path.with_name(path.name + "-wal"),
                         path.with_name(path.name + "-shm")):
            try:
                mode = stat.S_IMODE(existing.stat().st_mode)
                if mode & 0o077:
                    existing.chmod(mode & 0o700)
            except (FileNotFoundError, PermissionError):
                continue  # not there, or not ours to change


def _sqlite_engine(url: URL, pool_size: int, busy_timeout_ms: int) -> Engine:
    memory = is_sqlite_memory(url)
    database_file = sqlite_file_path(url)
    if database_file is not None:
        make_private_database_file(database_file)
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
            # Checkpoint every 8192 pages (32 MiB of WAL) rather than 1000: a busy sync rewrites
            # the same journal-index pages often, and fewer, larger checkpoints write each once.
            # Durability is unchanged: every commit is fsynced in the WAL (synchronous=FULL).
            cursor.execute("PRAGMA wal_autocheckpoint=8192")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A unit of work's Transaction begins on the driver before SQLAlchemy does.
        if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            return
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



class Transaction:
    """One database transaction on one pooled driver connection, begun, committed and
    rolled back on the driver itself: SQLAlchemy's connection and transaction bookkeeping
    costs more than SQLite's own work for an online call. The hot statements (`Query`,
    `BulkWrite`) run on the driver's cursor; the others go through a SQLAlchemy connection
    made on first use over the same driver connection, in the same transaction.

    Every statement runs through it, so a lost race surfaces as ConcurrentUpdate wherever it
    happens. After `commit()`, the next statement begins a new transaction, which `close()`
    rolls back unless it too is committed."""

    def __init__(self, engine: Engine, *, write: bool) -> None:
        dialect = self._dialect = engine.dialect
        self._engine = engine
        self._error: type[Exception] = dialect.loaded_dbapi.Error
        # SQLite: we begin (see _sqlite_engine). psycopg begins by itself on the first
        # statement after a commit or rollback.
        self._begin_sql = (
            ("BEGIN IMMEDIATE" if write else "BEGIN") if dialect.name == "sqlite" else None
        )
        try:
            self._pooled: PoolProxiedConnection = engine.raw_connection()
        except self._error as error:
            raise self._driver_error("", None, error) from None
        try:
            self._driver: Any = cast(Any, self._pooled).dbapi_connection
            self._cursor: Any = self._driver.cursor()
            self._connection: Connection | None = None
            self._open = False
            self._begin()
        except BaseException:
            self._pooled.close()
            raise

    # -- statements -----------------------------------------------------------------------

    def rows(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        connection = self._sqlalchemy()
        try:
            return connection.execute(statement, params).all()
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
        if not self._open:
            self._begin()
        try:
            cursor = self._cursor
            cursor.execute(sql, bound)
            found = cursor.fetchone()
        except self._error as error:
            raise self._driver_error(sql, bound, error) from None
        return None if found is None else row_type._make(found)  # type: ignore[attr-defined]

    def write(self, statement: Executable, params: Mapping[str, Any]) -> None:
        connection = self._sqlalchemy()
        try:
            connection.execute(statement, params)
        except DBAPIError as error:
            raise _translated(error) from None

    def write_many(self, bulk: BulkWrite, rows: Sequence[Mapping[str, Any]]) -> None:
        """One executemany; every row has the same keys (a column or a bind name each)."""
        if not rows:
            return
        keys = tuple(rows[0])
        dialect = self._dialect
        sql, order = bulk.compiled_for(dialect, keys)
        if not self._open:
            self._begin()
        cursor = self._cursor
        params: Any
        try:
            if dialect.name == "postgresql":
                params = {f"c{i}": [row[key] for row in rows] for i, key in enumerate(keys)}
                cursor.execute(sql, params)
            elif order is not None:
                if len(rows) == 1:
                    row = rows[0]
                    cursor.execute(sql, tuple([row[name] for name in order]))
                    return
                pick = itemgetter(*order)
                params = [pick(row) for row in rows] if len(order) > 1 else [
                    (row[order[0]],) for row in rows
                ]
                cursor.executemany(sql, params)
            else:
                params = list(rows)
                cursor.executemany(sql, params)
        except self._error as error:
            raise self._driver_error(sql, None, error) from None

    # -- the transaction ------------------------------------------------------------------

    def commit(self) -> None:
        connection = self._connection
        try:
            if connection is not None and connection.in_transaction():
                connection.commit()  # commits the driver, and SQLAlchemy knows it
            else:
                self._driver.commit()
        except DBAPIError as error:
            raise _translated(error) from None
        except self._error as error:
            raise self._driver_error("COMMIT", None, error) from None
        self._open = False

    def close(self) -> None:
        """Roll back what was not committed and give the connection back to the pool."""
        try:
            if self._open:
                connection = self._connection
                if connection is not None and connection.in_transaction():
                    connection.rollback()
                else:
                    self._driver.rollback()
                self._open = False
        finally:
            self._cursor.close()
            self._pooled.close()

    def _begin(self) -> None:
        if self._begin_sql is not None:
            try:
                self._cursor.execute(self._begin_sql)
            except self._error as error:
                raise self._driver_error(self._begin_sql, None, error) from None
        self._open = True

    @property
    def connection(self) -> Connection:
        """A SQLAlchemy connection in this transaction, for statements it should run."""
        return self._sqlalchemy()

    def _sqlalchemy(self) -> Connection:
        # SQLAlchemy begins its own transaction on first execute; the begin listener sees the
        # driver already in ours and leaves it be.
        if not self._open:
            self._begin()
        connection = self._connection
        if connection is None:
            connection = self._connection = Connection(self._engine, self._pooled)
        return connection

    def _driver_error(self, sql: str, params: Any, error: Exception) -> Exception:
        wrapped = DBAPIError.instance(sql, params, error, self._error)
        return _translated(wrapped) if isinstance(wrapped, DBAPIError) else wrapped


def _translated(error: DBAPIError) -> Exception:
    race = as_concurrent_update(error)
    if race is not None:
        return race
    return error
