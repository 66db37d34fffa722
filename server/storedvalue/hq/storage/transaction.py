"""Transactions on one driver connection, and every statement the storage runs.

The transaction is begun, committed and rolled back on the driver itself, and statements
(`Statement`) run on the driver's cursor: SQLAlchemy's connection and transaction
bookkeeping costs more than SQLite's own work for an online call. Every statement runs
through here, so a lost race surfaces as ConcurrentUpdate wherever it happens.

On PostgreSQL each statement is a round trip to the server, so writes (which return
nothing) are held back and sent together, in one pipeline, right before the next read or
with the COMMIT: a Redeem's four writes and its COMMIT are one round trip instead of five.
A write's failure (a lost race above all) then surfaces at that read or at the commit,
still inside the unit of work, which rolls back whole as before.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Dialect, Update

from storedvalue.hq.storage.error_translation import translated_driver_error
from storedvalue.hq.storage.sqlalchemy_internals import CompiledSql
from storedvalue.hq.storage.statements import Statement
from storedvalue.hq.storage.tables import NOTIFICATIONS_KEPT

# The sqlite3 module binds an int, float, str or bytearray as it is, but any other value
# (None, a bool, bytes) through its adaptation, which (with no adapter registered for the
# value's type) first asks the protocol type for `__adapt__` and formats the AttributeError
# that raises: ~2,000 instructions a value, and the common offline sync binds ten such values
# a transaction. Registered adapters are found first; these give the driver the value it
# binds anyway (NULL, the integer 0 or 1, the blob), in C. Process-wide, as the sqlite3
# module's adapters are.
_NOTHING: dict[None, None] = {}
sqlite3.register_adapter(type(None), cast(Callable[[None], None], _NOTHING.get))  # None
sqlite3.register_adapter(bool, int)
sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b

# SQLite: rows per statement of `write_rows`, largest first (a few statement texts per table,
# kept in the driver's statement cache; 100 rows of up to 9 values are far under SQLite's
# 999 bound values of old).
_ROWS_PER_STATEMENT = (100, 10)
# UPDATE ... FROM: SQLite 3.33 and later.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)

# SQLite: a notification is a row (tables.notifications), and each one written prunes those
# older than the newest NOTIFICATIONS_KEPT: one indexed range delete, of one row once the
# table is full, so the table stays bounded without a sweeper.
_NOTIFY_SQLITE = (
    "INSERT INTO notifications (channel, payload, created_at) "
    "VALUES (:channel, :payload, :created_at)"
)
_PRUNE_NOTIFICATIONS_SQLITE = (
    "DELETE FROM notifications WHERE id <= last_insert_rowid() - :kept"
)


class _Bulk(dict[str, Any]):
    """PostgreSQL: the parameters of a write of many rows (arrays, read with `unnest`).

    Such a write, and a read by an IN list, is sent unprepared, so PostgreSQL plans it for
    the values it gets every time: a prepared one soon gets a generic plan, costed once for
    any number of rows (perhaps while our tables were small), which can seq-scan a table
    for a batch of hundreds of keys. Every other statement is prepared by psycopg after a
    few runs and then runs on PostgreSQL's generic plan (engines: `plan_cache_mode` left as
    it is): an online call's statements, and the journal trigger's, are no longer planned
    again at every run (~100 us of PostgreSQL's CPU an online call)."""


class HeldAppendsFailed(Exception):
    """Appends held back (`Transaction.append`) failed when sent: the unit of work that
    was running then is not the one at fault. The transaction is to be rolled back and its
    units run again without holding appends back, each then failing alone. (Not a
    ConcurrentUpdate nor a domain error: no unit of work may take it for its own.)"""


class Transaction:
    """Transactions, one after another, on `driver` (a DB-API connection; SQLite ones with
    `isolation_level=None`, so that we begin). `begin(write=True)` takes SQLite's write
    lock at once (`BEGIN IMMEDIATE`); PostgreSQL begins by itself on the first statement.
    After `commit()` the next statement begins a new transaction of the same kind."""

    def __init__(self, driver: Any, dialect: Dialect) -> None:
        self._driver = driver
        self._dialect = dialect
        self._postgresql = dialect.name == "postgresql"
        self._error: type[Exception] = dialect.loaded_dbapi.Error
        self._cursor: Any = driver.cursor()
        self._begin_sql: str | None = None
        self._open = False
        self.begun = 0
        """Transactions begun so far: what a repository keeps for the open transaction only
        is valid while this is unchanged."""
        self.writes = 0
        """INSERTs and UPDATEs run so far (a write that failed counts too): a unit of work
        that fails with this unchanged since its start left nothing to undo."""
        # PostgreSQL: writes not sent yet (SQL, parameters), in order.
        self._held: list[tuple[str, Any]] = []
        self.hold_appends = False
        """SQLite: hold `append`s back (the group commit's units on the event loop)."""
        # SQLite: appends held back, by SQL (in order), and the tables they go to.
        self._appends: dict[str, list[Sequence[Any]]] = {}
        self._append_tables: set[str] = set()

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    # -- statements -----------------------------------------------------------------------

    def fetch(self, statement: Statement, params: Mapping[str, Any]) -> list[Any]:
        """Every row of a SELECT (named tuples). With an IN list, `params[statement.in_list]`
        is the list of keys (one chunk: see `in_chunks`)."""
        compiled, found = self._select(statement, params)
        if compiled is None:
            return found
        make = compiled.row_type._make  # type: ignore[union-attr]
        return [make(row) for row in found]

    def fetch_tuples(self, statement: Statement, params: Mapping[str, Any]) -> list[Any]:
        """`fetch` with the rows as plain tuples of the selected columns in order: no named
        tuple made per row, for the bulk reads that unpack each row at once."""
        return self._select(statement, params)[1]

    def _select(self, statement: Statement, params: Mapping[str, Any]
                ) -> tuple[CompiledSql | None, list[Any]]:
        """The SELECT's compiled form (None when an empty IN list selects nothing without
        asking) and its rows as the driver gives them."""
        in_list = statement.in_list
        if in_list is None:
            compiled = statement.compiled_read(self._dialect)
            bound = compiled.bind(params)
        else:
            keys = params[in_list]
            if not keys:
                return None, []
            compiled = statement.compiled_read(self._dialect, len(keys))
            bound = _bound_with_list(compiled, params, in_list, keys)
        if not self._open:
            self.begin()
        if self._held:
            self._send_held()
        self._send_appends_touching(statement)
        try:
            cursor = self._cursor
            if in_list is not None and self._postgresql:
                cursor.execute(compiled.sql, bound, prepare=False)  # see _Bulk
            else:
                cursor.execute(compiled.sql, bound)
            found: list[Any] = cursor.fetchall()
        except self._error as error:
            raise translated_driver_error(compiled.sql, bound, error, self._error) from None
        return compiled, found

    def fetch_first(self, statement: Statement, params: Mapping[str, Any]) -> Any:
        """The first row of a SELECT without an IN list (a named tuple), or None."""
        compiled = statement.compiled_read(self._dialect)
        bound = compiled.bind(params)
        if not self._open:
            self.begin()
        if self._held:
            self._send_held()
        self._send_appends_touching(statement)
        try:
            cursor = self._cursor
            cursor.execute(compiled.sql, bound)
            found = cursor.fetchone()
        except self._error as error:
            raise translated_driver_error(compiled.sql, bound, error, self._error) from None
        if found is None:
            return None
        return compiled.row_type._make(found)  # type: ignore[union-attr]

    def write(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        """An INSERT or UPDATE of `rows`, which all have the same keys (a column or a
        `key_<column>` bind each)."""
        if not rows:
            return
        self.writes += 1
        keys = tuple(rows[0])
        many = len(rows) > 1
        compiled = statement.compiled_write(self._dialect, keys, many=many)
        sql = compiled.sql
        if not self._open:
            self.begin()
        if self._postgresql:
            if not many:
                self._held.append((sql, compiled.bind(rows[0])))
            else:
                self._held.append((sql, _Bulk(
                    {f"c{i}": [row[key] for row in rows] for i, key in enumerate(keys)})))
            return
        self._send_appends_touching(statement)
        cursor = self._cursor
        params: Any = None
        try:
            if not many:
                params = compiled.bind(rows[0])
                cursor.execute(sql, params)
            elif compiled.order is not None:
                order = compiled.order
                if len(order) > 1:
                    pick = itemgetter(*order)
                    params = [pick(row) for row in rows]
                else:
                    params = [(row[order[0]],) for row in rows]
                cursor.executemany(sql, params)
            else:
                params = list(rows)
                cursor.executemany(sql, params)
        except self._error as error:
            raise translated_driver_error(sql, None, error, self._error) from None

    def write_tuples(self, statement: Statement, keys: tuple[str, ...],
                     rows: Sequence[Sequence[Any]]) -> None:
        """`write` for rows given as tuples of values in `keys` order: no mapping built per
        row (the common offline sync path writes four rows per transaction)."""
        if not rows:
            return
        self.writes += 1
        many = len(rows) > 1
        compiled = statement.compiled_write(self._dialect, keys, many=many)
        sql = compiled.sql
        if not self._open:
            self.begin()
        if self._postgresql:
            if not many:
                self._held.append((sql, compiled.bind(dict(zip(keys, rows[0], strict=True)))))
            else:
                self._held.append((sql, _Bulk({f"c{i}": list(column) for i, column
                                               in enumerate(zip(*rows, strict=True))})))
            return
        self._send_appends_touching(statement)
        order = compiled.order
        params: Any = rows
        if order is None:
            params = [dict(zip(keys, row, strict=True)) for row in rows]
        elif order != keys:
            pick = itemgetter(*(keys.index(key) for key in order))
            params = [pick(row) for row in rows] if len(order) > 1 else [
                (row[keys.index(order[0])],) for row in rows]
        try:
            self._cursor.executemany(sql, params)
        except self._error as error:
            raise translated_driver_error(sql, None, error, self._error) from None

    def append(self, statement: Statement, keys: tuple[str, ...],
               rows: Sequence[Sequence[Any]]) -> None:
        """`write_tuples` of an INSERT of new rows (a journal entry, a request's result, a
        lock handed out). With `hold_appends` (SQLite), the rows are held back and sent with
        those of the same statement from the other units of the group, in one executemany,
        before the next statement that reads or writes the table, or by `send_appends`
        (before the COMMIT): one statement where a group ran one per unit. A failure then
        surfaces there, as HeldAppendsFailed."""
        if not self.hold_appends:
            self.write_tuples(statement, keys, rows)
            return
        if not rows:
            return
        compiled = statement.compiled_write(self._dialect, keys, many=False)
        if compiled.order != keys:
            self.write_tuples(statement, keys, rows)
            return
        self.writes += 1
        if not self._open:
            self.begin()
        held = self._appends.get(compiled.sql)
        if held is None:
            held = self._appends[compiled.sql] = []
            self._append_tables.update(statement.tables)
        held.extend(rows)

    def _send_appends_touching(self, statement: Statement) -> None:
        """Send the appends held back if `statement` reads or writes one of their tables."""
        if self._appends and not self._append_tables.isdisjoint(statement.tables):
            self.send_appends()

    def send_appends(self) -> None:
        """Send the appends held back (see `append`); HeldAppendsFailed if they fail."""
        appends, self._appends = self._appends, {}
        self._append_tables.clear()
        cursor = self._cursor
        for sql, rows in appends.items():
            try:
                cursor.executemany(sql, rows)
            except self._error as error:
                raise HeldAppendsFailed(
                    translated_driver_error(sql, None, error, self._error)) from None

    def write_rows(self, statement: Statement, keys: tuple[str, ...],
                   rows: Sequence[Sequence[Any]], shared: Mapping[str, Any] | None = None
                   ) -> None:
        """`write_tuples` for an INSERT or UPDATE of many rows (the common offline sync's),
        plus, for an INSERT, `shared` values of further columns, the same in every row.
        On SQLite as statements of `_ROWS_PER_STATEMENT` rows each (`Statement.compiled_rows`:
        one VALUES list, the shared values bound once): one execution of a statement
        rather than one per row, a quarter less work a row; the rows left over one by one.
        Elsewhere `write_tuples` itself."""
        fixed = tuple(shared or ())
        if (self._postgresql or len(rows) < _ROWS_PER_STATEMENT[-1]
                or (not _UPDATE_FROM and isinstance(statement.statement, Update))):
            if shared:
                values = tuple(shared.values())
                keys, rows = (*keys, *fixed), [(*row, *values) for row in rows]
            self.write_tuples(statement, keys, rows)
            return
        self._send_appends_touching(statement)  # the rows of the units before, in order
        self.writes += 1
        dialect = self._dialect
        first = [] if shared is None else list(shared.values())
        one = statement.compiled_rows(dialect, keys, 1, fixed)
        order = one.order
        if order is not None and order != keys:
            pick = itemgetter(*(keys.index(key) for key in order))
            rows = [pick(row) for row in rows] if len(order) > 1 else [
                (row[keys.index(order[0])],) for row in rows]
        if not self._open:
            self.begin()
        cursor = self._cursor
        start, count = 0, len(rows)
        sql = one.sql
        try:
            for size in _ROWS_PER_STATEMENT:
                if count - start < size:
                    continue
                sql = statement.compiled_rows(dialect, keys, size, fixed).sql
                while count - start >= size:
                    cursor.execute(sql, [*first, *chain.from_iterable(rows[start:start + size])])
                    start += size
            if start < count:
                if fixed:
                    sql = one.sql
                    cursor.executemany(sql, [(*first, *row) for row in rows[start:]])
                else:
                    sql = statement.compiled_write(dialect, keys, many=True).sql
                    cursor.executemany(sql, rows[start:])
        except self._error as error:
            raise translated_driver_error(sql, None, error, self._error) from None

    def insert_selected(self, statement: Statement, params: Mapping[str, Any]) -> int:
        """SQLite: an INSERT ... SELECT (of rows this transaction wrote already), run now;
        the number of rows it inserted."""
        if self._postgresql:
            raise TypeError("insert_selected is SQLite's (PostgreSQL's writes are held back)")
        self.writes += 1
        compiled = statement.compiled_write(self._dialect, (), many=False)
        bound = compiled.bind(params)
        if not self._open:
            self.begin()
        self._send_appends_touching(statement)
        cursor = self._cursor
        try:
            cursor.execute(compiled.sql, bound)
        except self._error as error:
            raise translated_driver_error(compiled.sql, bound, error, self._error) from None
        return int(cursor.rowcount)

    def notify(self, channel: str, payload: str) -> None:
        """Tell the other HQ processes on this database, once this transaction commits:
        PostgreSQL's NOTIFY on `channel`; on SQLite a row in the notifications table, which
        every process on the file follows (parameter_changes)."""
        if self._postgresql:
            self._execute("SELECT pg_notify(%(channel)s, %(payload)s)",
                          {"channel": channel, "payload": payload})
            return
        self.writes += 1
        self._execute(_NOTIFY_SQLITE, {"channel": channel, "payload": payload,
                                       "created_at": time.time_ns() // 1000})
        self._execute(_PRUNE_NOTIFICATIONS_SQLITE, {"kept": NOTIFICATIONS_KEPT})

    # -- the transaction ------------------------------------------------------------------

    def begin(self, *, write: bool | None = None) -> None:
        """Begin a transaction (`write`: on SQLite, take the write lock now; None: the same
        kind as the previous one)."""
        if write is not None:
            self._begin_sql = None if self._postgresql else (
                "BEGIN IMMEDIATE" if write else "BEGIN"
            )
        self._open = True
        self.begun += 1
        if self._begin_sql is not None:
            try:
                self._cursor.execute(self._begin_sql)
            except self._error as error:
                self._open = False
                raise translated_driver_error(
                    self._begin_sql, None, error, self._error
                ) from None

    def commit(self) -> None:
        if self._appends:  # sent by the group commit before; a failure leaves tx open
            self.send_appends()
        try:
            if self._held:
                self._send_held(commit=True)
            elif self._postgresql:
                self._driver.commit()
            else:
                # On the cursor, whose statement cache keeps it prepared: the sqlite3
                # module's own commit() prepares "COMMIT" anew each time (SQLite's parser,
                # ~3K instructions a commit).
                self._cursor.execute("COMMIT")
        except self._error as error:
            raise translated_driver_error("COMMIT", None, error, self._error) from None
        finally:
            self._open = False

    def rollback(self) -> None:
        """Roll back whatever is open (nothing happens when nothing is)."""
        self._open = False
        self._held.clear()
        self._appends.clear()
        self._append_tables.clear()
        try:
            self._driver.rollback()
        except self._error as error:
            raise translated_driver_error("ROLLBACK", None, error, self._error) from None

    @property
    def is_open(self) -> bool:
        """Whether a transaction is open on the connection (SQLite ends one by itself on
        some errors: disk full, I/O error)."""
        if not self._open:
            return False
        if self._postgresql:
            return True
        return bool(self._driver.in_transaction)

    def set_busy_timeout(self, milliseconds: int) -> None:
        """SQLite: how long a statement waits for another connection's lock (0: fail at
        once with ConcurrentUpdate). A setting of the connection, not of a transaction."""
        sql = f"PRAGMA busy_timeout={int(milliseconds)}"
        try:
            self._cursor.execute(sql)
        except self._error as error:
            raise translated_driver_error(sql, None, error, self._error) from None

    def close(self) -> None:
        """Roll back what was not committed; the connection stays the caller's."""
        try:
            if self._open:
                self.rollback()
        finally:
            self._cursor.close()

    # -- a savepoint (SQLite: storage.offline_repositories' first deliveries) -------------

    @property
    def is_sqlite(self) -> bool:
        return not self._postgresql

    def savepoint(self, name: str) -> int:
        """SAVEPOINT `name` (an identifier of ours); returns the writes so far, for
        `rollback_to`."""
        self._execute(f"SAVEPOINT {name}", None)
        return self.writes

    def release(self, name: str) -> None:
        """RELEASE `name`: what was written since it stays in the transaction."""
        self._execute(f"RELEASE {name}", None)

    def rollback_to(self, name: str, writes: int) -> None:
        """Undo what was written since SAVEPOINT `name` (which `savepoint` gave `writes`),
        and release it: the transaction goes on as it was then."""
        self._execute(f"ROLLBACK TO {name}", None)
        self._execute(f"RELEASE {name}", None)
        self.writes = writes

    def _send_held(self, *, commit: bool = False) -> None:
        """PostgreSQL: send the writes held back (and the COMMIT) in one pipeline; the first
        failure among them is raised once the pipeline has synced."""
        held, self._held = self._held, []
        cursor = self._cursor
        try:
            with self._driver.pipeline():
                for sql, params in held:
                    if type(params) is _Bulk:
                        cursor.execute(sql, params, prepare=False)
                    else:
                        cursor.execute(sql, params)
                if commit:
                    self._driver.commit()
        except self._error as error:
            if commit:  # the COMMIT was skipped after the failure: end the transaction
                self._driver.rollback()
            raise translated_driver_error(
                "a pipeline of writes", None, error, self._error) from None

    def _execute(self, sql: str, params: Any) -> None:
        if not self._open:
            self.begin()
        if self._held:
            self._send_held()
        if self._appends:
            self.send_appends()
        try:
            if params is None:
                self._cursor.execute(sql)
            else:
                self._cursor.execute(sql, params)
        except self._error as error:
            raise translated_driver_error(sql, params, error, self._error) from None


def _bound_with_list(
    compiled: CompiledSql, params: Mapping[str, Any], in_list: str, keys: Sequence[Any]
) -> Any:
    defaults = compiled.defaults
    merged = {**defaults, **params} if defaults else params
    order = compiled.order
    if order is None:
        bound = {name: value for name, value in merged.items() if name != in_list}
        for i, key in enumerate(keys):
            bound[f"{in_list}_{i}"] = key
        return bound
    values: list[Any] = []
    for name in order:
        if name == in_list:
            values.extend(keys)
        else:
            values.append(merged[name])
    return tuple(values)
