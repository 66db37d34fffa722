"""The outbox: offline transactions kept durably on the terminal until HQ acknowledged them.

An offline transaction is committed, with its sequence number, in the same SQLite transaction
that closes the sale; it leaves the outbox in the same transaction that records HQ's answer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from storedvalue.v1 import offline_pb2

from ._convert import outcome_from_pb, timestamp_from_pb
from ._database import Database
from ._errors import SaleAlreadyCompleted
from ._model import OutboxEntry, SyncOutcome, SyncReport


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
        transaction: offline_pb2.OfflineTransaction,
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> int:
        """Assign the next sequence number and store the transaction durably; ``also`` runs
        in the same database transaction (closing the sale). Returns the sequence number."""
        with self._db.write() as conn:
            if conn.execute(
                "SELECT 1 FROM outbox WHERE transaction_id = ?", (transaction.transaction_id,)
            ).fetchone():
                raise SaleAlreadyCompleted(
                    f"transaction {transaction.transaction_id} is already in the outbox"
                )
            (sequence,) = conn.execute(
                "UPDATE terminal SET last_sequence_number = last_sequence_number + 1 "
                "WHERE id = 1 RETURNING last_sequence_number"
            ).fetchone()
            item = offline_pb2.OfflineTransaction()
            item.CopyFrom(transaction)
            item.sequence_number = sequence
            conn.execute(
                "INSERT INTO outbox (sequence_number, transaction_id, payload) VALUES (?, ?, ?)",
                (sequence, item.transaction_id, item.SerializeToString()),
            )
            if also is not None:
                also(conn)
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
        entries = []
        for (payload,) in rows:
            item = offline_pb2.OfflineTransaction.FromString(payload)
            entries.append(
                OutboxEntry(
                    sequence_number=item.sequence_number,
                    transaction_id=item.transaction_id,
                    completed_at=timestamp_from_pb(item.completed_at),
                    redeem_line_count=len(item.redeem_lines),
                    unlock_count=len(item.unlocks),
                )
            )
        return entries

    def acknowledge(
        self, items: Sequence[PendingItem], results: Sequence[offline_pb2.OfflineTransactionResult]
    ) -> None:
        """HQ durably took these items: drop them and keep the results worth a human's eye,
        all in one commit."""
        now = datetime.now(UTC).isoformat()
        reports = [
            (item.sequence_number, item.transaction_id, result.SerializeToString(), now)
            for item, result in zip(items, results, strict=True)
            if is_noteworthy(result)
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

    def reports(self) -> list[SyncReport]:
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT sequence_number, transaction_id, result, recorded_at FROM sync_reports "
                "ORDER BY sequence_number"
            ).fetchall()
        return [_report(row[0], row[1], row[2], row[3]) for row in rows]

    def dismiss_report(self, sequence_number: int) -> None:
        with self._db.write() as conn:
            conn.execute("DELETE FROM sync_reports WHERE sequence_number = ?", (sequence_number,))


def is_noteworthy(result: offline_pb2.OfflineTransactionResult) -> bool:
    """Anything but a clean application is kept for support staff: exceptions, rejections,
    and remainder credit memos HQ issued for lines completed offline."""
    first = (
        result.original_outcome
        if result.outcome == offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED
        else result.outcome
    )
    if first != offline_pb2.OFFLINE_OUTCOME_APPLIED:
        return True
    return any(line.remainder_credit_memo_number for line in result.line_results)


def _report(sequence: int, transaction_id: str, blob: bytes, recorded_at: str) -> SyncReport:
    result = offline_pb2.OfflineTransactionResult.FromString(blob)
    outcome = outcome_from_pb(result.outcome) or SyncOutcome.REJECTED
    original = outcome_from_pb(result.original_outcome) or outcome
    return SyncReport(
        sequence_number=sequence,
        transaction_id=transaction_id,
        outcome=outcome,
        original_outcome=original,
        reason=result.reason,
        message=result.message,
        exception_ids=tuple(result.exception_ids),
        remainder_credit_memo_numbers=tuple(
            line.remainder_credit_memo_number
            for line in result.line_results
            if line.remainder_credit_memo_number
        ),
        recorded_at=datetime.fromisoformat(recorded_at),
    )
