"""What only the SQL backends have: migrations that match tables.py, safe concurrent
upgrades, SQLite's configuration, and database races reported as ConcurrentUpdate."""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, Engine, inspect, text
from storage_samples import card_number, make_card, make_entry, make_lock, read, write

from storedvalue.hq.domain.journal import JournalEntry
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, UnitOfWork
from storedvalue.hq.storage import SqlStorage, open_engine, rows, upgrade_to_head
from storedvalue.hq.storage.schema import alembic_config, current_revision, head_revision
from storedvalue.hq.storage.tables import METADATA

ROOT = Path(__file__).resolve().parents[2]


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, METADATA))


def key_differences(engine: Engine) -> list[object]:
    """What Alembic's comparison leaves out: each table's primary key (its columns, in
    order) and, on SQLite, whether the table has a rowid."""
    found: list[object] = []
    with engine.connect() as connection:
        inspector = inspect(connection)
        for table in METADATA.sorted_tables:
            key = inspector.get_pk_constraint(table.name)["constrained_columns"]
            wanted = [column.name for column in table.primary_key.columns]
            if key != wanted:
                found.append((table.name, "primary key", key, wanted))
            if connection.dialect.name == "sqlite":
                sql = connection.execute(text(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
                    {"name": table.name}).scalar_one()
                with_rowid = "WITHOUT ROWID" not in sql.upper()
                if with_rowid != table.dialect_options["sqlite"]["with_rowid"]:
                    found.append((table.name, "with rowid", with_rowid))
    return found


def test_the_migrations_build_exactly_the_schema_tables_py_describes(
    sql_storage: SqlStorage,
) -> None:
    assert schema_differences(sql_storage.engine) == []
    assert key_differences(sql_storage.engine) == []
    with sql_storage.engine.connect() as connection:
        assert current_revision(connection) == head_revision()


def test_upgrading_a_database_already_at_head_changes_nothing(database_url: str) -> None:
    engine = open_engine(database_url)
    try:
        upgrade_to_head(engine)
        write(SqlStorage(engine), lambda uow: uow.cards.add([make_card(card_number(1))]))
        upgrade_to_head(engine)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM cards")).scalar_one() == 1
            assert current_revision(connection) == head_revision()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _migrated(engine: Engine, revision: str, *, down: bool = False) -> Iterator[Connection]:
    """A connection in a transaction (committed on leaving), the database upgraded (`down`:
    downgraded) to `revision` in it."""
    with engine.connect() as connection, connection.begin():
        config = alembic_config()
        config.attributes["connection"] = connection
        (alembic_command.downgrade if down else alembic_command.upgrade)(config, revision)
        yield connection


def test_upgrading_a_database_copies_the_locks_cards_hold_into_the_lock_history(
    database_url: str,
) -> None:
    engine = open_engine(database_url)
    try:
        with _migrated(engine, "0002") as connection:  # before the lock history
            connection.execute(text(
                "INSERT INTO cards VALUES ('7000000000000001', 'GIFT_CARD', 'ACTIVE', 'EUR', "
                "500, 0, 3, '', 'till-1', 'sale-1', 3, 999, 42), ('7000000000000002', "
                "'GIFT_CARD', 'ACTIVE', 'EUR', 500, 0, 1, '', NULL, NULL, NULL, NULL, NULL)"))
        upgrade_to_head(engine)
        grants = read(SqlStorage(engine), lambda uow: uow.lock_history.for_sales(
            "till-1", ["sale-1"]))
        assert [(g.card_number, g.fencing_token, g.released_by_holder_at) for g in grants] == [
            ("7000000000000001", 3, None)]
    finally:
        engine.dispose()


_LOCK_HISTORY_AT_0009 = [
    # card_number, fencing_token, terminal_id, transaction_id, acquired_at, released_at
    ("7000000000000001", 1, "till-1", "sale-1", 10, None),
    ("7000000000000001", 2, "till-1", "sale-1", 20, None),  # the sale's second lock
    ("7000000000000002", 1, "till-1", "sale-1", 30, 35),  # released by its holder
    ("7000000000000003", 4, "till-1", "sale-2", 40, None),
    ("7000000000000001", 3, "till-2", "sale-1", 50, None),  # another till's sale-1
]


def _lock_history_rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(text(
            "SELECT card_number, fencing_token, terminal_id, transaction_id, acquired_at, "
            "released_by_holder_at FROM lock_history")))


