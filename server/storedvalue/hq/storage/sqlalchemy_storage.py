"""The storage contract on SQLAlchemy Core: SQLite (file or memory) and PostgreSQL.

Core, not ORM sessions: rows map straight to the domain's objects, and every repository
method that takes or returns many rows is one bulk statement (or one per IN-list chunk).
"""

from __future__ import annotations

import logging
import select
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.pool import PoolProxiedConnection

from storedvalue.hq.services.unit_of_work import (
    CardRepository,
    JournalRepository,
    LockHistoryRepository,
    OfflineExceptionRepository,
    OfflineRecordRepository,
    ParametersRepository,
    RedemptionRepository,
    RequestLog,
    SeenCards,
    TerminalReportRepository,
    TerminalRepository,
)
from storedvalue.hq.storage.card_repositories import (
    JournaledDebits,
    SqlCardRepository,
    SqlJournalRepository,
    SqlLockHistoryRepository,
    SqlRedemptionRepository,
)
from storedvalue.hq.storage.configuration_repositories import (
    SqlParametersRepository,
    SqlRequestLog,
    SqlTerminalReportRepository,
    SqlTerminalRepository,
)
from storedvalue.hq.storage.engines import open_engine
from storedvalue.hq.storage.offline_repositories import (
    SqlOfflineExceptionRepository,
    SqlOfflineRecordRepository,
)
from storedvalue.hq.storage.transaction import Transaction

log = logging.getLogger(__name__)


class SqlStorage:
    """Units of work on one database. Build it with `SqlStorage.from_url(url)` (it then owns
    its engine and `close()` disposes of it) or around an engine you own."""

    def __init__(self, engine: Engine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine

    @classmethod
    def from_url(cls, url: str | URL, *, pool_size: int = 8) -> SqlStorage:
        return cls(open_engine(url, pool_size=pool_size), owns_engine=True)

    def unit_of_work(self, *, write: bool) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, write=write)

    def connect(self) -> tuple[PoolProxiedConnection, Transaction]:
        """A pooled connection kept for long (a writer or reader thread of the executor),
        and its Transaction. Give it back with `.close()` on the pooled connection."""
        pooled = self.engine.raw_connection()
        try:
            return pooled, Transaction(pooled.dbapi_connection, self.engine.dialect)
        except BaseException:
            pooled.close()
            raise

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()


class SqlRepositories:
    """The repositories over one Transaction. Group commit runs many units of work on one
    set, each between `start_unit` and `end_unit`."""

    cards: CardRepository
    lock_history: LockHistoryRepository
    journal: JournalRepository
    redemptions: RedemptionRepository
    requests: RequestLog
    offline: OfflineRecordRepository
    exceptions: OfflineExceptionRepository
    parameters: ParametersRepository
    terminals: TerminalRepository
    reports: TerminalReportRepository

    def __init__(self, tx: Transaction) -> None:
        self._seen = SeenCards()
        self._journaled = journaled = JournaledDebits(tx)
        self.cards = SqlCardRepository(tx, self._seen, journaled)
        self.lock_history = SqlLockHistoryRepository(tx)
        self.journal = SqlJournalRepository(tx, journaled)
        self.redemptions = SqlRedemptionRepository(tx, journaled)
        self.requests = SqlRequestLog(tx)
        self.offline = SqlOfflineRecordRepository(tx)
        self.exceptions = SqlOfflineExceptionRepository(tx)
        self.parameters = SqlParametersRepository(tx)
        self.terminals = SqlTerminalRepository(tx)
        self.reports = SqlTerminalReportRepository(tx)

    def start_unit(self) -> None:
        """Forget what a unit that did not commit left seen (and the cards' last journal
        entries it read)."""
        self._seen.clear()
        self._journaled.last_entries = self._journaled.new_last_entries = None

    def end_unit(self) -> None:
        """The unit is about to commit (or end, in a group): append the journal
        entries its cards recorded (and the cards' last entries a common batch left)."""
        self._journaled.write_new_last_entries()
        self._seen.append_journal(self.journal)


class SqlUnitOfWork(SqlRepositories):
    """One database transaction on a pooled connection: begun on entry (`BEGIN IMMEDIATE`
    on SQLite when writing), rolled back on exit unless committed."""

    def __init__(self, engine: Engine, *, write: bool) -> None:
        self._engine = engine
        self._write = write
        self._pooled: PoolProxiedConnection | None = None
        self._tx: Transaction | None = None

    def __enter__(self) -> Self:
        pooled = self._pooled = self._engine.raw_connection()
        try:
            tx = self._tx = Transaction(pooled.dbapi_connection, self._engine.dialect)
            tx.begin(write=self._write)
        except BaseException:
            self._release()
            raise
        super().__init__(tx)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def commit(self) -> None:
        if self._tx is None:
            raise RuntimeError("commit() outside the unit of work's `with` block")
        self.end_unit()
        self._tx.commit()

    def _release(self) -> None:
        tx, self._tx = self._tx, None
        pooled, self._pooled = self._pooled, None
        try:
            if tx is not None:
                tx.close()
        finally:
            if pooled is not None:
                pooled.close()


