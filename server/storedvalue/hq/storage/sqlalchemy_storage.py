"""The storage contract on SQLAlchemy Core: SQLite (file or memory) and PostgreSQL.

Core, not ORM sessions: rows map straight to the domain's objects, and every repository
method that takes or returns many rows is one bulk statement (or one per IN-list chunk).
"""

from __future__ import annotations

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
        self.cards = SqlCardRepository(tx, self._seen)
        self.lock_history = SqlLockHistoryRepository(tx)
        self.journal = SqlJournalRepository(tx)
        self.redemptions = SqlRedemptionRepository(tx)
        self.requests = SqlRequestLog(tx)
        self.offline = SqlOfflineRecordRepository(tx)
        self.exceptions = SqlOfflineExceptionRepository(tx)
        self.parameters = SqlParametersRepository(tx)
        self.terminals = SqlTerminalRepository(tx)
        self.reports = SqlTerminalReportRepository(tx)

    def start_unit(self) -> None:
        """Forget what a unit that did not commit left seen."""
        self._seen.clear()

    def end_unit(self) -> None:
        """The unit is about to commit (or release its savepoint): append the journal
        entries its cards recorded."""
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