def test_upgrading_a_database_keys_its_lock_history_by_sale_and_keeps_every_lock(
    database_url: str,
) -> None:
    # At 0009 the lock history is keyed (card_number, fencing_token) with an index by sale;
    # 0010 keys it by sale (WITHOUT ROWID on SQLite). Every lock is still there, found by the
    # sync's look-ups and by a release naming its sale.
    engine = open_engine(database_url)
    try:
        with _migrated(engine, "0009_journal_chain_when") as connection:
            connection.execute(text(
                "INSERT INTO lock_history VALUES (:card, :token, :terminal, :sale, :at, "
                ":released)"), [
                    {"card": card, "token": token, "terminal": terminal, "sale": sale,
                     "at": acquired, "released": released}
                    for card, token, terminal, sale, acquired, released
                    in _LOCK_HISTORY_AT_0009])
        upgrade_to_head(engine)
        assert schema_differences(engine) == []
        assert key_differences(engine) == []
        assert _lock_history_rows(engine) == sorted(_LOCK_HISTORY_AT_0009)

        storage = SqlStorage(engine)
        grants = read(storage, lambda uow: uow.lock_history.for_sales(
            "till-1", ["sale-1", "sale-2", "sale-3"]))
        assert sorted((g.card_number, g.fencing_token, g.transaction_id,
                       rows.to_micros(g.acquired_at),
                       None if g.released_by_holder_at is None
                       else rows.to_micros(g.released_by_holder_at)) for g in grants) == [
            ("7000000000000001", 1, "sale-1", 10, None),
            ("7000000000000001", 2, "sale-1", 20, None),
            ("7000000000000002", 1, "sale-1", 30, 35),
            ("7000000000000003", 4, "sale-2", 40, None)]
        locks = read(storage, lambda uow: uow.lock_history.sale_locks("till-2", ["sale-1"]))
        assert [tuple(lock) for lock in locks] == [("sale-1", "7000000000000001", 3, False)]

        write(storage, lambda uow: uow.lock_history.mark_released_by_holder(
            [make_lock("7000000000000003", transaction_id="sale-2", token=4)],
            datetime.fromtimestamp(0, UTC) + timedelta(microseconds=45)))
        assert ("7000000000000003", 4, "till-1", "sale-2", 40, 45) in _lock_history_rows(engine)

        # Down again: keyed by card and token, indexed by sale, every lock kept.
        with _migrated(engine, "0009_journal_chain_when", down=True) as connection:
            key = inspect(connection).get_pk_constraint("lock_history")["constrained_columns"]
            indexes = {index["name"] for index in inspect(connection).get_indexes("lock_history")}
        assert key == ["card_number", "fencing_token"]
        assert "ix_lock_history_terminal_id_transaction_id" in indexes
        assert len(_lock_history_rows(engine)) == len(_LOCK_HISTORY_AT_0009)
        upgrade_to_head(engine)
        assert key_differences(engine) == []
    finally:
        engine.dispose()


def test_upgrading_a_database_keeps_its_cards_and_indexes_only_the_locked_ones(
    database_url: str,
) -> None:
    engine = open_engine(database_url)
    try:
        with _migrated(engine, "0004_issue11") as connection:  # every card in lock index
            connection.execute(text(
                "INSERT INTO cards VALUES "
                "('7000000000000001', 'GIFT_CARD', 'ACTIVE', 'EUR', 500, 0, 3, '', "
                "'till-1', 'sale-1', 3, 4102444800000000, 42), "
                "('7000000000000002', 'GIFT_CARD', 'ACTIVE', 'EUR', 700, 0, 1, '', "
                "NULL, NULL, NULL, NULL, NULL), "
                "('7000000000000003', 'GIFT_CARD', 'ACTIVE', 'EUR', 900, 0, 2, '', "
                "'till-2', 'sale-9', 2, 4102444800000000, 43)"))
        upgrade_to_head(engine)

        with engine.connect() as connection:
            balances = connection.execute(text(
                "SELECT card_number, balance_minor FROM cards ORDER BY card_number")).all()
            if connection.dialect.name == "sqlite":
                index = connection.execute(text(
                    "SELECT sql FROM sqlite_master WHERE name = :name"),
                    {"name": "ix_cards_lock_terminal_id_lock_acquired_at_card_number"}).scalar_one()
            else:
                index = connection.execute(text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = :name "
                    "AND schemaname = current_schema()"),
                    {"name": "ix_cards_lock_terminal_id_lock_acquired_at_card_number"}).scalar_one()
        assert [tuple(row) for row in balances] == [
            ("7000000000000001", 500), ("7000000000000002", 700), ("7000000000000003", 900)]
        assert "WHERE" in index.upper() and "IS NOT NULL" in index.upper(), index

        def locks(terminal_id: str | None) -> list[str]:
            found = read(SqlStorage(engine), lambda uow: uow.cards.list_locks(
                now=datetime.now(UTC), terminal_id=terminal_id, include_expired=False,
                after_card_number="", limit=10))
            return [lock.card_number for lock in found]

        assert locks(None) == ["7000000000000001", "7000000000000003"]
        assert locks("till-2") == ["7000000000000003"]
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