class ThreadSessions:
    """The storage for an executor's threads (PostgreSQL's): each thread keeps one pooled
    connection, its Transaction and its repositories from one unit of work to the next,
    instead of a pool checkout (with its liveness ping, a round trip) and new objects for
    every unit. Before each unit, a look at the connection's socket (no round trip) tells
    whether the server said something unasked, which an idle connection only hears when it
    is being ended (the server restarted, the backend was terminated): such a connection is
    dropped and the thread connects again, as the pool's ping did. A connection that breaks
    during a unit is dropped after it. `close()` gives the connections back (once the
    threads are done); the engine stays the storage's."""

    def __init__(self, storage: SqlStorage) -> None:
        self._storage = storage
        self._local = threading.local()
        self._sessions: set[_Session] = set()
        self._lock = threading.Lock()

    def unit_of_work(self, *, write: bool) -> _HeldUnitOfWork:
        session: _Session | None = getattr(self._local, "session", None)
        if session is not None and session.stale():
            session.drop()
            session = None
        if session is None:
            session = _Session(self._storage, self._forget)
            self._local.session = session
            with self._lock:
                self._sessions.add(session)
        return session.unit_of_work(write)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, set()
        for session in sessions:
            session.release()

    def _forget(self, session: _Session) -> None:
        if getattr(self._local, "session", None) is session:
            self._local.session = None
        with self._lock:
            self._sessions.discard(session)


class _Session:
    """One thread's connection and repositories."""

    def __init__(self, storage: SqlStorage, forget: Callable[[_Session], None]) -> None:
        self._pooled, self._tx = storage.connect()
        self._repositories = SqlRepositories(self._tx)
        self._forget = forget

    def unit_of_work(self, write: bool) -> _HeldUnitOfWork:
        return _HeldUnitOfWork(self, self._tx, self._repositories, write)

    def ended(self) -> None:
        """After a unit of work: roll back what it left open; a broken connection is
        given back (invalidated) and the thread connects again next time. Raises nothing:
        the unit's own outcome (its result, or the error that ended it) is what counts."""
        try:
            if self._tx.is_open:
                self._tx.rollback()
        except Exception:
            log.warning("dropping a database connection that failed to roll back",
                        exc_info=True)
            self.drop()
            return
        if getattr(self._pooled.dbapi_connection, "broken", False):
            self.drop()

    def stale(self) -> bool:
        """Whether the connection broke, or the server wrote to it while it was idle."""
        driver = self._pooled.dbapi_connection
        if driver is None or getattr(driver, "broken", False) or getattr(driver, "closed", False):
            return True
        # poll, not select: a replica serving thousands of tills has its database sockets
        # past select's 1,024 descriptors, where select fails (and every unit would connect
        # again).
        poller = select.poll()
        try:
            poller.register(driver.fileno(), select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def release(self) -> None:
        try:
            self._tx.close()
        finally:
            self._pooled.close()

    def drop(self) -> None:
        """Give the connection back as unusable; the thread's next unit connects again."""
        self._forget(self)
        try:
            self._pooled.invalidate()
            self._pooled.close()
        except Exception:
            log.warning("releasing a broken database connection failed", exc_info=True)


class _HeldUnitOfWork:
    """A unit of work on a thread's held connection (the UnitOfWork protocol)."""

    def __init__(self, session: _Session, tx: Transaction, repositories: SqlRepositories,
                 write: bool) -> None:
        self._session = session
        self._tx = tx
        self._write = write
        self._repositories = r = repositories
        self.cards = r.cards
        self.lock_history = r.lock_history
        self.journal = r.journal
        self.redemptions = r.redemptions
        self.requests = r.requests
        self.offline = r.offline
        self.exceptions = r.exceptions
        self.parameters = r.parameters
        self.terminals = r.terminals
        self.reports = r.reports

    def __enter__(self) -> Self:
        try:
            self._tx.begin(write=self._write)
        except BaseException:
            self._session.ended()
            raise
        self._repositories.start_unit()  # the held repositories outlive units: start clean
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session.ended()

    def commit(self) -> None:
        self._repositories.end_unit()  # the journal its cards recorded
        self._tx.commit()
