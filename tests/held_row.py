"""Making requests that arrive together overlap on PostgreSQL, every time: a card's row
held locked by a connection of the test's own while the requests start, let go once the
given number of them wait for it. Each then took its first snapshot before any of them
committed, and all but the first to get the row lock wait for another's commit (what
READ COMMITTED's recheck of a locked row is about). Other backends: nothing (SQLite's group
commit and the fake run units one by one)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from storedvalue.hq.services.unit_of_work import Storage

DEADLINE_SECONDS = 30.0


class Held:
    """`await held.waiting(n)`: returns once `n` transactions wait for a lock (at once on
    other backends), so that requests can be made to queue for the row in a given order."""

    def __init__(self, count: Callable[[], int] | None = None) -> None:
        self._count = count

    async def waiting(self, n: int) -> None:
        count = self._count
        if count is None:
            return
        deadline = time.monotonic() + DEADLINE_SECONDS
        while await asyncio.to_thread(count) < n:
            assert time.monotonic() < deadline, f"{n} transactions never waited for a lock"
            await asyncio.sleep(0.005)


@contextmanager
def card_row_held(storage: Storage, card_number: str, *, until_waiting: int) -> Iterator[Held]:
    """Within: the card's row locked until `until_waiting` other transactions wait for a
    lock in this database (or the deadline passes: the test then fails on its own terms)."""
    with row_held(getattr(storage, "engine", None), card_number,
                  until_waiting=until_waiting) as held:
        yield held


@contextmanager
def row_held(engine: Engine | None, card_number: str, *, until_waiting: int
             ) -> Iterator[Held]:
    """`card_row_held` through an engine on the database (None: not PostgreSQL)."""
    if engine is None or engine.dialect.name != "postgresql":
        yield Held()
        return
    holder = engine.connect()
    holder.execute(text("SELECT 1 FROM cards WHERE card_number = :n FOR UPDATE"),
                   {"n": card_number})
    watcher, asker = engine.connect(), engine.connect()
    waiting_ones = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
    saw: list[int] = []

    def count() -> int:
        waiting = int(asker.execute(waiting_ones).scalar_one())
        asker.rollback()
        return waiting

    def release_when_waited_for() -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        try:
            while time.monotonic() < deadline:
                count = watcher.execute(waiting_ones).scalar_one()
                watcher.rollback()
                if count >= until_waiting:
                    saw.append(count)
                    break
                time.sleep(0.005)
        finally:
            holder.rollback()

    thread = threading.Thread(target=release_when_waited_for, daemon=True)
    thread.start()
    try:
        yield Held(count)
    finally:
        thread.join(DEADLINE_SECONDS)
        holder.close()
        watcher.close()
        asker.close()
    assert saw, f"{until_waiting} transactions never waited for card {card_number}'s row"
