"""Several HQ processes' writers on one SQLite file: each executor takes the writer lock (a
`flock` beside the database) before BEGIN IMMEDIATE and gives it back whenever its
transaction ends, so two executors debiting the same cards lose nothing and never give up,
and a failing group never leaves the other processes locked out.

Two executors in one process stand for two processes: a `flock` belongs to an open file,
so they exclude each other exactly as two processes do. Each serves its own event loop on
its own thread, as each HQ process does."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from storage_samples import card_number, make_card

from storedvalue.hq.domain.errors import HQBusy, InvalidField
from storedvalue.hq.domain.offline_common import BalanceChange
from storedvalue.hq.services.transactions import Work
from storedvalue.hq.services.unit_of_work import Repositories
from storedvalue.hq.storage import SqlStorage, group_commit, upgrade_to_head
from storedvalue.hq.storage.group_commit import GroupCommitTransactions
from storedvalue.hq.storage.transaction import Transaction
from storedvalue.hq.storage.writer_lock import WriterLock, lock_is_free, writer_lock_path

CARDS = 4
INITIAL = 5_000
DEBITS_PER_EXECUTOR = 300
DEADLINE = 30.0


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "hq.sqlite3"
    storage = SqlStorage.from_url(f"sqlite:///{path}")
    try:
        upgrade_to_head(storage.engine)
        with storage.unit_of_work(write=True) as uow:
            uow.cards.add([make_card(card_number(n), balance=INITIAL)
                           for n in range(1, CARDS + 1)])
            uow.commit()
    finally:
        storage.close()
    return path


def debits(number: str) -> Work[int]:
    """Takes one minor unit off the card: a read and a write in one transaction, so a lost
    update or a write applied twice shows in the balance."""

    def work(uow: Repositories) -> int:
        balance = uow.cards.balances_for_update([number], "till-1")[number].balance_minor
        uow.cards.set_balances([BalanceChange(number, balance - 1, False)])
        return balance - 1

    return work


def balances(path: Path) -> list[int]:
    with sqlite3.connect(path) as outside:
        return [row[0] for row in outside.execute(
            "SELECT balance_minor FROM cards ORDER BY card_number")]


def test_two_executors_on_one_file_debiting_the_same_cards_lose_no_write_and_never_give_up(
    database: Path,
) -> None:
    url = f"sqlite:///{database}"
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def process(index: int) -> None:
        storage = SqlStorage.from_url(url)
        transactions = GroupCommitTransactions(storage)

        async def spend() -> None:
            start.wait(timeout=30)
            # Bursts of concurrent units, each burst across every card, so both executors
            # are writing the same rows over the same moments.
            for burst in range(DEBITS_PER_EXECUTOR // CARDS // 5):
                outcomes = await asyncio.gather(*(
                    transactions.write(debits(card_number(n)))
                    for n in range(1, CARDS + 1) for _ in range(5)
                ), return_exceptions=True)
                failures.extend(o for o in outcomes if isinstance(o, BaseException))
                del burst

        try:
            asyncio.run(spend())
        except BaseException as error:
            failures.append(error)
        finally:
            transactions.close()
            storage.close()

    threads = [threading.Thread(target=process, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)

    assert failures == []  # no HQBusy, no error
    per_card = 2 * (DEBITS_PER_EXECUTOR // CARDS // 5) * 5
    assert balances(database) == [INITIAL - per_card] * CARDS
    assert lock_is_free(writer_lock_path(database))


def test_a_write_waits_for_another_process_holding_the_writer_lock_then_goes_on(
    database: Path,
) -> None:
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    transactions = GroupCommitTransactions(storage)
    other = os.open(writer_lock_path(database), os.O_RDWR)
    number = card_number(1)

    async def scenario() -> tuple[bool, int, int]:
        fcntl.flock(other, fcntl.LOCK_EX)  # another HQ process is writing
        write = asyncio.create_task(transactions.write(debits(number)))
        # The loop goes on serving meanwhile: a read comes back.
        read = await asyncio.wait_for(
            transactions.read(lambda uow: uow.cards.get(number)), timeout=10)
        assert read is not None
        # The waiting writer has not taken SQLite's write lock either.
        with sqlite3.connect(database, isolation_level=None, timeout=0) as outside:
            outside.execute("BEGIN IMMEDIATE")
            outside.execute("ROLLBACK")
        waited = not write.done()
        fcntl.flock(other, fcntl.LOCK_UN)
        return waited, read.balance_minor, await asyncio.wait_for(write, timeout=30)

    try:
        waited, before, after = asyncio.run(scenario())
    finally:
        transactions.close()
        storage.close()
        os.close(other)

    assert waited
    assert (before, after) == (INITIAL, INITIAL - 1)
    assert balances(database)[0] == INITIAL - 1


def test_the_writer_lock_is_free_after_failing_units_a_lost_transaction_a_failed_commit_and_close(
    database: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock = writer_lock_path(database)
    # SQLite ends a transaction by itself on some errors (disk full, I/O error); a trigger
    # raising ROLLBACK does the same on demand.
    lost = card_number(99)
    with sqlite3.connect(database) as outside:
        outside.execute(
            f"CREATE TRIGGER lose_the_transaction AFTER INSERT ON cards "
            f"WHEN NEW.card_number = '{lost}' BEGIN SELECT RAISE(ROLLBACK, 'made up'); END")
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    transactions = GroupCommitTransactions(storage)

    def fails_after_writing(uow: Repositories) -> None:
        debits(card_number(1))(uow)
        raise InvalidField("amount", "made up for the test")

    def loses_the_transaction(uow: Repositories) -> None:
        uow.cards.add([make_card(lost)])

    async def one(work: Work[object], *, large: bool = False) -> BaseException | None:
        try:
            await transactions.write(work, large=large)
        except Exception as error:
            return error
        return None

    async def scenario() -> list[tuple[str, bool]]:
        free_after = []
        for name, work, large in (
            ("fails after writing", fails_after_writing, False),
            ("fails after writing, alone on the thread", fails_after_writing, True),
            ("loses the transaction", loses_the_transaction, False),
            ("loses the transaction, alone on the thread", loses_the_transaction, True),
        ):
            failure = await one(work, large=large)
            assert failure is not None, name
            free_after.append((name, lock_is_free(lock)))

        def commit_fails(_tx: Transaction) -> None:
            raise sqlite3.OperationalError("disk I/O error (made up)")

        with monkeypatch.context() as patch:
            patch.setattr(Transaction, "commit", commit_fails)
            failure = await one(debits(card_number(2)))
        assert failure is not None
        free_after.append(("commit fails", lock_is_free(lock)))
        # And the next writer still writes.
        assert await transactions.write(debits(card_number(3))) == INITIAL - 1
        free_after.append(("commits", lock_is_free(lock)))
        return free_after

    try:
        free_after = asyncio.run(scenario())
    finally:
        transactions.close()
        storage.close()

    assert free_after == [(name, True) for name, _free in free_after]
    assert lock_is_free(lock)
    assert balances(database) == [INITIAL, INITIAL, INITIAL - 1, INITIAL]
    assert oct(lock.stat().st_mode & 0o777) == oct(0o600)


def test_the_writer_lock_is_held_while_a_transaction_is_open_and_free_once_it_ends(
    database: Path,
) -> None:
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    transactions = GroupCommitTransactions(storage)
    lock = writer_lock_path(database)
    entered = threading.Event()
    finish = threading.Event()

    def holds_the_transaction(uow: Repositories) -> int:
        result = debits(card_number(1))(uow)
        entered.set()
        assert finish.wait(timeout=30)
        return result

    async def scenario() -> bool:
        write = asyncio.create_task(transactions.write(holds_the_transaction, large=True))
        assert await asyncio.to_thread(entered.wait, 30)
        held = not lock_is_free(lock)  # the writer thread is inside its transaction
        finish.set()
        await write
        return held

    try:
        held = asyncio.run(scenario())
    finally:
        transactions.close()
        storage.close()

    assert held
    assert lock_is_free(lock)


def test_a_write_locked_out_past_the_busy_timeout_fails_busy_and_frees_the_writer_lock(
    database: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A writer that does not take the writer lock (another tool, an older HQ) keeps SQLite's
    # write lock past the busy timeout (shortened here from 30 s).
    monkeypatch.setattr(group_commit, "SQLITE_BUSY_TIMEOUT_MS", 50)
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    transactions = GroupCommitTransactions(storage)
    other = sqlite3.connect(database, isolation_level=None, timeout=0)

    async def scenario() -> tuple[BaseException | None, bool, int]:
        other.execute("BEGIN IMMEDIATE")
        try:
            await transactions.write(debits(card_number(1)))
        except HQBusy as busy:
            failure: BaseException | None = busy
        else:
            failure = None
        free = lock_is_free(writer_lock_path(database))
        other.execute("ROLLBACK")
        return failure, free, await transactions.write(debits(card_number(1)))

    try:
        failure, free, after = asyncio.run(scenario())
    finally:
        transactions.close()
        storage.close()
        other.close()

    assert isinstance(failure, HQBusy)
    assert free
    assert after == INITIAL - 1


# Takes the writer lock, says so, and stops itself holding it, as a process stopped by a
# debugger or stuck on a frozen disk does; once continued (SIGCONT) it exits, which lets go.
STOPPED_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


@contextmanager
def stopped_holder(lock: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the writer lock, stopped; it is gone when this ends."""
    holder = subprocess.Popen([sys.executable, "-c", STOPPED_HOLDER, str(lock)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.send_signal(signal.SIGCONT)
        try:
            holder.wait(timeout=DEADLINE)
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()


def go_on(holder: subprocess.Popen[str]) -> None:
    """Continue a stopped holder and wait until it is gone, its lock with it."""
    holder.send_signal(signal.SIGCONT)
    assert holder.wait(timeout=DEADLINE) == 0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("large", [False, True], ids=["on the loop", "alone on the thread"])
def test_writes_fail_busy_after_the_busy_timeout_while_a_stopped_process_holds_the_writer_lock(
    database: Path, monkeypatch: pytest.MonkeyPatch, large: bool,
) -> None:
    # Shortened from 30 s; the wait for the writer lock ends with SQLite's busy timeout.
    monkeypatch.setattr(group_commit, "SQLITE_BUSY_TIMEOUT_MS", 300)
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    transactions = GroupCommitTransactions(storage)
    number = card_number(1)

    async def one() -> BaseException | int:
        try:
            return await transactions.write(debits(number), large=large)
        except Exception as error:
            return error

    async def scenario() -> tuple[list[BaseException | int], float, BaseException | int, int]:
        with stopped_holder(writer_lock_path(database)) as holder:
            started = time.monotonic()
            # Several callers waiting together (one group on the loop, one after another
            # on the thread).
            first = list(await asyncio.gather(*(one() for _ in range(3))))
            waited = time.monotonic() - started
            # The next one waits behind the same stopped holder, and fails the same way.
            again = await one()
            go_on(holder)
            # The holder is gone: the next write takes the lock and goes on.
            after = await asyncio.wait_for(
                transactions.write(debits(number), large=large), timeout=DEADLINE)
        return first, waited, again, after

    try:
        first, waited, again, after = asyncio.run(scenario())
    finally:
        transactions.close()
        storage.close()

    assert [type(outcome) for outcome in first] == [HQBusy] * 3
    assert waited >= 0.3  # the busy timeout, not a failure at once
    assert isinstance(again, HQBusy)
    assert after == INITIAL - 1  # nothing of the failed writes was applied
    assert balances(database) == [INITIAL - 1] + [INITIAL] * (CARDS - 1)
    assert lock_is_free(writer_lock_path(database))


def waiting_in_the_kernel(lock: Path) -> bool:
    """Whether some descriptor is queued for the `flock` of `lock` (/proc/locks shows each
    blocked request as "->" after its number)."""
    inode = f":{lock.stat().st_ino} "
    return any("->" in line and inode in line
               for line in Path("/proc/locks").read_text().splitlines())


def test_a_writer_waiting_for_the_lock_takes_it_the_moment_the_holder_lets_go(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hq.sqlite3-writer.lock"
    lock = WriterLock(path)
    other = os.open(path, os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    taken: list[tuple[bool, float]] = []
    waiter = threading.Thread(
        target=lambda: taken.append((lock.acquire(timeout=60), time.monotonic())))
    try:
        waiter.start()
        wait_until(lambda: waiting_in_the_kernel(path), "the writer to queue for the lock")
        released = time.monotonic()
        fcntl.flock(other, fcntl.LOCK_UN)
        waiter.join(timeout=DEADLINE)
        other_got_it = lock_is_free(path)
    finally:
        lock.close()
        os.close(other)

    [(got, at)] = taken
    assert got
    assert at - released < 5  # woken by the release, not by its deadline (60 s)
    assert not other_got_it


def test_closing_a_lock_stuck_behind_a_stopped_holder_returns_at_once_and_leaves_nothing_open(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hq.sqlite3-writer.lock"
    path.touch()

    def lock_files_open() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir()
                   if os.path.realpath(fds / fd.name) == str(path.resolve()))

    with stopped_holder(path) as holder:
        lock = WriterLock(path)
        gave_up = not lock.acquire(timeout=0.05)
        started = time.monotonic()
        lock.close()  # its waiter is still queued behind the holder
        closing = time.monotonic() - started
        go_on(holder)

    def waiter_gone() -> bool:
        names = {thread.name for thread in threading.enumerate()}
        return lock_files_open() == 0 and "hq-sqlite-writer-lock" not in names

    wait_until(waiter_gone, "the waiter to close the descriptor and end")

    assert gave_up
    assert closing < 5
    assert lock_is_free(path)
