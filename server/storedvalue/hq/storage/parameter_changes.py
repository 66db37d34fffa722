"""Hearing about parameter versions other HQ replicas made, on PostgreSQL: a dedicated
connection LISTENs on the channel every new version is NOTIFYed on (in the transaction that
adds it, so a notification means a committed version). No polling: a change reaches this
process as soon as the other replica commits it. The same connection hears of terminals
revoked or moved to another store by other replicas (their own channel, the terminal id as
payload), so that their credential and their watch streams go here too."""

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