def _journal_at(connection: Connection, number: str) -> list[tuple[object, ...]]:
    return [tuple(row) for row in connection.execute(text(
        "SELECT entry_id, kind, amount_minor, balance_after_minor, line_id, note FROM journal "
        "WHERE card_number = :number ORDER BY entry_id"), {"number": number})]


def _page(storage: SqlStorage, number: str, after: int, limit: int) -> list[JournalEntry]:
    return read(storage, lambda uow: uow.journal.list_for_card(
        number, after_entry_id=after, limit=limit))


def _history(engine: Engine, number: str, *, limit: int) -> list[tuple[object, ...]]:
    """The card's history through the storage, page after page of `limit`."""
    history: list[tuple[object, ...]] = []
    after = 0
    while page := _page(SqlStorage(engine), number, after, limit):
        history += [(e.entry_id, e.kind.value, e.amount_minor, e.balance_after_minor,
                     e.line_id, e.note) for e in page]
        after = page[-1].entry_id
    return history


def test_upgrading_a_database_chains_the_journal_and_keeps_every_cards_history(
    database_url: str,
) -> None:
    # At 0007 the journal is indexed by (card_number, entry_id); 0008 chains each card's
    # entries from its row instead, backfilled: the same histories, and new entries go on
    # the same chains. A card without entries has no chain.
    engine = open_engine(database_url)
    numbers = [card_number(n) for n in range(1, 5)]
    try:
        with _migrated(engine, "0007_local_lock_index") as connection:
            for number in numbers:
                connection.execute(text(
                    "INSERT INTO cards VALUES (:number, 'GIFT_CARD', 'ACTIVE', 'EUR', 500, 0, "
                    "0, '', NULL, NULL, NULL, NULL, NULL)"), {"number": number})
            shuffled = random.Random(7)
            for n in range(40):
                connection.execute(text(
                    "INSERT INTO journal (card_number, kind, amount_minor, currency, "
                    "balance_after_minor, terminal_id, transaction_id, line_id, offline, "
                    "occurred_at, recorded_at, note) VALUES (:number, 'REDEEM', :amount, "
                    "'EUR', :n, 'till-1', :txn, '1', :offline, 0, 0, '')"),
                    {"number": numbers[shuffled.randrange(3)], "amount": -n, "n": n,
                     "txn": f"sale-{n}", "offline": n % 2 == 0})
            before = {number: _journal_at(connection, number) for number in numbers}
        assert before[numbers[3]] == []

        upgrade_to_head(engine)
        assert schema_differences(engine) == []
        for number in numbers:
            assert _history(engine, number, limit=3) == before[number]
        write(SqlStorage(engine), lambda uow: uow.journal.append(
            [make_entry(numbers[0], 7, line_id="after"), make_entry(numbers[3], 9)]))
        assert [entry[2] for entry in _history(engine, numbers[0], limit=5)] == [
            entry[2] for entry in before[numbers[0]]] + [7]
        assert [entry[2] for entry in _history(engine, numbers[3], limit=5)] == [9]

        # Down again: the index is back, the chain's columns are gone, the journal is whole.
        with _migrated(engine, "0007_local_lock_index", down=True) as connection:
            columns = {column["name"] for column in inspect(connection).get_columns("cards")}
            indexes = {index["name"] for index in inspect(connection).get_indexes("journal")}
            after_down = _journal_at(connection, numbers[0])
        assert "last_entry_id" not in columns
        assert "ix_journal_card_number_entry_id" in indexes
        assert [entry[2] for entry in after_down] == [entry[2] for entry in before[numbers[0]]
                                                      ] + [7]
        upgrade_to_head(engine)
        assert [entry[2] for entry in _history(engine, numbers[0], limit=2)] == [
            entry[2] for entry in after_down]
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite-file", pytest.param("postgresql",
                                                                marks=pytest.mark.postgres)])
