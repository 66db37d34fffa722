"""Every use of SQLAlchemy's private or undocumented APIs, in one module, for the versions of
SQLAlchemy pinned in pyproject.toml. `SUPPORTED_SQLALCHEMY` repeats that pin (a unit test
checks that the two agree): moving the pin means re-reading this module against the new
version's sources.

What we rely on, and why:
- a compiled statement's SQL text, its positional parameter order (`positiontup`) and its
  literal binds (`binds`), so the storage runs statements on the driver's cursor: the
  online calls and the offline sync cannot afford SQLAlchemy's per-execution work;
- the placeholder an expanding IN bind renders as before execution (`__[POSTCOMPILE_x]`),
  spliced once per list length instead of on every execution;
- `DBAPIError.instance`, which wraps a driver exception the way SQLAlchemy itself does;
- `StaticPool._do_get` / `_do_return_conn`, to lend a SQLite memory database's only
  connection to one checkout at a time.
"""

from __future__ import annotations

import threading
from collections import namedtuple
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from sqlalchemy import Dialect, Insert, Select, Update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

SUPPORTED_SQLALCHEMY = ">=2.0.30,<2.2"


@dataclass(frozen=True, slots=True)
class CompiledSql:
    """SQL text for one dialect: `order` is the parameter order for positional paramstyles
    (None for named ones), `defaults` the values of binds the statement carries itself
    (a LIMIT), `row_type` the named tuple rows come back as (None for writes), and `bind`
    turns parameters by name into the driver's (a tuple in `order` for positional
    paramstyles, else a mapping; statements without an IN list)."""

    sql: str
    order: tuple[str, ...] | None
    defaults: dict[str, Any]
    row_type: type[tuple[Any, ...]] | None
    bind: Callable[[Mapping[str, Any]], Any]


def _binder_for(order: tuple[str, ...] | None, defaults: dict[str, Any]
                ) -> Callable[[Mapping[str, Any]], Any]:
    if order is None:
        if not defaults:
            return lambda params: params
        return lambda params: {**defaults, **params}
    if not order:
        return lambda _params: ()
    pick = itemgetter(*order)
    if len(order) == 1:
        if defaults:
            return lambda params: (pick({**defaults, **params}),)
        return lambda params: (pick(params),)
    if defaults:
        return lambda params: pick({**defaults, **params})
    return pick


def compile_statement(
    statement: Select[Any] | Insert | Update,
    dialect: Dialect,
    column_keys: tuple[str, ...] | None = None,
) -> CompiledSql:
    compiled = statement.compile(
        dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
    )
    # Only binds that carry their value (a LIMIT): the column binds of an INSERT or UPDATE
    # are `required` and hold a REQUIRED marker, not a value; with them here every write
    # merged its parameters into a dict of markers first (~5,000 instructions a row).
    defaults = {
        name: bind.effective_value
        for name, bind in compiled.binds.items()
        if bind.value is not None and not bind.required
    }
    order = tuple(compiled.positiontup or ()) if dialect.positional else None
    row_type: type[tuple[Any, ...]] | None = None
    if isinstance(statement, Select):
        row_type = namedtuple("Row", statement.selected_columns.keys())  # type: ignore[misc,no-redef]
    return CompiledSql(str(compiled), order, defaults, row_type, _binder_for(order, defaults))


def with_in_list(compiled: CompiledSql, dialect: Dialect, bind: str, count: int) -> CompiledSql:
    """`compiled` (from a statement with the expanding bind `bind`) for a list of `count`
    values: named paramstyles get `<bind>_<i>` names, positional ones `count` markers in
    `bind`'s place of the parameter order (the caller spreads the list there)."""
    if dialect.paramstyle == "qmark":
        placeholders = ", ".join(["?"] * count)
    elif dialect.paramstyle == "pyformat":
        placeholders = ", ".join(f"%({bind}_{i})s" for i in range(count))
    else:
        raise ValueError(f"unsupported paramstyle {dialect.paramstyle!r}")
    sql = compiled.sql.replace(f"__[POSTCOMPILE_{bind}]", placeholders)
    return CompiledSql(sql, compiled.order, compiled.defaults, compiled.row_type, compiled.bind)


def wrap_driver_error(
    sql: str, params: Any, error: Exception, dbapi_error: type[Exception]
) -> Exception:
    """The SQLAlchemy exception (IntegrityError, OperationalError, ...) for a driver error."""
    return DBAPIError.instance(sql, params, error, dbapi_error)


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
