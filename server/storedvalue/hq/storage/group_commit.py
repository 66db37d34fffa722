"""SQLite's transaction executor: one writer with group commit, and readers of their own.

SQLite has one write lock per database, and with `synchronous=FULL` each commit is an fsync.
So one writer thread takes the units of work that arrived together and runs them one after
another in ONE transaction, each inside its own savepoint: a unit that fails (a business
error, a bug) rolls back to its savepoint alone and the others go on; a unit that loses a
race (a card number already taken) is retried alone. Then ONE COMMIT, one fsync, and only
then are the callers answered: nobody hears "done" before their change is durable. Answers
go back to the event loop in one hand-over per group, not one per caller.

Readers (GetCard, GetParameters, the back-office lists) run on reader threads with their
own connections (WAL: readers never wait for the writer), also a batch at a time.

A SQLite memory database has one connection: readers are not possible, so reads join the
writer's groups, and the writer borrows the connection per group (other users of the same
storage take turns with it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.pool import PoolProxiedConnection

from storedvalue.hq.domain.errors import HQBusy
from storedvalue.hq.services.transactions import MAX_ATTEMPTS, Work
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate
from storedvalue.hq.storage.engines import is_sqlite_memory
from storedvalue.hq.storage.sqlalchemy_storage import SqlRepositories, SqlStorage
from storedvalue.hq.storage.transaction import Transaction

T = TypeVar("T")
log = logging.getLogger(__name__)

# Units per group: enough to amortize one fsync over a burst, few enough that the first
# caller of a group is not kept waiting behind hundreds of others.
MAX_GROUP = 128

_STOP = object()

# (work, the future its caller awaits)
_Unit = tuple[Callable[[Any], Any], "asyncio.Future[Any]"]
# (future, succeeded, result or exception)
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class GroupCommitTransactions:
    """The `Transactions` executor for a SQLite database: one writer thread, `readers`
    reader threads (none for a memory database)."""

    def __init__(self, storage: SqlStorage, *, readers: int = 2,
                 max_group: int = MAX_GROUP) -> None:
        if storage.engine.dialect.name != "sqlite":
            raise ValueError("group commit is SQLite's executor")
        self._storage = storage
        self._memory = is_sqlite_memory(storage.engine.url)
        self._max_group = max_group
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._write_loop, name="hq-sqlite-writer", daemon=True)
        ]
        reader_count = 0 if self._memory else readers
        self._threads += [
            threading.Thread(target=self._read_loop, name=f"hq-sqlite-reader-{n}", daemon=True)
            for n in range(reader_count)
        ]
        if reader_count == 0:
            self._reads = self._writes
        for thread in self._threads:
            thread.start()

    async def write(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writes.put((work, future))
        return await future

    async def read(self, work: Work[T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._reads.put((work, future))
        return await future

    def close(self) -> None:
        """Finish the units already submitted, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        if self._reads is not self._writes:
            for _reader in self._threads[1:]:
                self._reads.put(_STOP)
        self._writes.put(_STOP)
        for thread in self._threads:
            thread.join()

    # -- the writer -----------------------------------------------------------------------

    def _write_loop(self) -> None:
        held: tuple[PoolProxiedConnection, Transaction] | None = None
        try:
            while True:
                group, stop = _take(self._writes, self._max_group)
                if group:
                    if held is None:
                        held = self._storage.connect()
                    try:
                        _deliver(self._run_group(held[1], group))
                    finally:
                        if self._memory:  # let other users of the one connection have it
                            _release(held)
                            held = None
                if stop:
                    return
        finally:
            if held is not None:
                _release(held)

    def _run_group(self, tx: Transaction, group: list[_Unit]) -> list[_Outcome]:
        repositories = SqlRepositories(tx)
        try:
            tx.begin(write=True)
        except Exception as error:  # still locked after the busy timeout, or worse
            failure = HQBusy() if isinstance(error, ConcurrentUpdate) else error
            return [(future, False, failure) for _work, future in group]
        outcomes: list[_Outcome] = []
        for index, (work, future) in enumerate(group):
            if future.cancelled():  # the caller is gone (deadline, cancelled): skip it
                continue
            succeeded, value = _run_unit(tx, repositories, work)
            if not tx.is_open:
                # SQLite rolled the whole transaction back by itself (disk full, I/O
                # error): nothing of this group is kept (its callers may retry: nothing
                # was applied), and the units after this one run in a new transaction.
                log.error("the group's transaction was lost", exc_info=value)
                lost: list[_Outcome] = [(f, False, HQBusy()) for f, ok, _ in outcomes if ok]
                lost += [(f, ok, v) for f, ok, v in outcomes if not ok]
                lost.append((future, False, value if not succeeded else HQBusy()))
                rest = group[index + 1:]
                return lost + (self._run_group(tx, rest) if rest else [])
            outcomes.append((future, succeeded, value))
        try:
            tx.commit()
        except Exception as error:
            log.error("group commit failed", exc_info=error)
            if tx.is_open:
                tx.rollback()
            failure = HQBusy() if isinstance(error, ConcurrentUpdate) else error
            return [(future, False, failure if ok else value) for future, ok, value in outcomes]
        return outcomes

    # -- the readers ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        pooled, tx = self._storage.connect()
        repositories = SqlRepositories(tx)
        try:
            while True:
                group, stop = _take(self._reads, self._max_group)
                if group:
                    _deliver(self._run_reads(tx, repositories, group))
                if stop:
                    return
        finally:
            _release((pooled, tx))

    @staticmethod
    def _run_reads(tx: Transaction, repositories: SqlRepositories, group: list[_Unit]
                   ) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        for work, future in group:
            if future.cancelled():
                continue
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    if not tx.is_open:
                        tx.begin(write=False)
                    outcomes.append((future, True, work(repositories)))
                except ConcurrentUpdate as lost:
                    tx.rollback()
                    if attempt < MAX_ATTEMPTS:
                        continue
                    outcomes.append((future, False, HQBusy()))
                    log.debug("read lost every retry", exc_info=lost)
                except Exception as error:
                    outcomes.append((future, False, error))
                break
        if tx.is_open:
            tx.rollback()  # a reader's transaction only pins its snapshot
        return outcomes


