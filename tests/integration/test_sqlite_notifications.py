"""Notifications between HQ processes on one SQLite file: a change's transaction writes its
notification row (or none, if it rolls back), the table keeps only the newest rows, a
follower hands on what it reads, and a follower that finds rows pruned before it read them
says so (its HQ then refreshes everything) instead of skipping them silently. PostgreSQL
notifies with NOTIFY and writes no rows."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
from sqlalchemy import func, select
from storage_samples import make_parameters

from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.hq.storage import transaction as transaction_module
from storedvalue.hq.storage.configuration_repositories import TERMINALS_CHANNEL
from storedvalue.hq.storage.parameter_changes import NotificationTableFollower
from storedvalue.hq.storage.tables import notifications

DEADLINE = 10.0


def sqlite_file(tmp_path: Path) -> SqlStorage:
    storage = SqlStorage.from_url(f"sqlite:///{tmp_path / 'hq.sqlite3'}")
    upgrade_to_head(storage.engine)
    return storage


def announce(storage: SqlStorage, *terminal_ids: str, commit: bool = True) -> None:
    """What revoking (or moving) terminals tells the other processes, in one transaction."""
    with storage.unit_of_work(write=True) as uow:
        for terminal_id in terminal_ids:
            uow.terminals.announce(terminal_id)
        if commit:
            uow.commit()


def rows(storage: SqlStorage) -> list[tuple[int, str, str]]:
    with storage.engine.connect() as connection:
        found = connection.execute(select(
            notifications.c.id, notifications.c.channel, notifications.c.payload,
        ).order_by(notifications.c.id))
        return [(row.id, row.channel, row.payload) for row in found]


def test_a_notification_is_a_row_written_only_if_its_transaction_commits(
    tmp_path: Path,
) -> None:
    storage = sqlite_file(tmp_path)
    try:
        announce(storage, "till-1", commit=False)
        announce(storage, "till-2")
        assert rows(storage) == [(1, TERMINALS_CHANNEL, "till-2")]
    finally:
        storage.close()


def test_only_the_newest_notifications_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transaction_module, "NOTIFICATIONS_KEPT", 3)
    storage = sqlite_file(tmp_path)
    try:
        announce(storage, *(f"till-{n}" for n in range(1, 6)))
        announce(storage, "till-6")
        assert [row[2] for row in rows(storage)] == ["till-4", "till-5", "till-6"]
    finally:
        storage.close()


class Heard:
    """What a follower handed on, in order, for the test thread to wait on."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()

    def follower(self, storage: SqlStorage) -> NotificationTableFollower:
        return NotificationTableFollower(
            storage.engine,
            changed=lambda: self.events.put(("parameters", "")),
            terminal_changed=lambda terminal_id: self.events.put(("terminal", terminal_id)),
            missed=lambda: self.events.put(("missed", "")),
            poll_seconds=0.05,
        )

    def next(self) -> tuple[str, str]:
        return self.events.get(timeout=DEADLINE)


def test_a_follower_hands_on_what_is_written_after_it_started_and_nothing_before(
    tmp_path: Path,
) -> None:
    storage = sqlite_file(tmp_path)
    heard = Heard()
    follower = heard.follower(storage)
    try:
        announce(storage, "before-the-start")
        follower.start()
        assert heard.next() == ("parameters", "")  # the refresh every start makes
        announce(storage, "till-1", "till-2")
        with storage.unit_of_work(write=True) as uow:
            uow.terminals.announce("till-3")
            uow.parameters.add(make_parameters(uow.parameters.latest_version() + 1))
            uow.commit()
        got = [heard.next() for _ in range(4)]
    finally:
        follower.stop()
        storage.close()

    assert got == [("terminal", "till-1"), ("terminal", "till-2"), ("terminal", "till-3"),
                   ("parameters", "")]
    assert heard.events.empty()


def test_a_follower_that_finds_rows_pruned_before_it_read_them_says_it_missed_some(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transaction_module, "NOTIFICATIONS_KEPT", 2)
    storage = sqlite_file(tmp_path)
    heard = Heard()
    follower = heard.follower(storage)
    try:
        follower.start()
        assert heard.next() == ("parameters", "")
        # Five in one transaction: the first three are pruned before anyone can read them.
        announce(storage, *(f"till-{n}" for n in range(1, 6)))
        got = [heard.next() for _ in range(3)]
    finally:
        follower.stop()
        storage.close()

    assert got == [("missed", ""), ("terminal", "till-4"), ("terminal", "till-5")]


@pytest.mark.postgres
def test_postgresql_notifies_without_writing_rows(postgres_url: str) -> None:
    storage = SqlStorage.from_url(postgres_url)
    try:
        upgrade_to_head(storage.engine)
        announce(storage, "till-1")
        with storage.engine.connect() as connection:
            count = connection.execute(select(func.count()).select_from(notifications))
            assert count.scalar_one() == 0
    finally:
        storage.close()
