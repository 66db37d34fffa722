"""The write lock HQ processes on one SQLite file take before SQLite's own.

SQLite's write lock cannot be waited on: a connection that finds it taken either fails at
once or lets SQLite's busy handler sleep and try again, in steps of 1, 2, 5, 10 ... up to
100 ms, so a second HQ process on the same file wakes up long after the first committed, or
fails. An exclusive `flock` on a file beside the database, taken right before BEGIN IMMEDIATE
and released right after the COMMIT or ROLLBACK, puts the writers of every HQ process in one
queue the kernel keeps: the waiting writer wakes the moment the lock is released, and then
finds SQLite's lock free. A process that dies holding it releases it with its descriptors.

Writers that do not take it (other tools, older HQ versions, migrations) still meet SQLite's
lock and its busy timeout, as before. A `flock` is held by an open file description, not by
a process, so two executors in one process (tests) exclude each other too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def writer_lock_path(database_file: Path) -> Path:
    """The lock file of a SQLite database file: beside it, like its -wal and -shm."""
    return database_file.with_name(database_file.name + "-writer.lock")


class WriterLock:
    """One holder's handle on the lock file of a database (created private to this user,
    0600, like the database file; see engines.make_private_database_file). Not thread-safe:
    one thread at a time uses it, as one writer at a time runs a group."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.held = False
        """Whether this handle holds the lock now."""

    def try_acquire(self) -> bool:
        """Take the lock if no other holder has it; never waits (the event loop calls it)."""
        if self.held:
            return True
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.held = True
        return True

    def acquire(self) -> None:
        """Take the lock, waiting for the holder to release it (a thread that may wait
        calls it; the kernel wakes it when the lock is released or its holder dies)."""
        if not self.held:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
            self.held = True

    def release(self) -> None:
        """Let the next writer go (nothing happens when it is not held)."""
        if self.held:
            self.held = False
            fcntl.flock(self._descriptor(), fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        self.held = False
        if fd is not None:
            os.close(fd)  # releases the lock if it was still held

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
