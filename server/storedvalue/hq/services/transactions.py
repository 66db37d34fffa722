"""Running use cases' units of work on the database, with concurrency of the database's own.

A use case builds its unit of work as a closure over the repositories and awaits the
executor: `await transactions.write(work)`. The executor decides where and in which
transaction the closure runs (a bounded set of threads sized for the database, never one per
caller), retries it when it loses a race, and answers only once its effect is committed. A
closure may run more than once (retries), so it starts from what it reads, never from state
left by an earlier run.

Two executors: `ThreadedTransactions` here (PostgreSQL's connection pool, and the in-memory
fake the service tests use): each unit its own transaction on one of N threads; and the
SQLite group commit in `storedvalue.hq.storage.group_commit`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

from storedvalue.hq.domain.errors import HQBusy
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Repositories, Storage

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8

Work = Callable[[Repositories], T]


class Transactions(Protocol):
    """The executor the services hand their units of work to."""

    async def write(self, work: Work[T], *, large: bool = False) -> T:
        """Run `work` in a writing transaction and commit it; return once it is durable.
        A domain error rolls back `work` alone and propagates; a unit that loses a race
        through every retry raises HQBusy. `large`: the unit takes long (an offline
        batch), so the executor keeps it off the event loop's thread."""
        ...

    async def read(self, work: Work[T]) -> T:
        """Run `work` in a reading transaction (it must not write)."""
        ...

    def close(self) -> None:
        """Finish what was submitted, then release threads and connections."""
        ...


def run_in_transaction(storage: Storage, work: Work[T], *, write: bool = True) -> T:
    """Run `work` in a unit of work and commit it, on the calling thread. Domain errors roll
    back and propagate (nothing changed); a lost race (`ConcurrentUpdate`) rolls back and
    runs `work` again on fresh data, with a short jittered pause so racing replicas spread
    out."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with storage.unit_of_work(write=write) as uow:
                result = work(uow)
                if write:
                    uow.commit()
                return result
        except ConcurrentUpdate as lost:
            if attempt == MAX_ATTEMPTS:
                # A status the till understands as transient (UNAVAILABLE), not INTERNAL.
                raise HQBusy() from lost
            log.debug("concurrent update, retrying (attempt %d)", attempt)
            time.sleep(random.uniform(0, 0.002 * attempt))  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable")


class ThreadedTransactions:
    """Each unit of work in its own transaction, on one of `threads` threads: as many
    transactions at once as the database has connections for this process (PostgreSQL's
    pool size), however many callers wait."""

    def __init__(self, storage: Storage, *, threads: int, owns_storage: bool = False) -> None:
        """`owns_storage`: `close()` closes `storage` too, once the threads are done."""
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self._storage = storage
        self._owns_storage = owns_storage
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hq-database")

    async def write(self, work: Work[T], *, large: bool = False) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, run_in_transaction, self._storage, work
        )

    async def read(self, work: Work[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, _read, self._storage, work
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._owns_storage:
            self._storage.close()


def _read(storage: Storage, work: Work[T]) -> T:
    return run_in_transaction(storage, work, write=False)
