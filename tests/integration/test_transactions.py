"""The transaction executors (SQLite group commit; a thread per connection on PostgreSQL and
the fake), on every backend of the `storage` fixture: a unit that fails rolls back alone, a
unit that loses a race is retried alone, and nobody is answered before their change is
committed."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from storage_samples import NOW, card_number, make_card, read

from storedvalue.hq.config import HQConfig
from storedvalue.hq.domain.cards import CardKind, issue_card
from storedvalue.hq.domain.errors import HQBusy, InvalidField
from storedvalue.hq.domain.journal import JournalEntryKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.server import open_transactions
from storedvalue.hq.services.transactions import MAX_ATTEMPTS, Transactions, Work
from storedvalue.hq.services.unit_of_work import (
    ConcurrentUpdate,
    Repositories,
    Storage,
    StoredResponse,
)
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.hq.storage.group_commit import GroupCommitTransactions

T = TypeVar("T")


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[tuple[SqlStorage, Path]]:
    path = tmp_path / "hq.sqlite3"
    storage = SqlStorage.from_url(f"sqlite:///{path}")
    try:
        upgrade_to_head(storage.engine)
        yield storage, path
    finally:
        storage.close()


def run(storage: Storage, scenario: Callable[[Transactions], Coroutine[Any, Any, T]]) -> T:
    """Run `scenario(transactions)` with HQ's executor for `storage`, then close it."""
    transactions = open_transactions(storage, HQConfig())
    try:
        return asyncio.run(scenario(transactions))
    finally:
        transactions.close()


def adds(number: int) -> Work[str]:
    def work(uow: Repositories) -> str:
        uow.cards.add([make_card(card_number(number))])
        return card_number(number)

    return work


def adds_noting(events: list[str], number: int) -> Work[str]:
    """`adds(number)`, noting in `events` when it runs."""
    def work(uow: Repositories) -> str:
        events.append(f"{number} runs")
        return adds(number)(uow)

    return work


def known_cards(storage: Storage, numbers: range) -> list[int]:
    async def read(transactions: Transactions) -> list[int]:
        cards = await transactions.read(
            lambda uow: [uow.cards.get(card_number(number)) for number in numbers]
        )
        return [number for number, card in zip(numbers, cards, strict=True) if card]

    return run(storage, read)


def test_a_unit_that_fails_rolls_back_alone_while_the_others_commit(storage: Storage) -> None:
    def adds_then_fails(uow: Repositories) -> None:
        uow.cards.add([make_card(card_number(2))])
        raise InvalidField("amount", "made up for the test")

    async def together(transactions: Transactions) -> tuple[object, ...]:
        return await asyncio.gather(
            transactions.write(adds(1)),
            transactions.write(adds_then_fails),
            transactions.write(adds(3)),
            return_exceptions=True,
        )

    first, failed, third = run(storage, together)

    assert (first, third) == (card_number(1), card_number(3))
    assert isinstance(failed, InvalidField)
    assert known_cards(storage, range(1, 4)) == [1, 3]


def test_a_bug_in_a_unit_rolls_it_back_alone(storage: Storage) -> None:
    def adds_then_breaks(uow: Repositories) -> None:
        uow.cards.add([make_card(card_number(2))])
        raise RuntimeError("a bug")

    async def together(transactions: Transactions) -> tuple[object, ...]:
        return await asyncio.gather(
            transactions.write(adds_then_breaks),
            transactions.write(adds(3)),
            return_exceptions=True,
        )

    broken, third = run(storage, together)

    assert isinstance(broken, RuntimeError) and third == card_number(3)
    assert known_cards(storage, range(1, 4)) == [3]


def test_a_unit_that_loses_a_race_runs_again_alone(storage: Storage) -> None:
    attempts = []

    def loses_once(uow: Repositories) -> int:
        attempts.append(1)
        uow.cards.add([make_card(card_number(10 + len(attempts)))])
        if len(attempts) == 1:
            raise ConcurrentUpdate("made up for the test")
        return len(attempts)

    async def together(transactions: Transactions) -> tuple[str, int]:
        return await asyncio.gather(
            transactions.write(adds(1)),
            transactions.write(loses_once),
        )

    first, tries = run(storage, together)

    assert (first, tries) == (card_number(1), 2)
    # The first attempt's card was rolled back with it; the second attempt's is kept.
    assert known_cards(storage, range(1, 13)) == [1, 12]


