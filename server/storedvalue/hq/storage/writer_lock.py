"""The write lock HQ processes on one SQLite file take before SQLite's own.

SQLite's write lock cannot be waited on: a connection that finds it taken either fails at
once or lets SQLite's busy handler sleep and try again, in steps of 1, 2, 5, 10 ... up to
100 ms, so a second HQ process on the same file wakes up long after the first committed, or
fails. An exclusive `flock` on a file beside the database, taken right before BEGIN IMMEDIATE
and released right after the COMMIT or ROLLBACK, puts the writers of every HQ process in one
queue the kernel keeps: the waiting writer wakes the moment the lock is released, and then
finds SQLite's lock free. A process that dies holding it releases it with its descriptors.

A process that hangs holding it (stopped by SIGSTOP or a debugger, stuck on a wedged disk)
must not hold up the other processes' writers for ever: they give up after a deadline, as
they did on SQLite's lock and its busy timeout. But Linux's `flock` has no timed wait, and
a thread other than the main one cannot be interrupted in it (Python retries it after a
signal); polling it with LOCK_NB would wake a writer up to a poll interval late on every
handover between two busy processes. So each handle has a waiter thread that queues in the
kernel's `flock` for it and hands the lock to the caller, who waits for that with a
deadline; if the caller has given up by the time the lock comes, the waiter lets it go at
once. A waiter stuck behind a stopped holder stays in the kernel's queue, and the next
caller waits for the same one.

Writers that do not take it (other tools, older HQ versions, migrations) still meet SQLite's
lock and its busy timeout, as before. A `flock` is held by an open file description, not by
a process, so two executors in one process (tests) exclude each other too.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


def writer_lock_path(database_file: Path) -> Path:
    """The lock file of a SQLite database file: beside it, like its -wal and -shm."""
    return database_file.with_name(database_file.name + "-writer.lock")


class WriterLock:
    """One holder's handle on the lock file of a database (created private to this user,
    0600, like the database file; see engines.make_private_database_file). Not thread-safe:
    one thread at a time uses it, as one writer at a time runs a group (its waiter thread
    is its own business)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held = False
        """Whether this handle holds the lock now."""
        # Shared with the waiter thread, under `_mutex`; `_changed` wakes either side.
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)
        self._waiter: threading.Thread | None = None  # started at the first wait
        self._queued = False  # the waiter is asked to take the lock and has not got it yet
        self._wanted = False  # a caller is waiting for what the waiter gets
        self._failure: OSError | None = None  # what the waiter's flock raised
        self._closing = False

    def try_acquire(self) -> bool:
        """Take the lock if no other holder has it; never waits (the event loop calls it)."""
        if self.held:
            return True
        if self._queued:  # our waiter is still in the queue: another holder has it
            return False
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def acquire(self, timeout: float) -> bool:
        """Take the lock, waiting up to `timeout` seconds for its holder to release it (a
        thread that may wait calls it): True once held, False if the holder kept it that
        long. The waiter thread wakes the moment the lock is released or its holder dies,
        and the caller right after it."""
        if self.try_acquire():
            return True
        with self._mutex:
            if not self._queued:
                self._queued = True
                self._failure = None
                if self._waiter is None:
                    self._waiter = threading.Thread(
                        target=self._wait_for_lock, args=(self._descriptor(),),
                        name="hq-sqlite-writer-lock", daemon=True)
                    self._waiter.start()
                else:
                    self._changed.notify_all()
            self._wanted = True
            try:
                self._changed.wait_for(lambda: self.held or not self._queued, timeout)
            finally:
                self._wanted = False
            if self._failure is not None:
                raise self._failure
            return self.held

    def release(self) -> None:
        """Let the next writer go (nothing happens when it is not held)."""
        if self.held:
            self.held = False
            fcntl.flock(self._descriptor(), fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the lock if held and stop the waiter. A waiter stuck in the kernel's
        queue (behind a holder that hangs) is left there, a daemon: it closes the
        descriptor, which it is using, when it gets out."""
        with self._mutex:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            self.held = False
            self._closing = True
            self._changed.notify_all()
            waiter = self._waiter
            if self._queued:
                return
        if waiter is not None:
            waiter.join()
        os.close(fd)  # releases the lock if it was still held

    def _wait_for_lock(self, fd: int) -> None:
        """The waiter thread: each time it is asked, queue for the lock in the kernel, then
        hand it to the caller waiting for it, or let it go if nobody waits any more."""
        while True:
            with self._mutex:
                self._changed.wait_for(lambda: self._queued or self._closing)
                if not self._queued:  # closed while idle: close() closes the descriptor
                    return
            failure: OSError | None = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:  # ENOLCK, say: the caller raises it
                failure = error
            with self._mutex:
                self._queued = False
                self._failure = failure
                if failure is None:
                    if self._wanted:
                        self.held = True
                    else:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                self._changed.notify_all()
                if self._closing:
                    os.close(fd)
                    return

    def _descriptor(self) -> int:
        if self._fd is None:
            raise RuntimeError("the writer lock is closed")
        return self._fd


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds the lock of `path` now (tests, diagnostics): takes and releases
    it through a descriptor of its own."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)
