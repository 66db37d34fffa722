"""The terminal's record of its link to HQ: its latest ONLINE/OFFLINE switches and when HQ
last answered it. Both are durable, because the terminal needs them exactly after a restart
while HQ is out of reach: the offline duration limit counts from the last answer, and HQ is
told the history when the link returns.

The last answer is noted in memory after every answer (a float store, nothing more) and
written to disk at each switch, each status report and on close; a terminal killed while
online so loses at most one report interval, which only makes its offline time look longer.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import deque
from datetime import UTC, datetime

from ._database import Database
from ._model import ConnectivityChange, ConnectivityState

KEPT_CHANGES = 100
"""How many switches the terminal keeps (and reports)."""
_CAUSE_LENGTH = 200
_OTHER = {
    ConnectivityState.ONLINE: ConnectivityState.OFFLINE,
    ConnectivityState.OFFLINE: ConnectivityState.ONLINE,
}


class LinkHistory:
    def __init__(self, database: Database) -> None:
        self._db = database
        with database.read() as conn:
            row = conn.execute(
                "SELECT last_reached_hq_at FROM link_contact WHERE id = 1"
            ).fetchone()
            rows = conn.execute(
                "SELECT state, changed_at, cause FROM link_history ORDER BY id"
            ).fetchall()
        stored = datetime.fromisoformat(row[0]).timestamp() if row is not None else None
        self._last_answer = stored
        self._persisted = stored
        self._mutex = threading.Lock()
        self._changes: deque[ConnectivityChange] = deque(maxlen=KEPT_CHANGES)
        for state_text, changed_at, cause in rows:
            state = ConnectivityState(state_text)
            self._changes.append(ConnectivityChange(
                state=state, previous=_OTHER[state], cause=cause,
                at=datetime.fromisoformat(changed_at),
            ))

    def note_answer(self) -> None:
        """HQ answered just now."""
        self._last_answer = time.time()

    @property
    def last_reached_hq_at(self) -> datetime | None:
        """When HQ last answered this terminal (None if it never did, as far as it knows)."""
        last = self._last_answer
        return None if last is None else datetime.fromtimestamp(last, UTC)

    def remember(self, change: ConnectivityChange) -> None:
        """Note a switch in memory (at once, before anyone is told of it)."""
        with self._mutex:
            self._changes.append(change)

    def store(self, change: ConnectivityChange) -> None:
        """Write a remembered switch (and the last answer with it) to disk, dropping the
        oldest beyond the last KEPT_CHANGES."""
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO link_history (state, changed_at, cause) VALUES (?, ?, ?)",
                (change.state.value, change.at.isoformat(), change.cause[:_CAUSE_LENGTH]),
            )
            conn.execute(
                "DELETE FROM link_history WHERE id <= "
                "(SELECT MAX(id) FROM link_history) - ?",
                (KEPT_CHANGES,),
            )
            self._write_last_answer(conn)

    def persist(self) -> None:
        """Write the last answer to disk if it moved since it was last written."""
        if self._last_answer != self._persisted:
            with self._db.write() as conn:
                self._write_last_answer(conn)

    def changes(self) -> tuple[ConnectivityChange, ...]:
        """The kept switches, oldest first."""
        with self._mutex:
            return tuple(self._changes)

    def _write_last_answer(self, conn: sqlite3.Connection) -> None:
        last = self._last_answer
        if last is None:
            return
        conn.execute(
            "INSERT INTO link_contact (id, last_reached_hq_at) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET last_reached_hq_at = excluded.last_reached_hq_at",
            (datetime.fromtimestamp(last, UTC).isoformat(),),
        )
        self._persisted = last
