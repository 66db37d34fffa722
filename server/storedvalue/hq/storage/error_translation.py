"""What the databases' failures mean to the services: a lost race becomes ConcurrentUpdate
(the unit of work is retried); anything else stays the SQLAlchemy error it is."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy.exc import DBAPIError, IntegrityError

from storedvalue.hq.services.unit_of_work import ConcurrentUpdate
from storedvalue.hq.storage.sqlalchemy_internals import wrap_driver_error

# PostgreSQL SQLSTATEs that mean "another transaction got there first".
_PG_RACES = {
    "23505": "unique key taken",
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available",
}
_SQLITE_UNIQUE = {"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


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


def translated(error: DBAPIError) -> Exception:
    """ConcurrentUpdate for a lost race, else `error` itself."""
    race = as_concurrent_update(error)
    return error if race is None else race


def translated_driver_error(
    sql: str, params: Any, error: Exception, dbapi_error: type[Exception]
) -> Exception:
    """A raw driver exception, as the services should see it."""
    wrapped = wrap_driver_error(sql, params, error, dbapi_error)
    return translated(wrapped) if isinstance(wrapped, DBAPIError) else wrapped