def test_a_unit_that_loses_every_race_is_hq_busy_and_changes_nothing(storage: Storage) -> None:
    attempts = []

    def always_loses(uow: Repositories) -> None:
        attempts.append(1)
        uow.cards.add([make_card(card_number(5))])
        raise ConcurrentUpdate("made up for the test")

    async def alone(transactions: Transactions) -> None:
        await transactions.write(always_loses)

    with pytest.raises(HQBusy):
        run(storage, alone)
    assert len(attempts) == MAX_ATTEMPTS
    assert known_cards(storage, range(5, 6)) == []


def test_a_unit_commits_the_journal_its_cards_recorded_and_a_failed_unit_none(
    storage: Storage,
) -> None:
    attempts = []

    def issues(number: int, *, fails: bool = False, loses_first_race: bool = False
               ) -> Work[None]:
        def work(uow: Repositories) -> None:
            attempts.append(number)
            uow.cards.add([issue_card(
                card_number=card_number(number), kind=CardKind.GIFT_CARD,
                value=Money(500, "EUR"), terminal_id="till-1", transaction_id=f"sale-{number}",
                now=NOW)])
            if fails:
                raise InvalidField("amount", "made up for the test")
            if loses_first_race and attempts.count(number) == 1:
                raise ConcurrentUpdate("made up for the test")

        return work

    async def together(transactions: Transactions) -> tuple[object, ...]:
        return await asyncio.gather(
            transactions.write(issues(1)),
            transactions.write(issues(2, fails=True)),
            transactions.write(issues(3, loses_first_race=True)),
            return_exceptions=True,
        )

    first, failed, third = run(storage, together)

    assert first is None and third is None and isinstance(failed, InvalidField)
    journals = read(storage, lambda uow: [
        [(e.kind, e.amount_minor) for e in uow.journal.list_for_card(
            card_number(n), after_entry_id=0, limit=10)]
        for n in (1, 2, 3)])
    # No entry of the failed unit, nor of the attempt that lost its race, went with another.
    assert journals == [[(JournalEntryKind.ISSUE, 500)], [], [(JournalEntryKind.ISSUE, 500)]]


def test_units_that_arrive_together_share_one_commit(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage)

    async def together() -> tuple[int, int]:
        before = transactions.commits
        await asyncio.gather(*(transactions.write(adds(n)) for n in range(1, 9)))
        return before, transactions.commits

    try:
        before, after = asyncio.run(together())
    finally:
        transactions.close()

    assert after - before == 1
    assert known_cards(storage, range(1, 9)) == list(range(1, 9))


def test_a_lone_caller_is_not_kept_waiting_for_others(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """One caller at a time: each write is its own group, and the writer tries waiting for
    others only now and then (every 64th group), stopping as soon as nobody came."""
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage)

    async def one_by_one() -> None:
        for number in range(1, 301):
            await transactions.write(adds(number))

    try:
        asyncio.run(one_by_one())
    finally:
        transactions.close()

    assert transactions.commits == 300
    assert 1 <= transactions.gathers <= 300 // 64
    assert known_cards(storage, range(1, 301)) == list(range(1, 301))


