"""The terminal's one SQLite file: sale state, cached parameters, the outbox.

WAL with ``synchronous=FULL``: a committed write survives power loss and SIGKILL. Writes run
in ``BEGIN IMMEDIATE`` transactions; one connection is shared by the terminal's threads under
a lock (each write is short, and SQLite serialises writers anyway). WAL checkpoints run on a
thread of their own (``_checkpoints``), never inside a sale's commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ._checkpoints import Checkpointer
from ._errors import TerminalError

DATABASE_FILE = "terminal.sqlite3"
_LOCK_FILE = "terminal.lock"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS terminal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    terminal_id TEXT NOT NULL,
    last_sequence_number INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS parameters (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    parameters BLOB NOT NULL,
    sync_limits BLOB
);
CREATE TABLE IF NOT EXISTS tenders (
    transaction_id TEXT NOT NULL,
    card_number TEXT NOT NULL,
    card_kind TEXT NOT NULL,
    balance_minor INTEGER NOT NULL,
    currency_code TEXT NOT NULL,
    fencing_token INTEGER NOT NULL,
    lease_expires_at TEXT,
    removed_offline INTEGER NOT NULL DEFAULT 0,
    unlock_request_id TEXT,
    PRIMARY KEY (transaction_id, card_number)
);
CREATE TABLE IF NOT EXISTS sale_lines (
    transaction_id TEXT NOT NULL,
    line_id TEXT NOT NULL,
    card_number TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    currency_code TEXT NOT NULL,
    request_id TEXT NOT NULL,
    attempted INTEGER NOT NULL DEFAULT 0,
    redeem_response BLOB,
    PRIMARY KEY (transaction_id, line_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    sequence_number INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_reports (
    sequence_number INTEGER PRIMARY KEY,
    transaction_id TEXT NOT NULL,
    result BLOB NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_exposure (
    sequence_number INTEGER NOT NULL,
    card_kind TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    PRIMARY KEY (sequence_number, card_kind, currency_code)
);
CREATE TABLE IF NOT EXISTS link_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    cause TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS link_contact (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_reached_hq_at TEXT NOT NULL
);
"""

# Schema changes after the first release, in order (SQL, or Python for what SQL cannot read
# from a payload); PRAGMA user_version counts those applied. New tables go in _SCHEMA.
_MIGRATIONS: tuple[str | Callable[[sqlite3.Connection], None], ...] = (
    # 1: sales keep their state after they finish (recovery, reversals, idempotent retries).
    """
    CREATE TABLE sales (
        transaction_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        sequence_number INTEGER,
        synced INTEGER NOT NULL DEFAULT 0,
        opened_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX sales_by_status ON sales (status, finished_at);
    ALTER TABLE sale_lines ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
    ALTER TABLE sale_lines ADD COLUMN position INTEGER;
    ALTER TABLE sale_lines ADD COLUMN hq_reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE sale_lines ADD COLUMN balance_after_minor INTEGER;
    ALTER TABLE sale_lines ADD COLUMN remainder_memo TEXT NOT NULL DEFAULT '';
    ALTER TABLE sale_lines ADD COLUMN voided_memo TEXT NOT NULL DEFAULT '';
    INSERT OR IGNORE INTO sales (transaction_id, status, opened_at)
        SELECT transaction_id, 'OPEN', strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')
        FROM (SELECT transaction_id FROM tenders UNION SELECT transaction_id FROM sale_lines);
    """,
    # 2: the outbox's offline lines by kind and currency (the exposure the offline risk
    # limits bound), for what an outbox written before held.
    lambda conn: _backfill_outbox_exposure(conn),
    # 3: the answers HQ owes for each queued transaction (its redeem lines and reversals), so
    # that recording a batch's answers need not look for lines left unanswered when HQ
    # answered them all. NULL for what an outbox written before holds: looked for.
    lambda conn: _add_column(conn, "outbox", "answers_owed INTEGER"),
)


class DataDirectoryInUse(TerminalError, local=True):
    """Another live process has this terminal's data directory open."""

    reasons = ("DATA_DIRECTORY_IN_USE",)


class Database:
    """The SQLite connection of one terminal, owned by one process at a time."""

    def __init__(self, data_dir: Path, terminal_id: str) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # The kernel drops this lock when the process dies, SIGKILL included.
        self._lock_fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise DataDirectoryInUse(f"{data_dir} is used by another terminal process") from None
        self._mutex = threading.RLock()
        self._checkpoints: Checkpointer | None = None
        try:
            self._conn = sqlite3.connect(
                data_dir / DATABASE_FILE, isolation_level=None, check_same_thread=False, timeout=30
            )
        except BaseException:
            os.close(self._lock_fd)
            raise
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            # Checkpoints on their own thread (below), not in the commit that fills the WAL.
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            with self.write() as conn:
                _run(conn, _SCHEMA)
                (applied,) = conn.execute("PRAGMA user_version").fetchone()
                for number, migration in enumerate(_MIGRATIONS[applied:], start=applied + 1):
                    if isinstance(migration, str):
                        _run(conn, migration)
                    else:
                        migration(conn)
                    conn.execute(f"PRAGMA user_version = {number}")
            self._claim(terminal_id)
            self._checkpoints = Checkpointer(data_dir / DATABASE_FILE, self._mutex)
        except BaseException:
            # Nobody gets this object to close: release the file and the directory lock now.
            self.close()
            raise

    def _claim(self, terminal_id: str) -> None:
        with self.write() as conn:
            row = conn.execute("SELECT terminal_id FROM terminal WHERE id = 1").fetchone()
            if row is None:
                conn.execute("INSERT INTO terminal (id, terminal_id) VALUES (1, ?)", (terminal_id,))
            elif row[0] != terminal_id:
                raise TerminalError(
                    f"data directory belongs to terminal {row[0]!r}, not {terminal_id!r}",
                    reason="DATA_DIRECTORY_MISMATCH",
                )

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One durable write transaction: committed on normal exit, rolled back otherwise."""
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            if self._checkpoints is not None:
                self._checkpoints.committed()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the connection across a write and what must follow its commit: in-memory
        state that changes with the commit, and only if it commits."""
        with self._mutex:
            yield

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            yield self._conn

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()
        with self._mutex:
            self._conn.close()  # the last connection: checkpoints what the WAL still holds
        os.close(self._lock_fd)


def _backfill_outbox_exposure(conn: sqlite3.Connection) -> None:
    from ._convert import unsynced_lines_from_bytes  # protobuf only when there is a payload

    rows = conn.execute("SELECT sequence_number, payload FROM outbox").fetchall()
    for sequence, payload in rows:
        conn.executemany(
            "INSERT OR IGNORE INTO outbox_exposure (sequence_number, card_kind, "
            "currency_code, amount_minor, line_count) VALUES (?, ?, ?, ?, ?)",
            [(sequence, held.card_kind.value, held.amount.currency_code,
              held.amount.amount_minor, held.line_count)
             for held in unsynced_lines_from_bytes(payload)],
        )


def _add_column(conn: sqlite3.Connection, table: str, column: str) -> None:
    """ALTER TABLE ADD COLUMN, unless the table has it (a file rewound to an earlier
    user_version by hand)."""
    name = column.split()[0]
    if all(row[1] != name for row in conn.execute(f"PRAGMA table_info({table})")):
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Statements separated by ";" (none contains one), inside the caller's transaction."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)
