"""The terminal's WAL is checkpointed on a thread of its own, never inside a sale's commit,
and still starts over (stays bounded) while the till keeps writing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from storedvalue.terminal._checkpoints import CHECKPOINT_PAGES
from storedvalue.terminal._database import DATABASE_FILE, Database

from .conftest import wait_until


def test_commits_leave_checkpoints_to_the_thread_and_the_wal_starts_over(
    tmp_path: Path,
) -> None:
    database = Database(tmp_path, "T1")
    try:
        with database.read() as conn:
            # A commit never copies the WAL into the database file itself.
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with database.write() as conn:
            conn.execute("CREATE TABLE filler (payload BLOB NOT NULL)")
        checkpointer = database._checkpoints
        assert checkpointer is not None

        written = 0

        def commit() -> None:
            nonlocal written
            with database.write() as conn:  # overflow pages and a leaf: a few frames
                conn.execute("INSERT INTO filler (payload) VALUES (?)", (bytes(8000),))
            written += 1

        def checkpointed_twice() -> bool:
            commit()  # the thread looks at the WAL after commits
            return checkpointer.checkpoints >= 2 * 2  # two rounds: bulk, then the rest

        wait_until(checkpointed_twice, timeout_s=60)
        # Copied and started over, not grown: without the thread (and no automatic
        # checkpoint) the WAL would hold every frame written.
        wal = (tmp_path / f"{DATABASE_FILE}-wal").stat().st_size
        assert wal < 2 * CHECKPOINT_PAGES * (4096 + 24)
    finally:
        database.close()
    # Every commit is there, read back by a fresh connection: nothing lost by copying.
    connection = sqlite3.connect(tmp_path / DATABASE_FILE)
    try:
        assert connection.execute("SELECT COUNT(*) FROM filler").fetchone() == (written,)
    finally:
        connection.close()
