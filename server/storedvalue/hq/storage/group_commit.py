"""SQLite's transaction executor: one writer with group commit, and readers of their own.

SQLite has one write lock per database, and with `synchronous=FULL` each commit is an fsync.
So one writer takes the units of work that arrived together and runs them one after another
in ONE transaction: a unit that fails (a business error, a bug) fails alone and the others
go on; a unit that loses a race (a card number already taken) is retried alone. Then ONE
COMMIT, one fsync, and only then are the callers answered: nobody hears "done" before their
change is durable.

No savepoint per unit (two statements each, and SQLite's bookkeeping to go back to one): a
unit almost always fails, if it does, on a rule checked before its first write, which
leaves nothing to undo. One that fails after writing takes the transaction back to its
start, and the units that had succeeded in it run again, in order, before the group goes on
(`_run_units`).

On the loop, a group's appends (INSERTs of new rows: journal entries, requests' results,
locks handed out; `Transaction.append`) are held back and sent together, one executemany per
statement for the whole group, before the first statement that touches their table or at
the group's end, before its COMMIT. If they fail there, the unit at fault is not known: the
transaction goes back to its start and the group's units run again with appends written at
once, so that unit fails alone as above (`_run_units`).

Where the writer runs: a unit of an online call is a few statements that never wait (the
transaction already holds the write lock), so the units run on the event loop's own thread,
and only what waits goes to the writer thread: the COMMIT (the fsync), a BEGIN that finds
the database locked by another process (the thread waits and begins; the units then run on
the loop, with those that arrived meanwhile), and large units (an offline batch), which run
there whole so the loop keeps serving meanwhile. Running small units on the loop costs far
less than handing each statement's GIL back and forth between two busy threads.

Gathering under load: a group is the units that arrived while the writer was busy, so when
calls come faster than commits the groups fill by themselves; but with fewer callers than
that, each commit (an fdatasync, several virtual-disk round trips on a VM, 0.4-0.5 ms of
CPU there) carries two or three units. When a unit finds the writer idle and waiting for
others has paid lately, the writer waits for more before it begins: until as many
are pending as the last full wait gathered (the callers that keep coming back), or
`gather_seconds` at most. Callers may have joined: a group that drains more raises that
count, and every 8th wait, once that count is reached, waits as long again for one more,
not to its limit: at a steady concurrency that one never comes, and asking for it with a
wait to the limit (as before 2026-12-06) held one group in nine for `gather_seconds`
(bench/thread_cpu.py, HQ calls/s over the echo's, medians of 3-4 alternated runs on a
2-core AMD VM: concurrency 2 0.26 -> 0.44, 4 0.31 -> 0.47, 8 0.44 -> 0.47, 16 unchanged
within noise). A wait that gathers nobody makes the next one shorter, and waiting stops
(every 64th group tries it again): a lone caller is not kept waiting. Gathering at all,
without -> with, on a 2-core Xeon VM, LockCard + Redeem cycles (bench/thread_cpu.py at
concurrency 2 / 4 / 8 / 16): calls/s 814 -> 708 and 813 (two
runs), 1,095 -> 1,152 and 1,304, 1,426 -> 1,642, 1,811 -> 2,189 and 2,182; HQ's CPU a call
1,007 -> 775 and 669, 822 -> 567 and 551, 698 -> 478, 592 -> 477 and 468 us.
`bench/run.py --quick`: bench/RESULTS.md.

Answers before the next group: when a commit is done, its callers are answered (their
handlers resume and hand their responses to gRPC) before the units that arrived meanwhile
run. At a fleet's concurrency the tills, not HQ, are what the load waits for: a till that
has its answer works on its next call while HQ runs the next group, instead of waiting
behind it. And once waiting has paid, the units left after a commit wait too, for as many
as the last wait gathered (`gather_seconds` at most), the callers just answered coming back
with their next call, instead of taking a commit of their own: fewer, larger groups, less
CPU a call. bench/thread_cpu.py, HQ calls/s over the echo's, medians of alternated runs on
a 2-core AMD VM: next group first -> answers first: concurrency 4 0.47 -> 0.53, 16 0.61 ->
0.65, 64 0.67 -> 0.68; then -> waiting after commits too: 4 0.56 -> 0.56, 16 0.65 -> 0.73
(HQ's CPU a call ~530 -> ~460 us), 64 0.67 -> 0.83. Waiting after commits for every caller
just answered (a convoy of the whole fleet: the tills and HQ then take turns) gave 0.67 at
16.

Several HQ processes may share one SQLite file. Their writers queue on an exclusive `flock`
of a lock file beside the database (writer_lock), taken right before BEGIN IMMEDIATE and
released as soon as the transaction ends (COMMIT, ROLLBACK, or SQLite ending it by itself):
on the loop it is only tried, and when another process holds it the writer thread waits for
it (queued in the kernel), wakes the moment it is released and begins, instead of SQLite's
busy handler sleeping in steps of up to 100 ms. It waits no longer than SQLite's busy
timeout: a process that hangs holding the lock (stopped, in a debugger, on a wedged disk)
makes the others' writes fail with HQBusy after it, as SQLite's own lock would.

Readers (GetCard, GetParameters, the back-office lists) run on reader threads with their
own connections (WAL: readers never wait for the writer), a batch at a time.

A SQLite memory database has one connection, shared with whoever else uses the storage:
everything runs on the writer thread, which borrows the connection per group, and reads
join the writer's groups.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.pool import PoolProxiedConnection

from storedvalue.hq.domain.errors import HQBusy
from storedvalue.hq.services.transactions import MAX_ATTEMPTS, Work
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate
from storedvalue.hq.storage.checkpoints import WalCheckpointer
from storedvalue.hq.storage.engines import (
    SQLITE_BUSY_TIMEOUT_MS,
    WAL_AUTOCHECKPOINT_PAGES,
    is_sqlite_memory,
    sqlite_file_path,
)
from storedvalue.hq.storage.sqlalchemy_storage import SqlRepositories, SqlStorage
from storedvalue.hq.storage.transaction import HeldAppendsFailed, Transaction
from storedvalue.hq.storage.writer_lock import WriterLock, writer_lock_path

T = TypeVar("T")
log = logging.getLogger(__name__)

# Units per group: enough to amortize one fsync over a burst, few enough that the first
# caller of a group is not kept waiting behind hundreds of others.
MAX_GROUP = 128

# The longest a unit waits for others to join its group (see "Gathering under load").
GATHER_SECONDS = 0.005
# A wait after waits stopped: this fraction of the longest, once every GATHER_PROBE groups.
_GATHER_FIRST = 0.2
_GATHER_PROBE = 64

_STOP = object()

# (work, the future its caller awaits, whether it is large)
_Unit = tuple[Callable[[Any], Any], "asyncio.Future[Any]", bool]
# (future, succeeded, result or exception)
_Outcome = tuple["asyncio.Future[Any]", bool, Any]


class GroupCommitTransactions:
    """The `Transactions` executor for a SQLite database: one writer (on the event loop,
    with a thread for what waits) and `readers` reader threads (none for a memory
    database). Serves one event loop, the first that uses it."""

    def __init__(self, storage: SqlStorage, *, readers: int = 2,
                 max_group: int = MAX_GROUP, gather_seconds: float = GATHER_SECONDS) -> None:
        if storage.engine.dialect.name != "sqlite":
            raise ValueError("group commit is SQLite's executor")
        self._storage = storage
        self._memory = is_sqlite_memory(storage.engine.url)
        self._max_group = max_group
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: collections.deque[_Unit] = collections.deque()
        self._drain_scheduled = False
        # Gathering (see the module's doc): the wait under way, the next wait's length (0:
        # none), the pending count that ends a wait early (the callers expected; one more
        # while `_asking_one_more`), the count and loop time when it began, the waits
        # ended early, and the groups since waiting stopped.
        self._gather_max = gather_seconds
        self._gathering: asyncio.TimerHandle | None = None
        self._gather_wait = 0.0
        self._gather_target = max_group
        self._gather_cut = max_group
        self._asking_one_more = False
        self._gather_from = 0
        self._gather_began = 0.0
        self._gather_cuts = 0
        self._ungathered = 0
        self._writer_busy = False  # a commit, a BEGIN or a whole group is on the thread
        # The outcomes of the thread's finished commands, till the loop answers them.
        self._answered: collections.deque[list[_Outcome]] = collections.deque()
        self._held: tuple[PoolProxiedConnection, Transaction] | None = None
        self._repositories: SqlRepositories | None = None
        # The processes' writer lock (None: a memory database, or a `file:` URI, whose
        # writers rely on SQLite's busy timeout alone).
        database_file = None if self._memory else sqlite_file_path(storage.engine.url)
        self._writer_lock = (
            None if database_file is None else WriterLock(writer_lock_path(database_file))
        )
        if not self._memory:
            self._held = storage.connect()
            self._repositories = SqlRepositories(self._held[1])
            # On the loop a BEGIN must not wait: a locked database is left to the thread.
            self._held[1].set_busy_timeout(0)
        # WAL checkpoints off the commits (see checkpoints): on a thread of their own.
        self._checkpoints: WalCheckpointer | None = None
        if self._held is not None and database_file is not None:
            self._checkpoints = WalCheckpointer(database_file)
            _set_wal_autocheckpoint(self._held, 0)
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.commits = 0
        """Groups committed so far (the writer thread counts them)."""
        self.gathers = 0
        """Waits for more units begun so far (see "Gathering under load")."""
        self.waits_to_limit = 0
        """Those of them that ran to their limit: fewer units came than were expected."""
        self._threads = [
            threading.Thread(target=self._writer_thread, name="hq-sqlite-writer", daemon=True)
        ]
        self._threads += [
            threading.Thread(target=self._read_loop, name=f"hq-sqlite-reader-{n}", daemon=True)
            for n in range(0 if self._memory else readers)
        ]
        for thread in self._threads:
            thread.start()

    async def write(self, work: Work[T], *, large: bool = False) -> T:
        loop = self._loop_of_caller()
        future: asyncio.Future[T] = loop.create_future()
        if large and not self._writer_busy and not self._pending:
            # Runs alone whatever else comes: to the writer at once.
            self._pending.append((work, future, large))
            self._drain()
            return await future
        self._pending.append((work, future, large))
        if self._gathering is not None:
            if len(self._pending) >= self._gather_cut:
                self._gathering.cancel()
                self._gathered(early=True)
        elif not self._writer_busy and not self._drain_scheduled:
            if self._gather_wait > 0 or (self._gather_max > 0
                                         and self._ungathered >= _GATHER_PROBE):
                self._gather(loop)
            else:
                # After the callbacks already due: units that arrive together go together.
                self._drain_scheduled = True
                loop.call_soon(self._drain)
        return await future

    def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for more units before the next group begins (see the module's doc)."""
        if self._gather_wait <= 0:  # trying again after waits stopped
            self._gather_wait = self._gather_max * _GATHER_FIRST
            self._gather_target = self._max_group
        self._ungathered = 0
        self.gathers += 1
        self._gather_from = len(self._pending)
        self._gather_cut = self._gather_target
        self._gather_began = loop.time()
        self._gathering = loop.call_later(self._gather_wait, self._gathered)

    def _gathered(self, early: bool = False) -> None:
        """A wait ended: early (as many pending as the last wait gathered) or timed out.
        Then the group begins."""
        self._gathering = None
        if self._asking_one_more:  # one more came (the group raises the count), or not
            self._asking_one_more = False
            self._drain()
            return
        pending = len(self._pending)
        if not early:
            self.waits_to_limit += 1
        if pending > self._gather_from:  # worth it: the next wait may be longer
            self._gather_wait = min(self._gather_max, self._gather_wait * 1.25)
            if not early:  # those who came are those to wait for
                self._gather_target = max(2, pending)
            elif self._ask_one_more():
                return
        else:  # nobody came: shorter, then none
            self._gather_wait /= 2
            if self._gather_wait < self._gather_max * _GATHER_FIRST:
                self._gather_wait = 0.0
        self._drain()

    def _ask_one_more(self) -> bool:
        """Now and then (every 8th wait that ended early), wait a little longer for one
        more caller than expected, in case callers joined: for as long again as the wait
        took so far, not to its limit, so that a steady fleet's wait ends little later."""
        self._gather_cuts += 1
        loop = self._loop
        if self._gather_cuts % 8 or self._gather_target >= self._max_group or loop is None:
            return False
        self._asking_one_more = True
        self._gather_cut = self._gather_target + 1
        longer = min(loop.time() - self._gather_began, self._gather_wait)
        self._gathering = loop.call_later(longer, self._gathered)
        return True

    async def read(self, work: Work[T]) -> T:
        if len(self._threads) == 1:  # no reader threads: reads join the writer's groups
            return await self.write(work)
        future: asyncio.Future[T] = self._loop_of_caller().create_future()
        self._reads.put((work, future, False))
        return await future

    def close(self) -> None:
        """Stop the threads (call it once no caller is waiting any more)."""
        if self._closed:
            return
        self._closed = True
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        for _reader in self._threads[1:]:
            self._reads.put(_STOP)
        self._commands.put(_STOP)
        for thread in self._threads:
            thread.join()
        try:
            if self._checkpoints is not None:
                self._checkpoints.close()
            if self._held is not None:
                _set_wal_autocheckpoint(self._held, WAL_AUTOCHECKPOINT_PAGES)
                _release(self._held)
                self._held = None
        finally:
            if self._writer_lock is not None:
                self._writer_lock.close()

    def _loop_of_caller(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("this executor serves another event loop")
        return loop

    # -- the writer, on the event loop -----------------------------------------------------

    def _drain(self) -> None:
        self._drain_scheduled = False
        if self._writer_busy or self._gathering is not None:
            return
        if not self._pending:
            self._end_unused()
            return
        self._ungathered += 1
        group = self._next_group()
        if len(group) > self._gather_target and self._gather_wait > 0:
            self._gather_target = len(group)  # callers joined: wait for them too
        if self._held is None or group[0][2]:
            # Memory database, or a large unit: the whole group runs on the thread.
            self._writer_busy = True
            self._commands.put(("run", group))
            return
        tx = self._held[1]
        if not tx.is_open:
            try:
                self._begin(tx, wait=False)
            except ConcurrentUpdate:
                # Another process is writing: the thread waits for it and begins, and then
                # these units, and those that arrive meanwhile, run here.
                self._pending.extendleft(reversed(group))
                self._writer_busy = True
                self._commands.put(("begin", None))
                return
            except Exception as error:
                _settle([(future, False, error) for _work, future, _large in group])
                self._schedule_drain()
                return
        assert self._repositories is not None
        try:
            outcomes, rest = _run_units(tx, self._repositories, group,
                                        begin=self._begin_on_loop, hold_appends=True)
        finally:
            self._release_if_ended(tx)
        if rest is not None:  # the transaction was lost: nothing to commit
            self._pending.extendleft(reversed(rest))
            _settle(outcomes)
            self._schedule_drain()
            return
        self._writer_busy = True
        self._commands.put(("commit", outcomes))

    def _next_group(self) -> list[_Unit]:
        """The next units to run together: a large unit alone, else up to `max_group`
        small ones (in arrival order)."""
        pending = self._pending
        first = pending.popleft()
        if first[2]:
            return [first]
        group = [first]
        while pending and len(group) < self._max_group and not pending[0][2]:
            group.append(pending.popleft())
        return group

    def _writer_done(self) -> None:
        """On the loop, once the thread finished a command: its callers are answered first
        (their handlers resume and hand their responses to gRPC), and only then does the
        next group run (see "Answers before the next group"), once as many units are
        pending as waiting has lately gathered, if it has paid (see "Gathering under
        load")."""
        self._writer_busy = False
        self._settle_answered()
        pending = self._pending
        # (While the thread was busy no wait could begin nor a drain be scheduled.)
        if (pending and self._gather_wait > 0 and len(pending) < self._gather_target
                and not pending[0][2] and self._loop is not None):
            self._gather(self._loop)
            return
        self._schedule_drain()

    def _settle_answered(self) -> None:
        """On the loop: answer the callers of the commands the thread finished."""
        answered = self._answered
        while answered:
            _settle(answered.popleft())

    def _begun(self, failure: Exception | None) -> None:
        """On the loop, once the thread has begun a transaction for the waiting units (or
        failed to: they fail, HQBusy when the database stayed locked)."""
        self._writer_busy = False
        if failure is not None and self._pending:
            _settle([(future, False, failure) for _work, future, _large in self._next_group()])
        self._drain()

    def _end_unused(self) -> None:
        """A transaction begun for callers who have all gone since (a deadline, a cancel):
        nothing was written in it; end it, and let the other processes' writers go."""
        if self._held is not None and self._held[1].is_open:
            try:
                self._held[1].rollback()
            except Exception:
                log.exception("ending an unused transaction failed")
            finally:
                self._release_if_ended(self._held[1])

    # -- the processes' writer lock --------------------------------------------------------

    def _begin(self, tx: Transaction, *, wait: bool) -> None:
        """BEGIN IMMEDIATE, behind the processes' writer lock. Without `wait` (on the loop)
        neither waits: ConcurrentUpdate when another process holds either lock. With it,
        each waits up to the busy timeout: ConcurrentUpdate when still held after it."""
        lock = self._writer_lock
        if lock is not None:
            if wait:
                if not lock.acquire(SQLITE_BUSY_TIMEOUT_MS / 1000):
                    raise ConcurrentUpdate("another HQ process kept the writer lock past the "
                                           "busy timeout")
            elif not lock.try_acquire():
                raise ConcurrentUpdate("another HQ process is writing")
        try:
            tx.begin(write=True)
        except BaseException:
            self._release_if_ended(tx)
            raise

    def _begin_on_loop(self) -> None:
        """`_begin` of the held connection's transaction, without waiting (on the loop)."""
        assert self._held is not None
        self._begin(self._held[1], wait=False)

    def _release_if_ended(self, tx: Transaction) -> None:
        """Let the other processes' writers go once no transaction is open on `tx` (it was
        committed or rolled back, or SQLite ended it by itself)."""
        lock = self._writer_lock
        if lock is not None and lock.held and not tx.is_open:
            lock.release()

    def _abandon(self) -> None:
        """After an unexpected failure on the writer thread: roll back whatever the held
        connection still has open, and release the writer lock whatever happens."""
        try:
            if self._held is not None and self._held[1].is_open:
                self._held[1].rollback()
        except Exception:
            log.exception("rolling back after a writer failure failed")
        finally:
            if self._writer_lock is not None:
                self._writer_lock.release()

    def _schedule_drain(self) -> None:
        if self._pending and not self._drain_scheduled and self._loop is not None:
            self._drain_scheduled = True
            self._loop.call_soon(self._drain)

    # -- the writer thread -----------------------------------------------------------------

    def _writer_thread(self) -> None:
        answered = self._answered
        while True:
            command = self._commands.get()
            if command is _STOP:
                return
            kind, argument = command
            del command
            if kind == "begin":
                self._begin_here()
                continue
            answered.append(self._carry_out(kind, argument))
            # The thread keeps no reference to what it carried (the units' work, their
            # futures, their results) once it answers: the loop drops the last one, so the
            # teardown of a synced batch's decoded columns, messages and results runs
            # there, not on this thread, the sync's bottleneck (bench/hq_sync_cpu.py under
            # callgrind: writer 87.2K -> 85.6K instructions a transaction, loop 47.6K ->
            # 48.7K).
            del argument
            loop = self._loop
            assert loop is not None
            try:
                if self._checkpoints is not None and self._checkpoints.writer_should_finish():
                    # Answered first; the loop keeps the connection's turn till done.
                    loop.call_soon_threadsafe(self._settle_answered)
                    self._finish_checkpoint()
                loop.call_soon_threadsafe(self._writer_done)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                answered.clear()
                log.debug("answers for a closed event loop dropped")

    def _carry_out(self, kind: str, argument: Any) -> list[_Outcome]:
        """A command of the loop's ("commit" its outcomes, "run" a group), on the thread:
        the outcomes to answer."""
        try:
            if kind == "commit":
                return self._commit(argument)
            return self._run_group_here(argument)
        except BaseException as error:  # keep the writer alive; fail what it carried
            log.exception("the SQLite writer failed")
            self._abandon()
            if kind == "commit":
                return [(future, False, error) for future, _ok, _value in argument]
            return [(future, False, error) for _work, future, _large in argument]

    def _finish_checkpoint(self) -> None:
        """Copy the few WAL pages the checkpointer has not (see checkpoints), with no
        transaction open: the writer's next transaction then starts the WAL over."""
        assert self._held is not None
        try:
            if not self._held[1].is_open:
                driver = self._held[0].driver_connection
                assert driver is not None
                driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:
            log.exception("a WAL checkpoint failed")

    def _begin_here(self) -> None:
        """Wait for the other processes' writer (the writer lock; SQLite's busy timeout for
        writers that do not take it), begin, and hand the transaction back to the loop."""
        assert self._held is not None
        tx = self._held[1]
        failure: Exception | None = None
        try:
            tx.set_busy_timeout(SQLITE_BUSY_TIMEOUT_MS)
            try:
                self._begin(tx, wait=True)
            finally:
                tx.set_busy_timeout(0)
        except Exception as error:  # still locked after the busy timeout, or worse
            self._abandon()
            failure = HQBusy() if isinstance(error, ConcurrentUpdate) else error
        loop = self._loop
        assert loop is not None
        try:
            loop.call_soon_threadsafe(self._begun, failure)
        except RuntimeError:  # the loop is closed: close() ends the transaction
            log.debug("a transaction begun for a closed event loop")

    def _commit(self, outcomes: list[_Outcome]) -> list[_Outcome]:
        assert self._held is not None
        tx = self._held[1]
        try:
            outcomes = _commit(tx, outcomes)
        finally:
            self._release_if_ended(tx)
        self.commits += 1
        if self._checkpoints is not None:
            self._checkpoints.committed()
        return outcomes

    def _run_group_here(self, group: list[_Unit]) -> list[_Outcome]:
        """A whole group on this thread: BEGIN (waiting for the lock), the units, COMMIT."""
        held = self._held if self._held is not None else self._storage.connect()
        try:
            tx = held[1]
            if self._held is not None:
                tx.set_busy_timeout(SQLITE_BUSY_TIMEOUT_MS)
            try:
                return self._run_group(tx, SqlRepositories(tx), group)
            finally:
                self._release_if_ended(tx)
        finally:
            if self._held is None:
                _release(held)
            else:
                held[1].set_busy_timeout(0)

    def _run_group(self, tx: Transaction, repositories: SqlRepositories, group: list[_Unit]
                   ) -> list[_Outcome]:
        if not tx.is_open:
            try:
                self._begin(tx, wait=True)
            except Exception as error:  # still locked after the busy timeout, or worse
                failure = HQBusy() if isinstance(error, ConcurrentUpdate) else error
                return [(future, False, failure) for _work, future, _large in group]

        def begin() -> None:
            self._begin(tx, wait=True)

        outcomes, rest = _run_units(tx, repositories, group, begin=begin)
        if rest is not None:
            return outcomes + (self._run_group(tx, repositories, rest) if rest else [])
        outcomes = _commit(tx, outcomes)
        self.commits += 1
        if self._checkpoints is not None:
            self._checkpoints.committed()
        return outcomes

    # -- the readers -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        pooled, tx = self._storage.connect()
        repositories = SqlRepositories(tx)
        try:
            while True:
                group, stop = _take(self._reads, self._max_group)
                if group:
                    outcomes = _run_reads(tx, repositories, group)
                    loop = self._loop
                    assert loop is not None
                    try:
                        loop.call_soon_threadsafe(_settle, outcomes)
                    except RuntimeError:
                        log.debug("answers for a closed event loop dropped")
                if stop:
                    return
        finally:
            _release((pooled, tx))


def _run_units(tx: Transaction, repositories: SqlRepositories, group: list[_Unit], *,
               begin: Callable[[], None], hold_appends: bool = False
               ) -> tuple[list[_Outcome], list[_Unit] | None]:
    """Run the units of `group` one after another in the open transaction, without a
    savepoint each: most units fail, when they fail, before their first write (a business
    rule checked on what they read), and then there is nothing to undo. A unit that fails
    after writing (a lost race, a bug, SQLite ending the transaction by itself on disk full
    or an I/O error) takes the transaction back to its start: the units that had succeeded
    in it run again, in the same order (nobody was answered yet), and it is retried (a lost
    race, up to MAX_ATTEMPTS) or fails alone.

    `hold_appends`: the units' appends (journal entries, requests' results, locks handed
    out: `Transaction.append`) are held back and sent together, one statement per kind for
    the group, at the end (or before a statement that touches their table). If they fail
    when sent, the unit at fault is not known: the transaction goes back to its start and
    its units run again, with appends written at once, so that the one at fault fails
    alone as above.

    `begin` begins a new writing transaction (behind the processes' writer lock).

    Returns the outcomes, and None, or, when a new transaction could not be begun here (the
    database locked by another process), the units still to run in a new transaction
    (their outcomes are not among those returned)."""
    outcomes: dict[int, _Outcome] = {}
    kept: list[int] = []  # the units whose effects the open transaction holds, in order
    retries: dict[int, int] = {}
    to_run = collections.deque(range(len(group)))

    tx.hold_appends = hold_appends
    try:
        while True:
            while to_run:
                index = to_run.popleft()
                work, future, _large = group[index]
                if future.cancelled():  # the caller is gone (deadline, cancelled): skip it
                    continue
                repositories.start_unit()
                mark = tx.writes
                try:
                    result = work(repositories)
                    repositories.end_unit()  # the journal its cards recorded
                except HeldAppendsFailed as error:
                    # Sent before one of its statements; the unit at fault is unknown.
                    log.debug("held appends failed; the group runs again", exc_info=error)
                    tx.hold_appends = False
                    rest = _start_again(tx, group, outcomes, kept, to_run, begin,
                                        [*kept, index], error)
                    if rest is not None:
                        return list(outcomes.values()), rest
                    continue
                except Exception as error:
                    lost = isinstance(error, ConcurrentUpdate)
                    retried = retries.get(index, 0) + 1 if lost else MAX_ATTEMPTS
                    if retried < MAX_ATTEMPTS:
                        retries[index] = retried
                    else:
                        outcomes[index] = (future, False, HQBusy() if lost else error)
                    if tx.writes == mark and tx.is_open:  # nothing of it to undo
                        if retried < MAX_ATTEMPTS:
                            to_run.appendleft(index)
                        continue
                    rest = _start_again(tx, group, outcomes, kept, to_run, begin,
                                        kept + ([index] if retried < MAX_ATTEMPTS else []),
                                        error)
                    if rest is not None:
                        return list(outcomes.values()), rest
                    continue
                outcomes[index] = (future, True, result)
                kept.append(index)
            if not tx.hold_appends:
                break
            try:
                tx.send_appends()
                break
            except HeldAppendsFailed as error:
                log.debug("held appends failed; the group runs again", exc_info=error)
                tx.hold_appends = False
                rest = _start_again(tx, group, outcomes, kept, to_run, begin, list(kept),
                                    error)
                if rest is not None:
                    return list(outcomes.values()), rest
    finally:
        tx.hold_appends = False
    return [outcomes[index] for index in sorted(outcomes)], None


def _start_again(tx: Transaction, group: list[_Unit], outcomes: dict[int, _Outcome],
                 kept: list[int], to_run: collections.deque[int], begin: Callable[[], None],
                 again: list[int], error: Exception) -> list[_Unit] | None:
    """`_run_units` after a failure that leaves something to undo: undo the whole
    transaction (the outcomes of the units it held, `kept`, are forgotten and `kept`
    emptied); what it held (`again`) runs again in a new one, before `to_run`. Returns the
    units still to run when no new transaction could be begun here. (A function of its
    own, not a closure of `_run_units`: a closure's cells and function object would be
    made and freed for every group, ~7K instructions a commit, for a path taken rarely.)"""
    for done in kept:
        outcomes.pop(done, None)
    kept.clear()
    if not tx.is_open:
        log.error("the group's transaction was lost", exc_info=error)
    try:
        if tx.is_open:
            tx.rollback()
        begin()
    except Exception:
        if tx.is_open:
            tx.rollback()
        return [group[i] for i in again] + [group[i] for i in to_run]
    to_run.extendleft(reversed(again))
    return None


def _commit(tx: Transaction, outcomes: list[_Outcome]) -> list[_Outcome]:
    """COMMIT (the fsync); if it fails, nothing of the group is kept and every unit fails."""
    try:
        tx.commit()
    except Exception as error:
        log.error("group commit failed", exc_info=error)
        if tx.is_open:
            tx.rollback()
        failure = HQBusy() if isinstance(error, ConcurrentUpdate) else error
        return [(future, False, failure if ok else value) for future, ok, value in outcomes]
    return outcomes


def _run_reads(tx: Transaction, repositories: SqlRepositories, group: list[_Unit]
               ) -> list[_Outcome]:
    outcomes: list[_Outcome] = []
    for work, future, _large in group:
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
    repositories.start_unit()  # reads write nothing: forget any card they loaded
    return outcomes


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


def _settle(outcomes: list[_Outcome]) -> None:
    """Answer the callers (on their event loop)."""
    for future, succeeded, value in outcomes:
        if future.done():  # cancelled while the unit ran
            continue
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)


def _set_wal_autocheckpoint(held: tuple[PoolProxiedConnection, Transaction], pages: int
                            ) -> None:
    """The WAL size (pages) at which a COMMIT on `held` checkpoints (0: never; a setting of
    the connection, which goes back to the pool with SQLite's usual one)."""
    driver = held[0].driver_connection
    assert driver is not None
    driver.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")


def _release(held: tuple[PoolProxiedConnection, Transaction]) -> None:
    pooled, tx = held
    try:
        tx.close()
    finally:
        pooled.close()
