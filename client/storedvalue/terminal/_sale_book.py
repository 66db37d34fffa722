"""The terminal's book of sales: where each sale stands (open, completed online or offline,
abandoned), how each of its lines ended, and what HQ made of them at sync. A POS restarted
after a crash reads it to finish or abandon its open sales; a completed sale's result is
rebuilt from it, so a retried ``complete_sale`` returns the same result.

A finished sale is kept until HQ acknowledged its offline transaction (if it has one) and
then for ``TerminalConfig.finished_sale_retention_s``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from . import _convert
from ._database import Database
from ._hq_records import SyncItemResult, UsualResults
from ._model import (
    LineResult,
    LineState,
    LineStatus,
    Money,
    Sale,
    SaleLine,
    SaleResult,
    SaleStatus,
    SaleTender,
)
from ._sale_state import LineRecord, select_lines, select_tenders

_log = logging.getLogger(__name__)

_SALES_PER_STATEMENT = 500
"""Sales named in one statement (SQLite before 3.32 takes at most 999 parameters)."""
_NO_RESULT = "NO_RESULT_FROM_HQ"
"""Reason recorded for a line HQ acknowledged the transaction of without a result for it (an
HQ that predates reversals): never left looking queued, never silently dropped."""


class SaleBook:
    def __init__(self, database: Database, *, retention: timedelta) -> None:
        self._db = database
        self._retention = retention
        self._listeners: list[Callable[[Sale], None]] = []
        self._mutex = threading.Lock()

    # -- finishing a sale ---------------------------------------------------------------

    @staticmethod
    def finish(
        conn: sqlite3.Connection,
        transaction_id: str,
        status: SaleStatus,
        *,
        sequence_number: int | None,
        paid: Sequence[SaleLine],
        offline: Iterable[str] = (),
        reversed_ids: Iterable[str] = (),
        read_result: bool = True,
    ) -> SaleResult | None:
        """Close the sale inside the caller's write transaction (the one that queues its
        offline transaction, if any): ``paid`` are the result's lines in order, ``offline``
        the ids of those completed offline, ``reversed_ids`` the lines given up after their
        Redeem was sent. Every other line is dropped (never sent), and so are the tenders
        (released, or their release queued). Returns the completed sale's result, read back
        as ``result`` reads it, unless ``read_result`` is False (the caller has it: None)."""
        now = datetime.now(UTC).isoformat()
        conn.execute(
            "INSERT INTO sales (transaction_id, status, sequence_number, synced, opened_at, "
            "finished_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (transaction_id) DO UPDATE SET "
            "status = excluded.status, sequence_number = excluded.sequence_number, "
            "synced = excluded.synced, finished_at = excluded.finished_at",
            (transaction_id, status.value, sequence_number, int(sequence_number is None),
             now, now),
        )
        offline_ids = set(offline)
        # A paid line not stored yet (never sent) is stored with its place, with a request id
        # of its own; a stored one keeps its request id and flags and takes its place.
        conn.executemany(
            "INSERT INTO sale_lines (transaction_id, line_id, card_number, amount_minor, "
            "currency_code, request_id, position, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (transaction_id, line_id) DO UPDATE SET "
            "position = excluded.position, outcome = excluded.outcome",
            [
                (transaction_id, line.line_id, line.card_number, line.amount.amount_minor,
                 line.amount.currency_code, str(uuid.uuid4()), index,
                 LineState.QUEUED_OFFLINE.value if line.line_id in offline_ids else "")
                for index, line in enumerate(paid)
            ],
        )
        reversed_ids = list(reversed_ids)
        if reversed_ids:
            conn.executemany(
                "UPDATE sale_lines SET position = NULL, outcome = ? "
                "WHERE transaction_id = ? AND line_id = ?",
                [(LineState.REVERSAL_QUEUED.value, transaction_id, line_id)
                 for line_id in reversed_ids],
            )
        conn.execute(
            "DELETE FROM sale_lines WHERE transaction_id = ? AND position IS NULL "
            "AND outcome = ''",
            (transaction_id,),
        )
        conn.execute("DELETE FROM tenders WHERE transaction_id = ?", (transaction_id,))
        if not read_result or status not in (SaleStatus.COMPLETED_ONLINE,
                                             SaleStatus.COMPLETED_OFFLINE):
            return None
        return _result(transaction_id, status, sequence_number, select_lines(conn, transaction_id))

    def finish_now(self, transaction_id: str, status: SaleStatus, *, paid: Sequence[SaleLine]
                   ) -> SaleResult | None:
        """Close a sale that leaves nothing in the outbox."""
        with self._db.write() as conn:
            return self.finish(conn, transaction_id, status, sequence_number=None, paid=paid)

    # -- reading ------------------------------------------------------------------------

    def status(self, transaction_id: str) -> SaleStatus | None:
        """None for a sale this terminal never saw."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT status FROM sales WHERE transaction_id = ?", (transaction_id,)
            ).fetchone()
        return SaleStatus(row[0]) if row else None

    def result(self, transaction_id: str) -> SaleResult | None:
        """What ``complete_sale`` returned for a completed sale; None otherwise."""
        sale = self.sale(transaction_id)
        return sale.result if sale is not None else None

    def sale(self, transaction_id: str) -> Sale | None:
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT status, sequence_number, synced FROM sales WHERE transaction_id = ?",
                (transaction_id,),
            ).fetchone()
            if row is None:
                return None
            return _sale(conn, transaction_id, SaleStatus(row[0]), row[1], bool(row[2]))

    def open_sales(self) -> tuple[Sale, ...]:
        """Unfinished sales, oldest first."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT transaction_id FROM sales WHERE status = 'OPEN' "
                "ORDER BY opened_at, rowid"
            ).fetchall()
            return tuple(
                _sale(conn, transaction_id, SaleStatus.OPEN, None, True)
                for (transaction_id,) in rows
            )

    # -- sync ---------------------------------------------------------------------------

    def add_listener(self, listener: Callable[[Sale], None]) -> None:
        with self._mutex:
            self._listeners.append(listener)

    @staticmethod
    def record_sync(conn: sqlite3.Connection, results: Sequence[SyncItemResult],
                    answers_owed: int | None = None) -> None:
        """What HQ made of these offline transactions, inside the commit that takes them out
        of the outbox (a statement per answered line, and one per few hundred sales for the
        rest: the sync acknowledges thousands of transactions a second). ``answers_owed``:
        the line and reversal results these transactions were queued with, when known; once
        that many queued lines took their answer, none is left unanswered to look for."""
        queued, reversal_queued = LineState.QUEUED_OFFLINE.value, LineState.REVERSAL_QUEUED.value
        took_answer = _record_usual(conn, results)
        if took_answer is None:
            answered: list[tuple[object, ...]] = []
            for result in results:
                transaction_id = result.transaction_id
                for line_id, state, reason, balance, memo, voided in result.lines:
                    answered.append((state.value, reason, balance, memo, voided,
                                     transaction_id, line_id, queued))
                for line_id, state, reason, balance, memo, voided in result.reversals:
                    answered.append((state.value, reason, balance, memo, voided,
                                     transaction_id, line_id, reversal_queued))
            took_answer = conn.executemany(
                "UPDATE sale_lines SET outcome = ?, hq_reason = ?, balance_after_minor = ?, "
                "remainder_memo = ?, voided_memo = ? "
                "WHERE transaction_id = ? AND line_id = ? AND outcome = ?",
                answered,
            ).rowcount if answered else 0
        # Each answer moves at most one line (its own) out of the queued states.
        look_for_unanswered = answers_owed is None or took_answer != answers_owed
        sales = (results.transaction_ids if isinstance(results, UsualResults)
                 else [result.transaction_id for result in results])
        unanswered = 0
        for start in range(0, len(sales), _SALES_PER_STATEMENT):
            chunk = sales[start:start + _SALES_PER_STATEMENT]
            marks = ", ".join("?" * len(chunk))
            if look_for_unanswered:
                unanswered += conn.execute(
                    "UPDATE sale_lines SET outcome = ?, hq_reason = ? "  # noqa: S608
                    f"WHERE transaction_id IN ({marks}) AND outcome IN (?, ?)",
                    (LineState.REJECTED_AT_SYNC.value, _NO_RESULT, *chunk, queued,
                     reversal_queued),
                ).rowcount
            conn.execute(
                f"UPDATE sales SET synced = 1 WHERE transaction_id IN ({marks})",  # noqa: S608
                chunk,
            )
        if unanswered > 0:
            _log.warning("HQ acknowledged offline transactions without a result for %d of "
                         "their lines", unanswered)

    def announce(self, transaction_ids: Iterable[str]) -> None:
        """Tell listeners how these sales stand now (after their sync)."""
        with self._mutex:
            listeners = list(self._listeners)
        if not listeners:
            return
        for transaction_id in transaction_ids:
            sale = self.sale(transaction_id)
            if sale is None:
                continue  # completed by an earlier version of the library, or pruned
            for listener in listeners:
                try:
                    listener(sale)
                except Exception:
                    _log.exception("sale listener failed")

    def prune(self) -> int:
        """Forget finished, synced sales older than the retention; returns how many."""
        cutoff = (datetime.now(UTC) - self._retention).isoformat()
        with self._db.write() as conn:
            conn.execute(f"DELETE FROM sale_lines WHERE transaction_id IN "  # noqa: S608
                         f"(SELECT transaction_id FROM sales WHERE {_PRUNABLE})", (cutoff,))
            return conn.execute(f"DELETE FROM sales WHERE {_PRUNABLE}",  # noqa: S608
                                (cutoff,)).rowcount


# Finished sales, synced, finished before the bound: the statuses named (not `!= 'OPEN'`) so
# that sales_by_status (status, finished_at) finds them, each status a range of the index,
# instead of a scan of every sale the book keeps (twice a sync run; the statuses are the
# enum's own constants, not input).
_PRUNABLE = (
    "status IN (" + ", ".join(f"'{status.value}'" for status in SaleStatus
                              if status is not SaleStatus.OPEN)
    + ") AND finished_at < ? AND synced = 1"
)


_APPLIED_AT_SYNC = LineState.APPLIED_AT_SYNC
_RECORD_APPLIED = (  # the states' own constants, not input
    "UPDATE sale_lines SET outcome = '" + LineState.APPLIED_AT_SYNC.value + "', "  # noqa: S608
    "hq_reason = '', balance_after_minor = ?, remainder_memo = '', voided_memo = '' "
    "WHERE transaction_id = ? AND line_id = ? AND outcome = '"
    + LineState.QUEUED_OFFLINE.value + "'"
)


def _record_usual(conn: sqlite3.Connection, results: Sequence[SyncItemResult]) -> int | None:
    """The usual batch's answers, each line applied with no reason, memo or reversal: the
    constant columns in the statement, only the balance and the line's key bound (the sync
    records thousands a second). Returns how many lines took their answer; None, having
    written nothing, when any answer in the batch is another kind."""
    if isinstance(results, UsualResults):
        if not results:
            return 0
        # Rows zipped in C from the columns: no object per transaction.
        usual: int = conn.executemany(_RECORD_APPLIED, zip(
            results.balances, results.transaction_ids, results.line_ids, strict=True)).rowcount
        return usual
    applied: list[tuple[int | None, str, str]] = []
    for result in results:
        if result.reversals:
            return None
        transaction_id = result.transaction_id
        for line_id, state, reason, balance, memo, voided in result.lines:
            if state is not _APPLIED_AT_SYNC or reason or memo or voided:
                return None
            applied.append((balance, transaction_id, line_id))
    if not applied:
        return 0
    took: int = conn.executemany(_RECORD_APPLIED, applied).rowcount
    return took


def _sale(conn: sqlite3.Connection, transaction_id: str, status: SaleStatus,
          sequence_number: int | None, synced: bool) -> Sale:
    records = select_lines(conn, transaction_id)
    tenders = select_tenders(conn, transaction_id)
    completed = status in (SaleStatus.COMPLETED_ONLINE, SaleStatus.COMPLETED_OFFLINE)
    result = _result(transaction_id, status, sequence_number, records) if completed else None
    return Sale(
        transaction_id=transaction_id,
        status=status,
        tenders=tuple(
            SaleTender(card_number=t.card_number, tender=t.tender,
                       release_queued=t.removed_offline)
            for t in tenders
        ),
        lines=tuple(_line_status(r) for r in records),
        result=result,
        sequence_number=sequence_number,
        synced=synced,
    )


def _result(transaction_id: str, status: SaleStatus, sequence_number: int | None,
            records: list[LineRecord]) -> SaleResult:
    """A completed sale's result, from its stored lines: the same every time it is asked."""
    paid = sorted((r for r in records if r.position is not None), key=lambda r: r.position or 0)
    return SaleResult(
        transaction_id=transaction_id,
        completed_offline=status is SaleStatus.COMPLETED_OFFLINE,
        lines=tuple(line_result(r) for r in paid),
        sequence_number=sequence_number,
        reversed_lines=tuple(r.line for r in records if r.position is None),
    )


def line_result(record: LineRecord) -> LineResult:
    """The result of a paid line: HQ's answer when debited online, else completed offline."""
    if record.redeem_response is not None:
        return _convert.online_result(record.line, record.redeem_response)
    line = record.line
    return LineResult(
        line_id=line.line_id,
        card_number=line.card_number,
        amount=line.amount,
        completed_offline=True,
        online_redeem_attempted=record.attempted,
        balance_after=None,
        remainder_credit_memo=None,
    )


def _line_status(record: LineRecord) -> LineStatus:
    state = record.state
    result = line_result(record) if state.paid else None
    balance = result.balance_after if result is not None else None
    if record.balance_after_minor is not None:
        balance = Money(record.balance_after_minor, record.line.amount.currency_code)
    memo = record.remainder_memo
    if not memo and result is not None and result.remainder_credit_memo is not None:
        memo = result.remainder_credit_memo.card_number
    return LineStatus(
        line_id=record.line.line_id,
        card_number=record.line.card_number,
        amount=record.line.amount,
        state=state,
        result=result,
        hq_reason=record.hq_reason,
        balance_after=balance,
        remainder_credit_memo_number=memo,
        voided_credit_memo_number=record.voided_memo,
    )
