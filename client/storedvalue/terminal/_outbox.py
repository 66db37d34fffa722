"""The outbox: offline transactions kept durably on the terminal until HQ acknowledged them.

An offline transaction is committed, with its sequence number, in the same SQLite transaction
that closes the sale; it leaves the outbox in the same transaction that records HQ's answer.
The outbox also knows what it holds unsynced of offline lines, per tender kind and currency
(the exposure the offline risk limits bound): kept in memory, changed with each commit.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from . import _convert
from ._database import Database
from ._errors import SaleAlreadyCompleted
from ._hq_records import OfflineSale, SyncItemResult, UsualResults
from ._model import CardKind, Money, OutboxEntry, SyncReport, UnsyncedAmount

ExposureKey = tuple[CardKind, str]
"""A tender kind and a currency."""
Exposure = dict[ExposureKey, tuple[int, int]]
"""Unsynced offline lines: (amount in minor units, line count) by kind and currency."""

_KINDS = {kind.value: kind for kind in CardKind}


class PendingItem(NamedTuple):
    """One outbox row (a tuple: a sync run reads hundreds per batch)."""

    sequence_number: int
    transaction_id: str
    payload: bytes
    """A serialized storedvalue.v1.OfflineTransaction, sequence number included."""
    answers_owed: int | None
    """The line and reversal results HQ owes for it; None when written by a version before
    they were counted."""


# A row as a PendingItem without a Python call per row (`PendingItem._make` is one).
_pending_item = functools.partial(tuple.__new__, PendingItem)


class Outbox:
    def __init__(self, database: Database) -> None:
        self._db = database
        with database.read() as conn:
            rows = conn.execute(
                "SELECT card_kind, currency_code, SUM(amount_minor), SUM(line_count) "
                "FROM outbox_exposure GROUP BY card_kind, currency_code"
            ).fetchall()
        self._exposure: Exposure = {
            (_KINDS[kind], currency): (int(amount), int(count))
            for kind, currency, amount, count in rows
        }

    def unsynced(self) -> tuple[UnsyncedAmount, ...]:
        """What the outbox holds of offline lines, per kind and currency."""
        with self._db.locked():
            return _amounts(self._exposure)

    def unsynced_minor(self) -> dict[ExposureKey, int]:
        """The same, in minor units by (kind, currency)."""
        exposure = self._exposure  # replaced whole on every change: a consistent snapshot
        return {key: amount for key, (amount, _) in exposure.items()}

    def append(
        self,
        sale: OfflineSale,
        *,
        admit: Callable[[Mapping[ExposureKey, int]], None] | None = None,
        also: Callable[[sqlite3.Connection, int], None] | None = None,
    ) -> int:
        """Assign the next sequence number and store the sale's offline transaction durably;
        ``also(conn, sequence_number)`` runs in the same database transaction (closing the
        sale). ``admit(unsynced)`` first sees what the outbox holds, in minor units by kind
        and currency, and may refuse the sale by raising: then nothing is written. The stored
        transaction carries what the outbox holds with it (``unsynced_amounts``). Returns the
        sequence number."""
        lines = _lines_of(sale)
        with self._db.locked():
            if admit is not None:
                admit(self.unsynced_minor())
            after = _merged(self._exposure, lines.items(), sign=1)
            if lines:
                sale = dataclasses.replace(sale, unsynced_amounts=_amounts(after))
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
                    "INSERT INTO outbox (sequence_number, transaction_id, payload, "
                    "answers_owed) VALUES (?, ?, ?, ?)",
                    (sequence, sale.transaction_id,
                     _convert.offline_sale_to_bytes(sale, sequence),
                     len(sale.redeem_lines) + len(sale.reversals)),
                )
                if lines:
                    conn.executemany(
                        "INSERT INTO outbox_exposure (sequence_number, card_kind, "
                        "currency_code, amount_minor, line_count) VALUES (?, ?, ?, ?, ?)",
                        [(sequence, kind.value, currency, amount, count)
                         for (kind, currency), (amount, count) in lines.items()],
                    )
                if also is not None:
                    also(conn, int(sequence))
            self._exposure = after
        return int(sequence)

    def holds(self, transaction_id: str) -> bool:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT 1 FROM outbox WHERE transaction_id = ?", (transaction_id,)
            ).fetchone()
        return row is not None

    def oldest(self, limit: int, *, after: int = 0) -> list[PendingItem]:
        """The oldest items, up to `limit`, whose sequence numbers are above `after` (the sync
        agent reads the next batch while the one before it is still unacknowledged)."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT sequence_number, transaction_id, payload, answers_owed FROM outbox "
                "WHERE sequence_number > ? ORDER BY sequence_number LIMIT ?",
                (after, limit),
            ).fetchall()
        return list(map(_pending_item, rows))

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

    def oldest_completed_at(self) -> datetime | None:
        """When the oldest transaction still in the outbox was completed."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT payload FROM outbox ORDER BY sequence_number LIMIT 1"
            ).fetchone()
        return None if row is None else _convert.outbox_entry_from_bytes(row[0]).completed_at

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
        reports = [] if isinstance(results, UsualResults) else [
            (item.sequence_number, item.transaction_id, result.stored, now)
            for item, result in zip(items, results, strict=True)
            if result.noteworthy
        ]
        with self._db.locked():
            synced: list[tuple[str, str, int, int]] = []
            with self._db.write() as conn:
                if items:
                    numbers = {item.sequence_number for item in items}
                    first, last = min(numbers), max(numbers)
                    if last - first + 1 == len(numbers):
                        # Distinct numbers filling first..last: the range is exactly these.
                        synced += _taken_out(conn, "range", (first, last))
                    else:
                        for number in numbers:
                            synced += _taken_out(conn, "one", (number,))
                if reports:
                    conn.executemany(
                        "INSERT OR REPLACE INTO sync_reports "
                        "(sequence_number, transaction_id, result, recorded_at) "
                        "VALUES (?, ?, ?, ?)",
                        reports,
                    )
                if also is not None:
                    also(conn)
            if synced:
                self._exposure = _merged(
                    self._exposure,
                    (((_KINDS[kind], currency), (amount, count))
                     for kind, currency, amount, count in synced),
                    sign=-1,
                )

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


_EXPOSURE_OF = {
    "range": "SELECT card_kind, currency_code, SUM(amount_minor), SUM(line_count) FROM "
             "outbox_exposure WHERE sequence_number BETWEEN ? AND ? "
             "GROUP BY card_kind, currency_code",
    "one": "SELECT card_kind, currency_code, SUM(amount_minor), SUM(line_count) FROM "
           "outbox_exposure WHERE sequence_number = ? GROUP BY card_kind, currency_code",
}
_DELETE = {
    ("outbox", "range"): "DELETE FROM outbox WHERE sequence_number BETWEEN ? AND ?",
    ("outbox", "one"): "DELETE FROM outbox WHERE sequence_number = ?",
    ("outbox_exposure", "range"):
        "DELETE FROM outbox_exposure WHERE sequence_number BETWEEN ? AND ?",
    ("outbox_exposure", "one"): "DELETE FROM outbox_exposure WHERE sequence_number = ?",
}


def _taken_out(conn: sqlite3.Connection, sequences: str, bounds: tuple[int, ...]
               ) -> list[tuple[str, str, int, int]]:
    """Delete the outbox rows of these sequence numbers (``sequences``: "range" for first and
    last, "one" for one number); return the offline lines they held (kind, currency, amount,
    count)."""
    conn.execute(_DELETE["outbox", sequences], bounds)
    taken: list[tuple[str, str, int, int]] = conn.execute(
        _EXPOSURE_OF[sequences], bounds
    ).fetchall()
    if taken:
        conn.execute(_DELETE["outbox_exposure", sequences], bounds)
    return taken


def _lines_of(sale: OfflineSale) -> Exposure:
    lines: Exposure = {}
    for line in sale.redeem_lines:
        key = (line.card_kind, line.amount.currency_code)
        amount, count = lines.get(key, (0, 0))
        lines[key] = (amount + line.amount.amount_minor, count + 1)
    return lines


def _merged(exposure: Exposure, change: Iterable[tuple[ExposureKey, tuple[int, int]]],
            *, sign: int) -> Exposure:
    merged = dict(exposure)
    for key, (amount, count) in change:
        held_amount, held_count = merged.get(key, (0, 0))
        new = (held_amount + sign * amount, held_count + sign * count)
        if new[1] > 0:
            merged[key] = new
        else:
            merged.pop(key, None)
    return merged


def _amounts(exposure: Exposure) -> tuple[UnsyncedAmount, ...]:
    return tuple(
        UnsyncedAmount(card_kind=kind, amount=Money(amount, currency), line_count=count)
        for (kind, currency), (amount, count) in sorted(
            exposure.items(), key=lambda item: (item[0][0].value, item[0][1])
        )
    )
