"""Reading a SQLite database's WAL index, for the checkpointers that move WAL checkpoints off
the commits: HQ's (storedvalue.hq.storage.checkpoints) and the terminal library's
(storedvalue.terminal._checkpoints). Shared by both, so it depends on the standard library
alone.

The WAL index is the ``-shm`` file beside the database (https://www.sqlite.org/walformat.html):
a header of 48 bytes (twice), then the checkpoint information. In the header, at byte 0 its
version (3007000), at 12 whether it is initialized, at 16 mxFrame (the last valid frame of
the WAL); nBackfill (the frames already copied into the database file) at byte 96. In the
host's byte order. Read only to decide when to checkpoint: a wrong reading makes a
checkpoint early or late, never a wrong one.
"""

from __future__ import annotations

import struct
from pathlib import Path

_WAL_INDEX_VERSION = 3007000
_HEADER = struct.Struct("=I8xB3xI")  # iVersion, isInit, mxFrame
_BACKFILL = struct.Struct("=I")
_BACKFILL_AT = 96


def wal_index_path(database_file: Path) -> Path:
    """The WAL index (``-shm``) of the SQLite database file ``database_file``."""
    return Path(f"{database_file}-shm")


def wal_frames(wal_index: Path) -> tuple[int, int] | None:
    """(frames in the WAL, frames copied into the database file) from the WAL index at
    ``wal_index``; None when it cannot be read as documented (absent, short, another
    version, not initialized)."""
    try:
        with open(wal_index, "rb") as shm:
            head = shm.read(_BACKFILL_AT + _BACKFILL.size)
    except OSError:
        return None
    if len(head) < _BACKFILL_AT + _BACKFILL.size:
        return None
    version, initialized, frames = _HEADER.unpack_from(head)
    if version != _WAL_INDEX_VERSION or initialized != 1:
        return None
    copied: int = _BACKFILL.unpack_from(head, _BACKFILL_AT)[0]
    return int(frames), copied