def test_two_hq_processes_appending_to_one_card_keep_one_chain_of_every_entry(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Two storages on one database (as two HQ processes), each appending entries to the
    # same card from its own thread: half under the card's row lock (as every use case
    # appends), half without it (the chain's trigger locks the card itself). Every entry
    # is in the card's history once, in id order, whichever process wrote it.
    url = (f"sqlite:///{tmp_path / 'hq.sqlite3'}" if backend == "sqlite-file"
           else str(request.getfixturevalue("postgres_url")))
    upgrade_to_head(url)
    storages = [SqlStorage.from_url(url) for _ in range(2)]
    number = card_number(1)
    write(storages[0], lambda uow: uow.cards.add([make_card(number)]))
    per_thread = 25
    failures: list[BaseException] = []

    def append(storage: SqlStorage, name: str) -> None:
        try:
            for n in range(per_thread):
                def unit(uow: UnitOfWork, n: int = n) -> None:
                    if n % 2:
                        uow.cards.get_for_update(number)
                    uow.journal.append([make_entry(number, -1, line_id=f"{name}-{n}")])
                while True:
                    try:
                        write(storage, unit)
                        break
                    except ConcurrentUpdate:  # SQLite: the other's write lock, too long
                        continue
        except BaseException as error:
            failures.append(error)

    try:
        threads = [threading.Thread(target=append, args=(storage, f"hq-{i}"))
                   for i, storage in enumerate(storages)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []
        history = []
        after = 0
        while page := _page(storages[1], number, after, 7):
            history += page
            after = page[-1].entry_id
        ids = [entry.entry_id for entry in history]
        assert ids == sorted(set(ids))
        assert sorted(entry.line_id for entry in history) == sorted(
            f"hq-{i}-{n}" for i in range(2) for n in range(per_thread))
    finally:
        for storage in storages:
            storage.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                           marks=pytest.mark.postgres)])
