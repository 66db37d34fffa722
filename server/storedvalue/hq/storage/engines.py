"""Engines for the HQ database.

SQLite (the embedded default): WAL, `synchronous=FULL`, a busy timeout, foreign keys on, and
transactions begun by us rather than by the driver, so a writing transaction takes the write
lock at once (`BEGIN IMMEDIATE`) instead of failing half-way when it first writes. A
":memory:" database is one shared connection, used by one unit of work at a time.

PostgreSQL (`postgresql+psycopg://...`): READ COMMITTED plus row locks
(`SELECT ... FOR UPDATE`), which is what several HQ replicas on one database rely on.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from storedvalue.hq.storage.sqlalchemy_internals import SerialStaticPool

# Execution option a writing SQLAlchemy connection (migrations) sets before it begins.
WRITE_OPTION = "storedvalue_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 32 * 1024  # per connection; see _on_connect
WAL_AUTOCHECKPOINT_PAGES = 8192  # see _on_connect (HQ's writer checkpoints apart: checkpoints)


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
    its transaction fails with ConcurrentUpdate."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, pool_size, sqlite_busy_timeout_ms)
    if backend == "postgresql":
        # psycopg prepares a statement after a few runs, and PostgreSQL then soon settles on
        # a generic plan: right for a lookup by key, but one costed when our tables were
        # small could seq-scan a big IN list. The storage sends those reads, and its writes
        # of many rows, unprepared (transaction._Bulk), planned at every run; the others
        # keep their generic plans (`plan_cache_mode = force_custom_plan` for the whole
        # session, as before, planned an online call's every statement at every run).
        return create_engine(
            parsed,
            isolation_level="READ COMMITTED",
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
        )
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
                _use_wal(cursor, busy_timeout_ms)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Checkpoint every 8192 pages (32 MiB of WAL) rather than 1000: a busy sync rewrites
            # the same card and lock pages often, and fewer, larger checkpoints write each once.
            # Durability is unchanged: every commit is fsynced in the WAL (synchronous=FULL).
            cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
            # A page cache of up to 32 MiB a connection instead of SQLite's 2 MB: a sync
            # updates cards and their lock history at random places (and, before 0008, the
            # journal's index by card), and with
            # 100,000 cards those B-trees (~27 MB) no longer fit in 2 MB, so most lookups
            # re-read a page from the file (a pread each). The cache grows only as pages are
            # touched; the writer keeps its pages across transactions, while a reader's cache
            # is emptied whenever it finds that the writer has committed since its last read,
            # so with the default 4 connections (1 writer, 3 readers) the bound of 128 MiB is
            # approached only by a large, otherwise idle database. mmap_size was measured too
            # and not kept: pages the WAL holds are still read with pread, and it saved less.
            cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # SQLAlchemy connections (migrations, tests) begin here; the storage's own
        # transactions begin on the driver (see Transaction) and are left be.
        if connection.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
            return
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


# Between two tries at switching a new database file to WAL (s).
_WAL_RETRY_PAUSE = 0.01


def _use_wal(cursor: Any, busy_timeout_ms: int) -> None:
    """PRAGMA journal_mode=WAL, waiting for the database as long as the busy timeout: the
    switch of a new file to WAL takes a lock SQLite does not wait for (no busy handler), so
    two HQ processes opening a new file at once had one fail with "database is locked" as
    it started (4 tries in 12). Once the file is in WAL, the pragma finds it so at once."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            busy = getattr(error, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY,
                                                                 sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(_WAL_RETRY_PAUSE)
