"""WAL checkpoints off the writer's commits (storage.checkpoints): HQ's writer never
checkpoints in a COMMIT; a thread of its own copies the WAL into the database file once it
holds enough pages, and empties a WAL grown past its bound."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storedvalue.hq.storage import group_commit
from storedvalue.hq.storage.checkpoints import WalCheckpointer
from storedvalue.hq.storage.group_commit import GroupCommitTransactions
from storedvalue.hq.storage.sqlalchemy_storage import SqlStorage
from storedvalue.sqlite_wal import wal_frames as wal_index_frames
from storedvalue.sqlite_wal import wal_index_path


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "db.sqlite3", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    yield connection
    connection.close()


def write_pages(connection: sqlite3.Connection, pages: int) -> None:
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany("INSERT INTO t (payload) VALUES (?)",
                           [(bytes(4000),) for _ in range(pages)])
    connection.execute("COMMIT")


def wal_frames(connection: sqlite3.Connection) -> tuple[int, int]:
    """(frames in the WAL, frames copied into the database), by a PASSIVE checkpoint."""
    _busy, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return frames, copied


def test_the_wal_is_checkpointed_once_it_holds_enough_pages(
    tmp_path: Path, writer: sqlite3.Connection
) -> None:
    checkpointer = WalCheckpointer(tmp_path / "db.sqlite3", pages=100)
    try:
        write_pages(writer, 20)
        checkpointer.committed()
        time.sleep(0.2)
        assert checkpointer.checkpoints == 0  # 20 pages: not yet

        write_pages(writer, 200)
        checkpointer.committed()
        wait_for(lambda: checkpointer.checkpoints > 0, "a checkpoint")
        # Everything copied: the writer's next commit starts the WAL over.
        before = (tmp_path / "db.sqlite3-wal").stat().st_size
        write_pages(writer, 5)
        assert (tmp_path / "db.sqlite3-wal").stat().st_size == before
        frames, _copied = wal_frames(writer)
        assert frames < 50  # started over, not 225
    finally:
        checkpointer.close()


def test_the_last_commits_of_a_burst_are_looked_at_without_another_commit(
    tmp_path: Path, writer: sqlite3.Connection
) -> None:
    # The writer wakes the thread at most once every 50 ms; a commit that did not wake it
    # (here: the one that takes the WAL past its checkpoint size, right after another) is
    # looked at once that interval has passed, not only when the next commit comes.
    checkpointer = WalCheckpointer(tmp_path / "db.sqlite3", pages=100)
    try:
        write_pages(writer, 20)
        checkpointer.committed()
        write_pages(writer, 200)
        checkpointer.committed()  # within 50 ms of the first: wakes nothing
        wait_for(lambda: checkpointer.checkpoints > 0, "a checkpoint", timeout=5)
    finally:
        checkpointer.close()


def test_a_wal_past_its_bound_is_emptied(tmp_path: Path, writer: sqlite3.Connection) -> None:
    checkpointer = WalCheckpointer(tmp_path / "db.sqlite3", pages=10, max_wal_bytes=100_000)
    try:
        write_pages(writer, 200)  # ~800 KB of WAL
        checkpointer.committed()
        wait_for(lambda: (tmp_path / "db.sqlite3-wal").stat().st_size == 0,
                 "the WAL file truncated")
        assert writer.execute("SELECT count(*) FROM t").fetchone() == (200,)
    finally:
        checkpointer.close()


@contextlib.contextmanager
def hq_writer(database: Path
              ) -> Iterator[tuple[GroupCommitTransactions, Callable[[object], None]]]:
    """HQ's group commit on a new database file with one table, t, and a unit of work that
    writes one page into it."""
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    with storage.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    transactions = GroupCommitTransactions(storage, readers=1)
    try:
        held = transactions._held
        assert held is not None

        def write(_uow: object) -> None:
            held[1]._execute("INSERT INTO t (payload) VALUES (zeroblob(4000))", None)

        yield transactions, write
    finally:
        transactions.close()
        storage.close()


def test_hqs_writer_commits_without_checkpointing_and_its_checkpointer_does(
    tmp_path: Path,
) -> None:
    with hq_writer(tmp_path / "hq.sqlite3") as (transactions, write):
        held = transactions._held
        assert held is not None
        driver = held[0].driver_connection
        assert driver is not None
        assert driver.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)

        async def fill() -> None:
            # Past the 8,192 pages that start a checkpoint, in groups of many units.
            for _ in range(100):
                await asyncio.gather(*(transactions.write(write) for _ in range(100)))

        asyncio.run(fill())
        checkpointer = transactions._checkpoints
        assert checkpointer is not None
        wait_for(lambda: checkpointer.checkpoints > 0, "a checkpoint")


def test_a_writer_never_idle_starts_a_long_wal_over_once_its_checkpointer_has_copied_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A WAL starts over only at a write transaction begun with every frame copied; a writer
    # with units always waiting begins its next transaction right after each commit, so
    # the checkpointer alone never catches up: the writer copies the last frames itself.
    pages = 200
    monkeypatch.setattr(group_commit, "WalCheckpointer",
                        functools.partial(WalCheckpointer, pages=pages))
    database = tmp_path / "hq.sqlite3"
    with hq_writer(database) as (transactions, write):
        async def busy() -> tuple[int, int]:
            """Writers that always have a unit waiting, till the WAL, once past `pages`
            frames, starts over: (the most frames it held, the frames after)."""
            deadline = time.monotonic() + 30
            longest = 0
            restarted: asyncio.Future[tuple[int, int]] = (
                asyncio.get_running_loop().create_future())

            async def writer() -> None:
                nonlocal longest
                while not restarted.done():
                    await transactions.write(write)
                    state = wal_index_frames(wal_index_path(database))
                    assert state is not None
                    frames = state[0]
                    longest = max(longest, frames)
                    # Without the writer's help it starts over only once emptied past
                    # MAX_WAL_BYTES (~130,000 frames here), seconds later.
                    if (longest > 20 * pages or time.monotonic() > deadline) and (
                            not restarted.done()):
                        restarted.set_exception(AssertionError(
                            f"the WAL grew to {longest} frames without starting over"))
                        return
                    if longest >= pages and frames < pages // 2 and not restarted.done():
                        restarted.set_result((longest, frames))

            tasks = [asyncio.create_task(writer()) for _ in range(8)]
            try:
                return await restarted
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        longest, after = asyncio.run(busy())
        assert pages <= longest <= 20 * pages
        assert after < pages // 2
