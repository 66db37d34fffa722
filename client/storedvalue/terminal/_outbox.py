"""The outbox: offline transactions kept durably on the terminal until HQ acknowledged them.

An offline transaction is committed, with its sequence number, in the same SQLite transaction
that closes the sale; it leaves the outbox in the same transaction that records HQ's answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from . import _convert
from ._database import Database
from ._errors import SaleAlreadyCompleted
from ._hq_records import OfflineSale, SyncItemResult
from ._model import OutboxEntry, SyncReport


class PendingItem(NamedTuple):
    """One outbox row (a tuple: a sync run reads hundreds per batch)."""

    sequence_number: int
    transaction_id: str
    payload: bytes
    """A serialized storedvalue.v1.OfflineTransaction, sequence number included."""


class Outbox:
    def __init__(self, database: Database) -> None:
        self._db = database

    def append(
        self,
        sale: OfflineSale,
        *,
        also: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> int:
        """Assign the next sequence number and store the sale's offline transaction durably;
        ``also(conn, sequence_number)`` runs in the same database transaction (closing the
        sale). Returns the sequence number."""
        with self._db.write() as conn:
            if conn.execute(
                "SELECT 1 FROM outbox WHERE transaction_id = ?", (sale.transaction_id,)
            ).fetchone():
                raise SaleAlreadyCompleted(
                    f"transaction {sale.transaction_id} is already in the outbox"
                )
            (sequence,) = conn.execute(
                "UPDATE terminal SET last_sequence_number = last_sequence_number + 1 "
                "WHERE id = 1 RETURNING last_sequence_number"
            ).fetchone()
            conn.execute(
                "INSERT INTO outbox (sequence_number, transaction_id, payload) VALUES (?, ?, ?)",
                (sequence, sale.transaction_id, _convert.offline_sale_to_bytes(sale, sequence)),
            )
            if also is not None:
                also(conn, int(sequence))
        return int(sequence)

    def holds(self, transaction_id: str) -> bool:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM outbox WHERE transaction_id = ?", (transaction_id,)
            ).fetchone()
        return row is not None

    def oldest(self, limit: int) -> list[PendingItem]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT sequence_number, transaction_id, payload FROM outbox "
                "ORDER BY sequence_number LIMIT ?",
                (limit,),
            ).fetchall()
        return list(map(PendingItem._make, rows))

    def __len__(self) -> int:
        with self._db.read() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def last_sequence_number(self) -> int:
        with self._db.read() as conn:
            (last,) = conn.execute(
                "SELECT last_sequence_number FROM terminal WHERE id = 1"
            ).fetchone()
        return int(last)

    def entries(self) -> list[OutboxEntry]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT payload FROM outbox ORDER BY sequence_number").fetchall()
        return [_convert.outbox_entry_from_bytes(payload) for (payload,) in rows]

    def acknowledge(
        self,
        items: Sequence[PendingItem],
        results: Sequence[SyncItemResult],
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """HQ durably took these items: drop them and keep the results worth a human's eye;
        ``also`` runs in the same commit (recording the results on the sales)."""
        now = datetime.now(UTC).isoformat()
        reports = [
            (item.sequence_number, item.transaction_id, result.stored, now)
            for item, result in zip(items, results, strict=True)
            if result.noteworthy
        ]
        with self._db.write() as conn:
            if items:
                numbers = {item.sequence_number for item in items}
                first, last = min(numbers), max(numbers)
                if last - first + 1 == len(numbers):
                    # Distinct numbers filling first..last: the range is exactly these items.
                    conn.execute(
                        "DELETE FROM outbox WHERE sequence_number BETWEEN ? AND ?", (first, last)
                    )
                else:
                    conn.executemany(
                        "DELETE FROM outbox WHERE sequence_number = ?",
                        [(item.sequence_number,) for item in items],
                    )
            if reports:
                conn.executemany(
                    "INSERT OR REPLACE INTO sync_reports "
                    "(sequence_number, transaction_id, result, recorded_at) VALUES (?, ?, ?, ?)",
                    reports,
                )
            if also is not None:
                also(conn)

    def reports(self) -> list[SyncReport]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT sequence_number, transaction_id, result, recorded_at FROM sync_reports "
                "ORDER BY sequence_number"
            ).fetchall()
        return [
            _convert.report_from_bytes(row[0], row[1], row[2], datetime.fromisoformat(row[3]))
            for row in rows
        ]

    def dismiss_report(self, sequence_number: int) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM sync_reports WHERE sequence_number = ?", (sequence_number,))