def test_callers_at_a_steady_count_are_not_kept_waiting_to_the_limit(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """Four callers, each writing again as soon as it is answered: once the writer has
    learned to wait for four, every wait ends as the fourth arrives. It does not wait to
    its limit now and then asking for a fifth who is not coming (before: one group in
    nine, up to `gather_seconds` each)."""
    storage, _path = sqlite_file
    rounds = 200
    transactions = GroupCommitTransactions(storage, gather_seconds=0.005)

    async def caller(offset: int) -> None:
        for step in range(rounds):
            await transactions.write(adds(1 + offset * rounds + step))

    async def callers() -> None:
        await asyncio.gather(*(caller(offset) for offset in range(4)))

    try:
        asyncio.run(callers())
    finally:
        transactions.close()

    assert transactions.gathers >= 100  # waiting was in use: after the first 64 groups
    assert transactions.waits_to_limit <= 2  # the first, learning how many come
    assert transactions.commits <= rounds + 2
    assert known_cards(storage, range(1, 4 * rounds + 1)) == list(range(1, 4 * rounds + 1))


def test_callers_who_keep_coming_back_share_commits(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """Eight callers, each writing again 0.5-3 ms after its answer, so that their writes
    come one by one and mostly find the writer idle: the writer learns to wait for them,
    and makes a quarter fewer commits at least than without waiting (`gather_seconds=0`;
    measured: about half); every write is committed."""
    storage, _path = sqlite_file
    rounds = 150

    def load(gather_seconds: float, first: int) -> tuple[int, int]:
        transactions = GroupCommitTransactions(storage, gather_seconds=gather_seconds)

        async def caller(offset: int) -> None:
            pauses = random.Random(offset)
            for step in range(rounds):
                await transactions.write(adds(first + offset * rounds + step))
                await asyncio.sleep(pauses.uniform(0.0005, 0.003))

        async def callers() -> None:
            await asyncio.gather(*(caller(offset) for offset in range(8)))

        try:
            asyncio.run(callers())
        finally:
            transactions.close()
        return transactions.commits, transactions.gathers

    waiting, gathers = load(0.005, 1)
    not_waiting, none = load(0.0, 10_001)

    assert none == 0 and gathers > 0
    assert waiting * 4 <= not_waiting * 3
    assert known_cards(storage, range(1, 8 * rounds + 1)) == list(range(1, 8 * rounds + 1))
    assert known_cards(storage, range(10_001, 10_001 + 8 * rounds)) == list(
        range(10_001, 10_001 + 8 * rounds))


def counted(runs: list[int], number: int, *, fails: str = "") -> Work[str]:
    """Adds card `number`, noting each run in `runs`; `fails`: "before" raises a business
    error before writing, "after" after writing."""

    def work(uow: Repositories) -> str:
        runs.append(number)
        if fails == "before":
            raise InvalidField("amount", "made up for the test")
        uow.cards.add([make_card(card_number(number))])
        if fails == "after":
            raise InvalidField("amount", "made up for the test")
        return card_number(number)

    return work


@pytest.mark.parametrize("fails", ["before", "after"])
def test_a_unit_failing_before_or_after_its_writes_leaves_its_group_committed_once(
    sqlite_file: tuple[SqlStorage, Path], fails: str,
) -> None:
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage)
    runs: list[int] = []

    async def together() -> tuple[int, tuple[object, ...]]:
        before = transactions.commits
        outcomes = await asyncio.gather(
            transactions.write(counted(runs, 1)),
            transactions.write(counted(runs, 2, fails=fails)),
            transactions.write(counted(runs, 3)),
            return_exceptions=True,
        )
        return transactions.commits - before, outcomes

    try:
        commits, (first, failed, third) = asyncio.run(together())
    finally:
        transactions.close()

    assert commits == 1
    assert (first, third) == (card_number(1), card_number(3))
    assert isinstance(failed, InvalidField)
    assert known_cards(storage, range(1, 4)) == [1, 3]
    # Nothing to undo before a write; after one, the transaction starts over and the unit
    # that had succeeded in it runs again (its caller was not answered yet).
    assert runs == ([1, 2, 3] if fails == "before" else [1, 2, 1, 3])


def test_a_unit_whose_held_back_append_fails_fails_alone_and_the_group_commits(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """On the loop, a group's appends (here requests' results) are sent together at its
    end: one that fails there (a request id already taken) sends the group back to its
    start, and its units run again, with appends written at once: the unit at fault then
    meets the failure itself (here, like `once`, it answers with the first result) while
    the others commit, once, together."""
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage)
    runs: list[int] = []

    def remembers(number: int, request_id: str) -> Work[str]:
        return _adds_card_and_request(number, request_id, runs)

    async def scenario() -> tuple[int, list[str]]:
        await transactions.write(remembers(9, "taken"))
        before = transactions.commits
        held: list[str] = []

        def taken_again(uow: Repositories) -> str:
            """As `once`: no look-up on the first run, one on the next."""
            runs.append(2)
            if held and uow.requests.get("till-1", "taken") is not None:
                return "replayed"
            held.append("once")
            uow.cards.add([make_card(card_number(2))])
            uow.requests.add(StoredResponse(
                caller="till-1", request_id="taken", operation="Test",
                fingerprint=b"f", result_json="{}", created_at=NOW))
            return card_number(2)

        outcomes = await asyncio.gather(
            transactions.write(remembers(1, "one")),
            transactions.write(taken_again),
            transactions.write(remembers(3, "three")),
        )
        return transactions.commits - before, list(outcomes)

    try:
        commits, outcomes = asyncio.run(scenario())
    finally:
        transactions.close()

    assert outcomes == [card_number(1), "replayed", card_number(3)]
    assert commits == 1
    assert known_cards(storage, range(1, 4)) == [1, 3]
    # Once with appends held back; once again, unit 2 now looking its id up first.
    assert runs == [9, 1, 2, 3, 1, 2, 3]


def test_held_back_appends_failing_under_another_units_read_leave_that_unit_unharmed(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """Held-back appends are sent before a statement that reads their table: when they fail
    there, inside a unit that is not at fault, that unit is not failed for it; the group
    runs again and every unit gets its own outcome."""
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage)

    def remembers(number: int, request_id: str) -> Work[str]:
        return _adds_card_and_request(number, request_id, [])

    def looks_up(uow: Repositories) -> str:
        # Reads the request log: the appends of the units before it are sent first.
        found = uow.requests.get("till-1", "one")
        return "found" if found is not None else "none"

    async def scenario() -> list[object]:
        await transactions.write(remembers(9, "taken"))
        return list(await asyncio.gather(
            transactions.write(remembers(1, "one")),
            transactions.write(remembers(2, "taken")),
            transactions.write(looks_up),
            return_exceptions=True,
        ))

    try:
        first, taken, looked = asyncio.run(scenario())
    finally:
        transactions.close()

    assert first == card_number(1)
    assert isinstance(taken, HQBusy)  # its id stays taken through every retry
    assert looked == "found"  # unit 1's result, committed with it
    assert known_cards(storage, range(1, 3)) == [1]


def test_a_groups_callers_are_answered_before_the_next_group_runs(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """A unit that arrives while a commit is on the writer thread runs in the next group,
    and that group waits until the callers of the commit have been answered: a till's
    answer is not held back behind other tills' work (their callers are the load's
    bottleneck at a fleet's concurrency: bench/thread_cpu.py)."""
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage, gather_seconds=0.0)
    events: list[str] = []
    later = functools.partial(adds_noting, events)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        arrivals: list[asyncio.Task[str]] = []

        def first(uow: Repositories) -> str:
            # Arrive while this group is on its way to its commit, not in it.
            arrivals.extend(loop.create_task(transactions.write(later(n))) for n in (2, 3))
            return adds(1)(uow)

        await transactions.write(first)
        events.append("1 answered")
        await asyncio.gather(*arrivals)

    try:
        asyncio.run(scenario())
    finally:
        transactions.close()

    assert events == ["1 answered", "2 runs", "3 runs"]
    assert transactions.commits == 2
    assert known_cards(storage, range(1, 4)) == [1, 2, 3]


def test_a_unit_left_alone_after_a_commit_waits_for_the_callers_just_answered(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    """Once waiting for others has paid, a unit that arrived during a commit does not take
    the next commit alone: it waits (at most `gather_seconds`) for the callers that commit
    answered, who come back with their next call (at a fleet's concurrency: fewer commits,
    less CPU a call)."""
    storage, _path = sqlite_file
    transactions = GroupCommitTransactions(storage, gather_seconds=0.2)
    events: list[str] = []
    later = functools.partial(adds_noting, events)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        for number in range(1, 65):  # alone: the writer does not wait (yet)
            await transactions.write(adds(number))
        # The 65th group tries waiting, and two come: waiting pays, for two callers.
        await asyncio.gather(transactions.write(adds(65)), transactions.write(adds(66)))
        assert transactions.gathers == 1
        arrivals: list[asyncio.Task[str]] = []

        def first(uow: Repositories) -> str:
            # Arrives while this group is on its way to its commit, not in it.
            arrivals.append(loop.create_task(transactions.write(later(100))))
            return adds(67)(uow)

        async def caller(work: Work[str], again: int) -> None:
            await transactions.write(work)
            await asyncio.sleep(0.002)  # the till's round trip
            events.append(f"{again} arrives")
            await transactions.write(later(again))

        await asyncio.gather(caller(first, 101), caller(adds(68), 102))
        await asyncio.gather(*arrivals)

    try:
        asyncio.run(scenario())
    finally:
        transactions.close()

    assert events[:2] == ["101 arrives", "100 runs"]
    assert known_cards(storage, range(1, 69)) == list(range(1, 69))
    assert known_cards(storage, range(100, 103)) == [100, 101, 102]


def test_an_answer_comes_only_once_the_change_is_committed(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    storage, path = sqlite_file
    outside = sqlite3.connect(path)

    async def write_then_look() -> list[bool]:
        seen = []
        for number in range(1, 6):
            await transactions.write(adds(number))
            # Another connection sees only committed rows.
            row = outside.execute(
                "SELECT 1 FROM cards WHERE card_number = ?", (card_number(number),)
            ).fetchone()
            seen.append(row is not None)
        return seen

    transactions = GroupCommitTransactions(storage)
    try:
        assert asyncio.run(write_then_look()) == [True] * 5
    finally:
        transactions.close()
        outside.close()


def test_a_write_that_finds_the_database_locked_waits_without_blocking_the_loop(
    sqlite_file: tuple[SqlStorage, Path],
) -> None:
    storage, path = sqlite_file
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    transactions = GroupCommitTransactions(storage)

    async def scenario() -> tuple[bool, str, str | None]:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        write: asyncio.Task[str] = asyncio.create_task(transactions.write(adds(1)))
        # Reads and the loop go on meanwhile; the write waits for the lock.
        read = await asyncio.wait_for(
            transactions.read(lambda uow: uow.cards.get(card_number(1))), timeout=10
        )
        await asyncio.sleep(0.2)
        waited = not write.done()
        other.execute("ROLLBACK")
        written = await asyncio.wait_for(write, timeout=30)
        return waited, written, None if read is None else read.card_number

    try:
        waited, written, read_before = asyncio.run(scenario())
    finally:
        transactions.close()
        other.close()

    assert waited and read_before is None
    assert written == card_number(1)


@pytest.mark.postgres
def test_units_of_work_go_on_after_postgresql_ended_the_executors_connections(
    postgres_url: str,
) -> None:
    """The executor's threads keep their connections between units of work; when the
    server ends them (a restart, a terminated backend), the next units connect again
    instead of failing."""
    name = f"sv-executor-{secrets.token_hex(4)}"  # this test's connections, and no others
    url = make_url(postgres_url)
    storage = SqlStorage.from_url(url.update_query_dict({"application_name": name}))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        upgrade_to_head(storage.engine)

        async def scenario(transactions: Transactions) -> list[str]:
            numbers = range(1, 9)
            await asyncio.gather(*(transactions.write(adds(n)) for n in numbers))
            with admin.connect() as connection:
                ended = connection.execute(text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :name"), {"name": name}).fetchall()
                assert ended
                deadline = time.monotonic() + 10
                while connection.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                    {"name": name}).scalar():
                    assert time.monotonic() < deadline, "the backends did not end"
                    await asyncio.sleep(0.05)
            more = range(9, 17)
            return await asyncio.gather(*(transactions.write(adds(n)) for n in more))

        assert run(storage, scenario) == [card_number(n) for n in range(9, 17)]
        assert known_cards(storage, range(1, 17)) == list(range(1, 17))
    finally:
        admin.dispose()
        storage.close()


@pytest.mark.postgres
def test_the_executors_keep_their_connections_past_1024_open_descriptors(
    postgres_url: str,
) -> None:
    """A replica serving thousands of tills holds thousands of sockets, so the executor's
    database connections get descriptors past 1,024: they are kept from one unit of work to
    the next there too (not dropped and connected again for every unit)."""
    name = f"sv-executor-{secrets.token_hex(4)}"  # this test's connections, and no others
    url = make_url(postgres_url)
    storage = SqlStorage.from_url(url.update_query_dict({"application_name": name}))
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1_100)]  # the fleet's sockets

    def backends() -> set[int]:
        with admin.connect() as connection:
            return {pid for (pid,) in connection.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": name})}

    try:
        upgrade_to_head(storage.engine)

        async def scenario(transactions: Transactions) -> set[int]:
            seen: set[int] = set()
            for number in range(1, 41):
                await transactions.write(adds(number))
                seen |= backends()
            return seen

        seen = run(storage, scenario)
        # At most one backend per executor thread (and the migration's, pooled) over 40
        # units; connecting again for every unit would show about one per unit.
        assert 1 <= len(seen) <= HQConfig().database_connections + 1 < 40
        assert known_cards(storage, range(1, 41)) == list(range(1, 41))
    finally:
        for descriptor in held:
            os.close(descriptor)
        admin.dispose()
        storage.close()


def _adds_card_and_request(number: int, request_id: str, runs: list[int]) -> Work[str]:
    """A unit of work that adds card `number` and a request's result under `request_id`
    (its runs noted in `runs`)."""
    def work(uow: Repositories) -> str:
        runs.append(number)
        uow.cards.add([make_card(card_number(number))])
        uow.requests.add(StoredResponse(
            caller="till-1", request_id=request_id, operation="Test",
            fingerprint=b"f", result_json="{}", created_at=NOW))
        return card_number(number)

    return work
