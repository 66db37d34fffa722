"""Hearing about parameter versions other HQ processes made, and terminals they revoked or
moved to another store (so that the terminal's credential and watch streams go here too).

PostgreSQL: a dedicated connection LISTENs on the channels every change is NOTIFYed on (in
the transaction that makes it, so a notification means a committed change). No polling: a
change reaches this process as soon as the other replica commits it.

SQLite file: the same notifications are rows of the notifications table, written in the
change's transaction; a thread reads the rows above the last id it saw every
`notifications_poll_seconds` (an indexed range read on its own connection, usually empty)
and hands them on exactly as the PostgreSQL listener does. Rows it missed (pruned before it
read them) are noticed by the gap in the ids, and answered with a full refresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from storedvalue.hq.storage.configuration_repositories import (
    PARAMETERS_CHANNEL,
    TERMINALS_CHANNEL,
)
from storedvalue.hq.storage.engines import is_sqlite_memory

log = logging.getLogger(__name__)

# How often the listening thread looks up from its wait, to notice it should stop.
_WAKE_SECONDS = 0.5
_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


class ParameterChangeListener:
    """Calls `changed()` (from its own thread) whenever another process commits a new
    parameters version, and once after each (re)connection, since changes made while it
    was disconnected were not heard; calls `terminal_changed(terminal_id)` when one revokes
    a terminal or moves it to another store (one missed while disconnected is not heard:
    the credential cache's lifetime bounds it)."""

    def __init__(self, engine: Engine, changed: Callable[[], None],
                 terminal_changed: Callable[[str], None] = lambda _terminal_id: None) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("LISTEN/NOTIFY is PostgreSQL's")
        self._engine = engine
        self._changed = changed
        self._terminal_changed = terminal_changed
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="hq-parameters-listener", daemon=True
        )
        self.listening = threading.Event()
        """Set while the LISTEN is in place (tests wait on it)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                connection = self._connect()
            except Exception:
                log.warning("cannot listen for parameter changes; retrying", exc_info=True)
                failures += 1
                self._stop.wait(_RETRY_SECONDS[min(failures, len(_RETRY_SECONDS)) - 1])
                continue
            try:
                failures = 0
                self._listen(connection)
            except Exception:
                log.warning("listening for parameter changes failed; reconnecting",
                            exc_info=True)
                self._stop.wait(_RETRY_SECONDS[0])
            finally:
                self.listening.clear()
                connection.close()

    def _connect(self) -> Any:
        # A connection of its own, outside the pool: it stays in LISTEN for the process's
        # life. The dialect turns the engine's URL into the driver's connect arguments.
        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        connection = self._engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
        connection.autocommit = True
        return connection

    def _listen(self, connection: Any) -> None:
        connection.execute(f"LISTEN {PARAMETERS_CHANNEL}")
        connection.execute(f"LISTEN {TERMINALS_CHANNEL}")
        self.listening.set()
        self._changed()  # whatever was committed before the LISTEN took effect
        while not self._stop.is_set():
            for notification in connection.notifies(timeout=_WAKE_SECONDS):
                if notification.channel == TERMINALS_CHANNEL:
                    self._terminal_changed(notification.payload)
                else:
                    self._changed()


# Rows read at most per query: a burst of changes is read in several, one after another.
_ROWS_PER_READ = 500
_HIGHEST_ID = "SELECT coalesce(max(id), 0) FROM notifications"
_ROWS_ABOVE = (
    "SELECT id, channel, payload FROM notifications WHERE id > ? ORDER BY id LIMIT ?"
)


class NotificationTableFollower:
    """SQLite file: reads the notifications other HQ processes on the file (and this one)
    wrote since `start()`, every `poll_seconds`, from its own thread and connection; calls
    `changed()` once for any number of new parameters versions, `terminal_changed(id)` for
    each terminal revoked or moved, and `missed()` when rows were pruned before it read them
    (whatever they said is unknown: the caller refreshes everything it caches)."""

    def __init__(self, engine: Engine, changed: Callable[[], None],
                 terminal_changed: Callable[[str], None], missed: Callable[[], None], *,
                 poll_seconds: float) -> None:
        if engine.dialect.name != "sqlite" or is_sqlite_memory(engine.url):
            raise ValueError("the notifications table is followed on a SQLite file")
        self._engine = engine
        self._changed = changed
        self._terminal_changed = terminal_changed
        self._missed = missed
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._connection: Any = None
        self._last_id = 0
        self._thread = threading.Thread(
            target=self._run, name="hq-notifications-follower", daemon=True
        )

    def start(self) -> None:
        """Follow from the newest row now: what is written from here on is heard (the
        highest id is read before this returns)."""
        self._connection = self._engine.raw_connection()
        try:
            cursor = self._connection.cursor()
            try:
                self._last_id = int(cursor.execute(_HIGHEST_ID).fetchone()[0])
            finally:
                cursor.close()
        except BaseException:
            self._connection.close()
            raise
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        connection = self._connection
        try:
            # Whatever was committed between the caller's first read and the start.
            self._changed()
            while not self._stop.wait(self._poll_seconds):
                try:
                    while self._read_once(connection) and not self._stop.is_set():
                        pass
                except Exception:  # a database hiccup must not stop the following
                    log.warning("reading the notifications failed; trying again",
                                exc_info=True)
        finally:
            connection.close()

    def _read_once(self, connection: Any) -> bool:
        """Hand on the rows above the last id seen; True when there may be more."""
        # Autocommit (see engines): the SELECT is a transaction of its own, and pins no
        # snapshot between reads.
        cursor = connection.cursor()
        try:
            found = cursor.execute(_ROWS_ABOVE, (self._last_id, _ROWS_PER_READ)).fetchall()
        finally:
            cursor.close()
        if not found:
            return False
        if found[0][0] != self._last_id + 1:
            # Ids are given one after another by one writer at a time and never reused, so
            # a gap is rows pruned before they were read.
            log.warning("notifications were pruned before this process read them; "
                        "refreshing everything", extra={"after_id": self._last_id,
                                                        "next_id": found[0][0]})
            self._missed()
        parameters_changed = False
        for _id, channel, payload in found:
            if channel == TERMINALS_CHANNEL:
                self._terminal_changed(payload)
            elif channel == PARAMETERS_CHANNEL:
                parameters_changed = True
        if parameters_changed:
            self._changed()
        self._last_id = int(found[-1][0])
        return len(found) == _ROWS_PER_READ
