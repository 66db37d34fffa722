"""Reading SQLite's WAL index (storedvalue.sqlite_wal), which HQ's and the terminal's
checkpointers use to decide when to checkpoint: what a real SQLite file says, not a copy of
the format."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from storedvalue.sqlite_wal import wal_frames, wal_index_path


def test_the_wal_index_tells_the_frames_written_and_those_copied(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite3"
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA wal_autocheckpoint=0")
        connection.execute("CREATE TABLE t (payload BLOB)")
        connection.executemany("INSERT INTO t VALUES (?)", [(bytes(3000),)] * 20)
        state = wal_frames(wal_index_path(database))
        assert state is not None
        frames, copied = state
        assert frames >= 20 and copied == 0, state

        _busy, wal, done = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert wal_frames(wal_index_path(database)) == (wal, done) == (frames, frames)
    finally:
        connection.close()


def test_no_reading_without_a_usable_wal_index(tmp_path: Path) -> None:
    assert wal_frames(tmp_path / "absent-shm") is None
    short = tmp_path / "short-shm"
    short.write_bytes(bytes(50))
    assert wal_frames(short) is None
    uninitialized = tmp_path / "zeros-shm"
    uninitialized.write_bytes(bytes(200))
    assert wal_frames(uninitialized) is None


# In SQLite's unix VFS, the byte of the WAL index on which every process that has it mapped
# holds a shared lock (UNIX_SHM_DMS: (22 + 8) * 4 + 8). A process that can lock it
# exclusively takes itself for the only user, and empties and rebuilds the file.
_DMS_BYTE = 128
_TRY_EXCLUSIVE = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, int(sys.argv[2]))
except OSError:
    print("held")
else:
    print("free")
"""


def wal_index_held_by_another_process(database: Path) -> bool:
    """Whether a process other than this one finds the WAL index in use (the locks of this
    process do not stop it from locking)."""
    answer = subprocess.run(
        [sys.executable, "-c", _TRY_EXCLUSIVE, str(wal_index_path(database)), str(_DMS_BYTE)],
        capture_output=True, text=True, check=True, timeout=60)
    return answer.stdout.strip() == "held"


def test_reading_the_wal_index_leaves_sqlites_locks_on_it(tmp_path: Path) -> None:
    """Closing any descriptor of a file drops all of a process's POSIX locks on it: a reading
    that opened and closed the WAL index let another process rebuild it under this one's
    connections (an HQ worker died of SIGBUS)."""
    database = tmp_path / "db.sqlite3"
    connection = sqlite3.connect(database, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (payload BLOB)")
        connection.execute("INSERT INTO t VALUES (x'00')")
        assert wal_index_held_by_another_process(database)

        for _ in range(3):
            assert wal_frames(wal_index_path(database)) is not None

        assert wal_index_held_by_another_process(database)
        assert connection.execute("SELECT count(*) FROM t").fetchone() == (1,)
    finally:
        connection.close()
