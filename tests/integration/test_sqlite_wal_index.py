"""Reading SQLite's WAL index (storedvalue.sqlite_wal), which HQ's and the terminal's
checkpointers use to decide when to checkpoint: what a real SQLite file says, not a copy of
the format."""

from __future__ import annotations

import sqlite3
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
