"""SQLite WAL checkpoints on a thread of their own, off the writer's commits.

With SQLite's automatic checkpoint, the COMMIT that takes the WAL past `wal_autocheckpoint`
pages copies them all into the database file before it returns: during a sync one group
commit in ten or so took ~200 ms instead of ~5, and every caller of that group (online
calls too) waited for it. HQ's writer turns the automatic checkpoint off
(`wal_autocheckpoint=0`) and tells a `WalCheckpointer` after each commit; the checkpointer's
thread, on a connection of its own, runs a PASSIVE checkpoint once the WAL holds
`CHECKPOINT_PAGES` pages not yet copied, again and again until it has caught up. A PASSIVE
checkpoint never waits for the writer nor blocks it (SQLite copies what it can). SQLite
starts the WAL over only in a write transaction begun with every frame copied, and a busy
writer begins its next transaction right after each commit: so once this thread has copied
all but a little of a long WAL, the writer copies the rest itself between two transactions,
after answering its callers (`writer_should_finish`: a few milliseconds, about its last
commit's pages), and its next transaction starts the WAL over.

Should the checkpoints still not keep up (a reader holding an old snapshot for long, a slow
disk), the WAL file grows: past `MAX_WAL_BYTES` the checkpointer runs a TRUNCATE checkpoint,
which waits for the writer's transaction to end, holds writers off while it copies, and
empties the file: one long pause rather than a WAL without bound.

Durability is unchanged: a commit is durable once its frames are fsynced in the WAL
(synchronous=FULL), before any checkpoint; a checkpoint syncs the WAL before it writes the
database file and the file before it lets the WAL start over, as SQLite's own does. After a
crash SQLite recovers from the WAL as always. Closing the last connection to the database
checkpoints what is left, as before.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from storedvalue.sqlite_wal import wal_frames, wal_index_path

log = logging.getLogger(__name__)

# Pages (of the WAL) not yet checkpointed that start a checkpoint: what the automatic
# checkpoint waited for before (see engines: fewer, larger checkpoints write a page once).
CHECKPOINT_PAGES = 8192
# A WAL file past this size is emptied by a TRUNCATE checkpoint (which holds writers off).
MAX_WAL_BYTES = 512 * 1024 * 1024
# Without a readable WAL index (storedvalue.sqlite_wal), a checkpoint at most this often (s)
# while commits come.
FALLBACK_INTERVAL = 1.0
# Between two looks at the WAL (s): commits come by the thousand a second.
_PAUSE = 0.005
# The writer wakes the thread at most this often (s): a wake per commit cost the online
# calls ~7% of HQ's CPU (the thread taking the GIL from the event loop for each look).
_LOOK_INTERVAL = 0.05


class WalCheckpointer:
    """Checkpoints the WAL of the SQLite database `database_file` on its own thread, as
    commits (`committed()`) fill it. `close()` stops the thread."""

    def __init__(self, database_file: Path, *, pages: int = CHECKPOINT_PAGES,
                 max_wal_bytes: int = MAX_WAL_BYTES, busy_timeout_ms: int = 30_000) -> None:
        self._wal = Path(f"{database_file}-wal")
        self._shm = wal_index_path(database_file)
        self._pages = pages
        self._max_wal_bytes = max_wal_bytes
        self._connection = sqlite3.connect(
            database_file, isolation_level=None, check_same_thread=False,
            timeout=busy_timeout_ms / 1000)
        # A checkpoint syncs the WAL and the database file as the writer's would.
        self._connection.execute("PRAGMA synchronous=FULL")
        self._connection.execute("PRAGMA wal_autocheckpoint=0")
        self._wake = threading.Event()
        self._stop = False
        self._last = time.monotonic()
        self._next_look = 0.0  # when `committed` next wakes the thread (monotonic clock)
        # Commits since the thread last looked: looked at within `_LOOK_INTERVAL` even
        # when none of them woke it (the last ones of a burst).
        self._unseen = False
        # The thread waits for a wake with no time limit (nothing was unseen when it began
        # to): a commit then wakes it whenever it comes.
        self._idle = False
        # A long WAL is being copied here: the writer is to finish it (writer_should_finish).
        self._armed = False
        self.checkpoints = 0
        """Checkpoints run so far (PASSIVE and TRUNCATE)."""
        self._thread = threading.Thread(target=self._run, name="hq-sqlite-checkpoints",
                                        daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """The writer committed: the WAL may need a checkpoint. Wakes the thread at most
        once every `_LOOK_INTERVAL` seconds (any thread; cheap: a clock read); commits
        that did not wake it are looked at when that interval has passed, so that the
        last commits of a burst, which may take the WAL past its checkpoint size, do not
        wait for the next commit to come."""
        self._unseen = True
        now = time.monotonic()
        if now >= self._next_look or self._idle:
            self._next_look = now + _LOOK_INTERVAL
            self._wake.set()

    def writer_should_finish(self) -> bool:
        """Whether the writer, between two transactions, should copy what is left of a long
        WAL itself: this thread copies the bulk while the writer goes on, but the WAL
        starts over only at a write transaction begun with every frame copied, and a busy
        writer begins its next one right after each commit. So once this thread has
        copied all but a little of a WAL of `pages` frames or more, the writer copies the
        rest (a few milliseconds, its own commit's pages): its next transaction restarts
        the WAL instead of it growing without end."""
        if not self._armed:  # no long WAL being copied: nothing to read (each commit asks)
            return False
        state = self._wal_index()
        if state is None:
            return False
        frames, copied = state
        if frames < self._pages:  # started over meanwhile
            self._armed = False
            return False
        if copied > 0 and frames - copied <= self._pages // 4:
            self._armed = False
            return True
        return False

    def close(self) -> None:
        """Stop the thread (after a checkpoint it is running) and close its connection."""
        if self._stop:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()
        self._connection.close()

    def _run(self) -> None:
        while True:
            # `_idle` before `_unseen` is read, as `committed` sets `_unseen` before it
            # reads `_idle`: a commit that comes as the thread begins to wait either is
            # seen here (a wait of `_LOOK_INTERVAL`) or sees `_idle` and wakes it.
            self._idle = True
            if self._unseen:
                self._idle = False
                self._wake.wait(_LOOK_INTERVAL)
            else:
                self._wake.wait()
                self._idle = False
            self._wake.clear()
            if self._stop:
                return
            self._unseen = False
            try:
                self._check()
            except Exception:  # keep checkpointing later; SQLite's WAL stays valid meanwhile
                log.exception("a WAL checkpoint failed")
            # Commits meanwhile wake it once: at most one look at the WAL index per pause.
            time.sleep(_PAUSE)

    def _check(self) -> None:
        pending = self._pending_frames()
        if pending is None:  # no readable WAL index: by time
            if time.monotonic() - self._last < FALLBACK_INTERVAL:
                return
        elif pending < self._pages:
            return
        self._armed = True
        if self._wal_bytes() > self._max_wal_bytes:
            self._checkpoint("TRUNCATE")
            return
        # Until it has caught up (the writer may commit while one runs), or makes no more
        # progress (a reader's snapshot holds the rest back, another process checkpoints).
        before = -1
        while not self._stop:
            _busy, frames, copied = self._checkpoint("PASSIVE")
            if copied >= frames or copied <= before:
                return
            before = copied

    def _checkpoint(self, mode: str) -> tuple[int, int, int]:
        row = self._connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self._last = time.monotonic()
        self.checkpoints += 1
        busy, frames, copied = (int(value) for value in row)
        return busy, frames, copied

    def _pending_frames(self) -> int | None:
        """Frames of the WAL not yet copied into the database, from the WAL index; None
        when it cannot be read as documented."""
        state = self._wal_index()
        return None if state is None else max(0, state[0] - state[1])

    def _wal_index(self) -> tuple[int, int] | None:
        """(frames in the WAL, frames copied into the database) from the WAL index; None
        when it cannot be read as documented."""
        return wal_frames(self._shm)

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self._wal).st_size
        except OSError:
            return 0