def test_alembic_check_from_the_repository_root_finds_nothing_to_generate(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (f"sqlite:///{tmp_path / 'hq.sqlite3'}" if backend == "sqlite"
           else str(request.getfixturevalue("postgres_url")))
    env = {**os.environ, "STOREDVALUE_DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini")]

    for command in (["upgrade", "head"], ["check"]):
        done = subprocess.run([*alembic, *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    assert "No new upgrade operations detected" in done.stdout + done.stderr


# Each process imports first, then waits for a common start time, so the upgrades overlap.
_START_HQ = """
import sys, time
from storedvalue.hq.storage import upgrade_to_head
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
upgrade_to_head(url)
"""


@pytest.mark.postgres
def test_hq_processes_upgrading_postgresql_at_once_all_succeed(postgres_url: str) -> None:
    start = time.time() + 3
    processes = [
        subprocess.Popen([sys.executable, "-c", _START_HQ, postgres_url, str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        # communicate, not wait: a process blocked writing to a full pipe would never end.
        errors = [process.communicate(timeout=60)[1] for process in processes]
        outcomes = list(zip([process.returncode for process in processes], errors,
                            strict=True))
    finally:
        for process in processes:  # none left running, every pipe closed
            if process.poll() is None:
                process.kill()
            process.communicate()

    assert [code for code, _ in outcomes] == [0, 0, 0, 0], [err for _, err in outcomes]
    engine = open_engine(postgres_url, pool_size=1)
    try:
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


# -- SQLite ---------------------------------------------------------------------------------


def test_a_sqlite_file_runs_with_wal_full_sync_a_busy_timeout_foreign_keys_and_32_mib_cache(
    tmp_path: Path,
) -> None:
    engine = open_engine(f"sqlite:///{tmp_path / 'hq.sqlite3'}")
    try:
        with engine.connect() as connection:
            def pragma(name: str) -> object:
                return connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()

            assert pragma("journal_mode") == "wal"
            assert pragma("synchronous") == 2  # FULL
            assert pragma("busy_timeout") == 30_000
            assert pragma("foreign_keys") == 1
            assert pragma("cache_size") == -32 * 1024  # KiB: 32 MiB, not 2 MB
    finally:
        engine.dispose()


# Opens the database files in argv[3:] one after the other, each at its own moment (argv[1]
# plus argv[2] seconds per file before it), and prints each one's journal mode.
_OPEN_NEW_FILES = """
import sys, time
from storedvalue.hq.storage import open_engine
first, step, paths = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
for index, path in enumerate(paths):
    time.sleep(max(0.0, first + index * step - time.time()))
    engine = open_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            print(connection.exec_driver_sql("PRAGMA journal_mode").scalar_one(), flush=True)
    finally:
        engine.dispose()
"""


def test_hq_processes_opening_a_new_sqlite_file_at_once_all_get_it_in_wal(
    tmp_path: Path,
) -> None:
    """Switching a new file to WAL takes a lock SQLite does not wait for: of two HQ processes
    started on a new file at once, one failed at its first connection ("database is
    locked") about one time in three. Two processes open 20 new files, each at the same
    moment."""
    paths = [str(tmp_path / f"new-{index}.sqlite3") for index in range(20)]
    first = time.time() + 3.0  # once both have imported HQ's storage
    processes = [
        subprocess.Popen([sys.executable, "-c", _OPEN_NEW_FILES, str(first), "0.15", *paths],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    answers = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, answers, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert out.split() == ["wal"] * len(paths)


def test_a_new_sqlite_database_and_its_new_directory_are_private_to_the_user(
    tmp_path: Path,
) -> None:
    database = tmp_path / "new" / "hq" / "hq.sqlite3"
    storage = SqlStorage.from_url(f"sqlite:///{database}")
    try:
        upgrade_to_head(storage.engine)
        write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))
        files = [database, database.with_name("hq.sqlite3-wal"),
                 database.with_name("hq.sqlite3-shm")]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files}
        assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    finally:
        storage.close()


def test_a_sqlite_file_readable_by_others_is_made_private_when_opened(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    database = shared / "hq.sqlite3"
    sqlite3.connect(database).close()
    database.chmod(0o644)
    engine = open_engine(f"sqlite:///{database}")
    engine.dispose()
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # a directory it did not make: left be


def test_a_writing_unit_of_work_on_sqlite_takes_the_write_lock_at_once(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite3"
    storage = SqlStorage.from_url(f"sqlite:///{path}")
    upgrade_to_head(storage.engine)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with storage.unit_of_work(write=False):
            other.execute("BEGIN IMMEDIATE")  # a reader leaves the write lock free
            other.execute("ROLLBACK")
        with storage.unit_of_work(write=True), pytest.raises(
            sqlite3.OperationalError, match="locked"
        ):
            other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()
        storage.close()


def test_a_sqlite_writer_that_waits_too_long_gets_concurrent_update(tmp_path: Path) -> None:
    path = tmp_path / "hq.sqlite3"
    upgrade_to_head(f"sqlite:///{path}")
    storage = SqlStorage(open_engine(f"sqlite:///{path}", sqlite_busy_timeout_ms=50),
                         owns_engine=True)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(ConcurrentUpdate):
            write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))
        other.execute("ROLLBACK")
        write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))
    finally:
        other.close()
        storage.close()


def test_a_unit_of_work_opened_inside_another_on_sqlite_memory_fails_loudly() -> None:
    storage = SqlStorage.from_url("sqlite://")
    try:
        upgrade_to_head(storage.engine)
        with storage.unit_of_work(write=True), pytest.raises(RuntimeError, match="already"):
            storage.unit_of_work(write=False).__enter__()
        write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))
    finally:
        storage.close()


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_postgresql_deadlock_is_reported_as_concurrent_update(postgres_url: str) -> None:
    storage = SqlStorage.from_url(postgres_url)
    try:
        upgrade_to_head(storage.engine)
        write(storage, lambda uow: uow.cards.add([make_card(card_number(1)),
                                                  make_card(card_number(2))]))
        both_hold_one = threading.Barrier(2)
        outcomes: list[BaseException | None] = []

        def lock_in_order(first: str, second: str) -> None:
            try:
                with storage.unit_of_work(write=True) as uow:
                    uow.cards.get_for_update(first)
                    both_hold_one.wait(10)
                    uow.cards.get_for_update(second)  # one of the two is a deadlock victim
                    uow.commit()
            except BaseException as error:
                outcomes.append(error)
            else:
                outcomes.append(None)

        racers = [
            threading.Thread(target=lock_in_order, args=(card_number(1), card_number(2))),
            threading.Thread(target=lock_in_order, args=(card_number(2), card_number(1))),
        ]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)

        assert sorted(type(o).__name__ for o in outcomes) == ["ConcurrentUpdate", "NoneType"]
    finally:
        storage.close()


def test_sqlite_binds_none_bools_and_bytes_as_it_always_has() -> None:
    # The storage registers adapters for these (a faster path in the sqlite3 module): the
    # same NULL, integers and blob must reach the database.
    import storedvalue.hq.storage.transaction  # noqa: F401 - registers them

    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("CREATE TABLE t (a, b, c, d)")
        connection.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (None, True, False, b"\x00x"))
        row = connection.execute("SELECT a, b, c, d, typeof(a), typeof(b), typeof(d) FROM t"
                                 ).fetchone()
    finally:
        connection.close()
    assert row == (None, 1, 0, b"\x00x", "null", "integer", "blob")