def _run_unit(tx: Transaction, repositories: SqlRepositories, work: Callable[[Any], Any]
              ) -> tuple[bool, Any]:
    """One unit in its own savepoint: (True, result) or (False, exception)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            tx.savepoint()
            result = work(repositories)
            tx.release_savepoint()
        except ConcurrentUpdate as lost:
            if not _undo(tx):
                return False, lost
            if attempt == MAX_ATTEMPTS:
                return False, HQBusy()
            continue
        except Exception as error:
            _undo(tx)
            return False, error
        return True, result
    raise AssertionError("unreachable")


def _undo(tx: Transaction) -> bool:
    """Roll back to the unit's savepoint; False when the transaction itself is gone."""
    if not tx.is_open:
        return False
    try:
        tx.rollback_to_savepoint()
    except Exception:
        log.exception("rolling back to a savepoint failed")
        return False
    return tx.is_open


def _take(source: queue.SimpleQueue[Any], limit: int) -> tuple[list[_Unit], bool]:
    """Wait for one unit, then take whatever else is already waiting (up to `limit`).
    Returns the units and whether a stop was requested."""
    first = source.get()
    if first is _STOP:
        return [], True
    group = [first]
    while len(group) < limit:
        try:
            unit = source.get_nowait()
        except queue.Empty:
            break
        if unit is _STOP:
            return group, True
        group.append(unit)
    return group, False


def _deliver(outcomes: list[_Outcome]) -> None:
    """Answer the callers: one hand-over to each event loop for the whole group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, settled in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            log.debug("answers for a closed event loop dropped")


def _settle(outcomes: list[_Outcome]) -> None:
    for future, succeeded, value in outcomes:
        if future.done():  # cancelled while the unit ran
            continue
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)


def _release(held: tuple[PoolProxiedConnection, Transaction]) -> None:
    pooled, tx = held
    try:
        tx.close()
    finally:
        pooled.close()
