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

The file is never closed while SQLite may use it. POSIX advisory locks belong to a process
and a file, not to a descriptor: closing *any* descriptor of a file drops every lock the
process holds on it, SQLite's included (https://www.sqlite.org/howtocorrupt.html, 2.2).
Opening the WAL index and closing it at each reading dropped the shared lock by which a
process tells others it has the WAL index mapped, and the read and write locks of its
connections: another process opening the database then took itself for the first, emptied
and rebuilt the WAL index under this one's mapping (an HQ worker died of SIGBUS as it
started), and could have written while this process's writer held the write lock. So each
WAL index is opened once, read with ``pread``, and its descriptor closed only once the file
has been deleted (SQLite deletes it only when no connection uses it).
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

_WAL_INDEX_VERSION = 3007000
_HEADER = struct.Struct("=I8xB3xI")  # iVersion, isInit, mxFrame
_BACKFILL = struct.Struct("=I")
_BACKFILL_AT = 96
_READ = _BACKFILL_AT + _BACKFILL.size

# The WAL indexes open in this process, by file (device, inode): their descriptors.
_descriptors: dict[tuple[int, int], int] = {}
_descriptors_guard = threading.Lock()


def wal_index_path(database_file: Path) -> Path:
    """The WAL index (``-shm``) of the SQLite database file ``database_file``."""
    return Path(f"{database_file}-shm")


def wal_frames(wal_index: Path) -> tuple[int, int] | None:
    """(frames in the WAL, frames copied into the database file) from the WAL index at
    ``wal_index``; None when it cannot be read as documented (absent, short, another
    version, not initialized)."""
    descriptor = _descriptor(wal_index)
    if descriptor is None:
        return None
    try:
        head = os.pread(descriptor, _READ, 0)
    except OSError:
        return None
    if len(head) < _READ:
        return None
    version, initialized, frames = _HEADER.unpack_from(head)
    if version != _WAL_INDEX_VERSION or initialized != 1:
        return None
    copied: int = _BACKFILL.unpack_from(head, _BACKFILL_AT)[0]
    return int(frames), copied


def _descriptor(wal_index: Path) -> int | None:
    """A descriptor of the file at ``wal_index``, kept open: opened at the first reading of
    that file (not closed before the file is deleted, see the module's docstring)."""
    try:
        found = os.stat(wal_index)
    except OSError:
        return None
    key = (found.st_dev, found.st_ino)
    with _descriptors_guard:
        descriptor = _descriptors.get(key)
        if descriptor is not None:
            return descriptor
        _close_deleted()
        try:
            descriptor = os.open(wal_index, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        opened = os.fstat(descriptor)
        key = (opened.st_dev, opened.st_ino)  # the file may have been replaced since stat
        if key in _descriptors:  # then it may be one held already: never close that one
            held = _descriptors[key]
            _descriptors[(-1, descriptor)] = descriptor  # kept open too, under no file
            return held
        _descriptors[key] = descriptor
        return descriptor


def _close_deleted() -> None:
    """Close the descriptors of WAL indexes deleted since they were opened: no connection
    uses such a file any more, nor can one open it (run under the guard)."""
    for key, descriptor in list(_descriptors.items()):
        try:
            deleted = os.fstat(descriptor).st_nlink == 0
        except OSError:
            deleted = False
        if deleted:
            del _descriptors[key]
            os.close(descriptor)
