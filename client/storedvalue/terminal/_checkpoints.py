"""WAL checkpoints of the terminal's SQLite file on a thread of their own, off the sales.

With SQLite's automatic checkpoint, the COMMIT that takes the WAL past ``wal_autocheckpoint``
pages (1,000) copies the WAL into the database file and syncs it before it returns: an
offline sale dirties about a dozen pages, so one completion in ~80 waited for a checkpoint
(a second fsync, of the database file, and the copying), which is where the p99 of
``offline_complete_p99_ms`` sat. The terminal's connection turns the automatic checkpoint
off (``wal_autocheckpoint=0``) and tells this checkpointer after each commit; its thread, on
a connection of its own, runs a PASSIVE checkpoint once the WAL holds ``pages`` frames not
yet copied. A PASSIVE checkpoint never waits for the writer nor blocks it (SQLite copies
what it can). SQLite starts the WAL over (rather than growing it) only at a write begun with
every frame copied, and a till selling sale after sale commits while the checkpoint copies:
so once the bulk is copied, the thread copies what those commits added holding the
terminal's write lock (``writers``), a few pages, and the next sale's commit starts the WAL
over. Copying it all under the lock would hold sales off for the whole checkpoint.

Durability is unchanged: a commit is durable once its frames are fsynced in the WAL
(synchronous=FULL), before any checkpoint; a checkpoint syncs the WAL before it writes the
database file and the file before the WAL may start over, as SQLite's own does. After a
crash SQLite recovers from the WAL as always, and closing the last connection checkpoints
what is left, as before. (HQ does the same: storedvalue.hq.storage.checkpoints.)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from pathlib import Path

from storedvalue.sqlite_wal import wal_frames, wal_index_path

_log = logging.getLogger(__name__)

CHECKPOINT_PAGES = 1000
"""WAL frames not yet copied that start a checkpoint (SQLite's own automatic threshold)."""
_LOOK_INTERVAL = 0.05
"""Commits wake the thread at most this often (s): it takes the GIL to look at the WAL."""
_FALLBACK_INTERVAL = 1.0
"""Without a readable WAL index, a checkpoint at most this often (s) while commits come."""


class Checkpointer:
    """Checkpoints the WAL of ``database_file`` on its own thread as commits
    (``committed()``) fill it; ``writers`` is the lock the database's writers hold (held
    for the last few pages only). ``close()`` stops the thread and closes its connection."""

    def __init__(self, database_file: Path, writers: AbstractContextManager[object], *,
                 pages: int = CHECKPOINT_PAGES) -> None:
        self._writers = writers
        self._shm = wal_index_path(database_file)
        self._pages = pages
        self._conn = sqlite3.connect(database_file, isolation_level=None,
                                     check_same_thread=False, timeout=30)
        try:
            # A checkpoint syncs the WAL and the database file as the writer's own would.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            self._conn.close()
            raise
        self._wake = threading.Event()
        self._stopping = False
        self._next_look = 0.0
        self._last = time.monotonic()
        self.checkpoints = 0
        """Checkpoints run so far."""
        self._thread = threading.Thread(target=self._run, name="storedvalue-terminal-wal",
                                        daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A write committed: the WAL may need a checkpoint. Cheap (a clock read); wakes
        the thread at most once every ``_LOOK_INTERVAL`` seconds."""
        now = time.monotonic()
        if now >= self._next_look:
            self._next_look = now + _LOOK_INTERVAL
            self._wake.set()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it is running) and close its connection."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._check()
            except Exception:  # checkpoint later; the WAL stays valid meanwhile
                _log.exception("a WAL checkpoint failed")

    def _check(self) -> None:
        pending = self._pending_frames()
        if pending is None:
            if time.monotonic() - self._last < _FALLBACK_INTERVAL:
                return
        elif pending < self._pages:
            return
        self._checkpoint()  # the bulk, while sales go on
        if not self._stopping:
            # What they committed meanwhile (a commit under way as the bulk began is not
            # counted in its answer): with every frame copied, the WAL can start over.
            with self._writers:
                self._checkpoint()

    def _checkpoint(self) -> tuple[int, int]:
        """A PASSIVE checkpoint: (frames in the WAL, frames copied)."""
        _busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._last = time.monotonic()
        self.checkpoints += 1
        return int(frames), int(copied)

    def _pending_frames(self) -> int | None:
        """Frames of the WAL not yet copied into the database file, from the WAL index;
        None when it cannot be read as documented."""
        state = wal_frames(self._shm)
        return None if state is None else max(0, state[0] - state[1])
