"""Open sales kept durably on the terminal: the locks taken (tenders) and the tender lines
being completed, so that a link drop or a restart loses nothing and a retry resends the
same request ids. A line whose Redeem was sent stays until the sale finishes, asked for or
not: it is either completed or reversed, never forgotten."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ._database import Database
from ._model import CardKind, LineState, Money, SaleLine, Tender


@dataclass(frozen=True)
class TenderRecord:
    transaction_id: str
    card_number: str
    fencing_token: int
    """The lock's token; 0 while the lock is pending (HQ issues tokens from 1)."""
    tender: Tender | None
    """What HQ answered to LockCard; None while the lock is pending: the request may have
    reached HQ, which then locked the card, but its answer never came."""
    removed_offline: bool
    """The line was removed while OFFLINE: the lock is still to be released at HQ."""
    unlock_request_id: str | None

    @property
    def lock_pending(self) -> bool:
        """This terminal may hold the lock but never learned its token: it can release it
        (token 0 releases whatever this terminal holds for the sale) but not spend it."""
        return self.tender is None


@dataclass(frozen=True)
class LineRecord:
    line: SaleLine
    request_id: str
    """Request id of the line's Redeem, reused on every resend."""
    attempted: bool
    """A Redeem for this line was (maybe) sent and no answer was recorded."""
    redeem_response: bytes | None
    """HQ's answer once the line was debited online (read by ``_convert``)."""
    outcome: LineState | None = None
    """How the finished sale left the line (QUEUED_OFFLINE, REVERSAL_QUEUED, and what sync
    made of them); None while the sale is open."""
    position: int | None = None
    """The line's place in the completed sale's result; None when not part of it."""
    hq_reason: str = ""
    balance_after_minor: int | None = None
    remainder_memo: str = ""
    voided_memo: str = ""

    @property
    def state(self) -> LineState:
        if self.outcome is not None:
            return self.outcome
        if self.redeem_response is not None:
            return LineState.DEBITED
        return LineState.ATTEMPTED if self.attempted else LineState.PENDING

    @property
    def may_be_debited(self) -> bool:
        """HQ debited the line, or may have (a Redeem left without an answer)."""
        return self.redeem_response is not None or self.attempted


_PENDING_TOKEN = 0
"""Fencing token stored for a pending lock (card kind and balance unknown, stored empty)."""

_TENDER_COLUMNS = (
    "transaction_id, card_number, card_kind, balance_minor, currency_code, fencing_token, "
    "lease_expires_at, removed_offline, unlock_request_id"
)
_LINE_COLUMNS = (
    "line_id, card_number, amount_minor, currency_code, request_id, attempted, "
    "redeem_response, outcome, position, hq_reason, balance_after_minor, remainder_memo, "
    "voided_memo"
)


def tender_from_row(row: Sequence[object]) -> TenderRecord:
    transaction_id, card_number, token = str(row[0]), str(row[1]), int(str(row[5]))
    lease = row[6]
    tender = None
    if token != _PENDING_TOKEN:
        tender = Tender(
            transaction_id=transaction_id,
            card_number=card_number,
            kind=CardKind(row[2]),
            balance=Money(int(str(row[3])), str(row[4])),
            fencing_token=token,
            lease_expires_at=datetime.fromisoformat(str(lease)) if lease else None,
        )
    return TenderRecord(
        transaction_id=transaction_id,
        card_number=card_number,
        fencing_token=token,
        tender=tender,
        removed_offline=bool(row[7]),
        unlock_request_id=str(row[8]) if row[8] else None,
    )


def select_tenders(conn: sqlite3.Connection, transaction_id: str) -> list[TenderRecord]:
    rows = conn.execute(
        f"SELECT {_TENDER_COLUMNS} FROM tenders WHERE transaction_id = ? "  # noqa: S608
        "ORDER BY rowid",
        (transaction_id,),
    ).fetchall()
    return [tender_from_row(row) for row in rows]


def select_lines(conn: sqlite3.Connection, transaction_id: str) -> list[LineRecord]:
    rows = conn.execute(
        f"SELECT {_LINE_COLUMNS} FROM sale_lines WHERE transaction_id = ? "  # noqa: S608
        "ORDER BY rowid",
        (transaction_id,),
    ).fetchall()
    return [
        LineRecord(
            line=SaleLine(row[0], row[1], Money(row[2], row[3])),
            request_id=row[4],
            attempted=bool(row[5]),
            redeem_response=row[6],
            outcome=LineState(row[7]) if row[7] else None,
            position=row[8],
            hq_reason=row[9],
            balance_after_minor=row[10],
            remainder_memo=row[11],
            voided_memo=row[12],
        )
        for row in rows
    ]


def open_sale(conn: sqlite3.Connection, transaction_id: str) -> None:
    """Note the sale as open (once), inside the caller's write transaction."""
    conn.execute(
        "INSERT OR IGNORE INTO sales (transaction_id, status, opened_at) VALUES (?, 'OPEN', ?)",
        (transaction_id, datetime.now(UTC).isoformat()),
    )


class SaleState:
    """Tenders and tender lines of the terminal's open sales."""

    def __init__(self, database: Database) -> None:
        self._db = database

    # -- tenders ------------------------------------------------------------------------

    def save_tender(self, tender: Tender) -> None:
        lease = tender.lease_expires_at.isoformat() if tender.lease_expires_at else None
        with self._db.write() as conn:
            open_sale(conn, tender.transaction_id)
            conn.execute(
                f"INSERT OR REPLACE INTO tenders ({_TENDER_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0, NULL)",
                (
                    tender.transaction_id,
                    tender.card_number,
                    tender.kind.value,
                    tender.balance.amount_minor,
                    tender.balance.currency_code,
                    tender.fencing_token,
                    lease,
                ),
            )

    def save_pending_tender(self, transaction_id: str, card_number: str) -> bool:
        """Durably note, before LockCard leaves, that HQ may lock this card for the sale, so
        that a lost answer still leaves something to release. Returns False (and changes
        nothing) when the sale already has a tender for this card."""
        with self._db.write() as conn:
            open_sale(conn, transaction_id)
            cursor = conn.execute(
                f"INSERT OR IGNORE INTO tenders ({_TENDER_COLUMNS}) "  # noqa: S608
                "VALUES (?, ?, '', 0, '', ?, NULL, 0, NULL)",
                (transaction_id, card_number, _PENDING_TOKEN),
            )
            return cursor.rowcount == 1

    def tenders(self, transaction_id: str) -> list[TenderRecord]:
        with self._db.read() as conn:
            return select_tenders(conn, transaction_id)

    def tender(self, transaction_id: str, card_number: str) -> TenderRecord | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT {_TENDER_COLUMNS} FROM tenders "  # noqa: S608
                "WHERE transaction_id = ? AND card_number = ?",
                (transaction_id, card_number),
            ).fetchone()
        return tender_from_row(row) if row else None

    def pending_unlocks(self) -> list[TenderRecord]:
        """Tenders removed while OFFLINE whose lock HQ still holds."""
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT {_TENDER_COLUMNS} FROM tenders WHERE removed_offline = 1 "  # noqa: S608
                "ORDER BY rowid"
            ).fetchall()
        return [tender_from_row(row) for row in rows]

    def mark_removed_offline(self, transaction_id: str, card_number: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                "UPDATE tenders SET removed_offline = 1, "
                "unlock_request_id = COALESCE(unlock_request_id, ?) "
                "WHERE transaction_id = ? AND card_number = ?",
                (str(uuid.uuid4()), transaction_id, card_number),
            )

    def forget_tender(
        self, transaction_id: str, card_number: str, *, only_if_removed_offline: bool = False
    ) -> None:
        """Drop a tender. With ``only_if_removed_offline`` (a queued unlock HQ just applied)
        a tender the cashier added again meanwhile (``save_tender`` resets the mark) stays."""
        with self._db.write() as conn:
            conn.execute(
                "DELETE FROM tenders WHERE transaction_id = ? AND card_number = ? "
                "AND (removed_offline = 1 OR NOT ?)",
                (transaction_id, card_number, only_if_removed_offline),
            )

    # -- tender lines -------------------------------------------------------------------

    def lines(self, transaction_id: str) -> list[LineRecord]:
        with self._db.read() as conn:
            return select_lines(conn, transaction_id)

    def prepare_lines(
        self, transaction_id: str, lines: Sequence[SaleLine], *, mark_first_pending: bool
    ) -> list[LineRecord]:
        """Give every new line a request id (kept for retries) and return the sale's lines,
        as they were before this call marked anything.

        Lines of an earlier attempt that are not asked for any more are dropped, unless HQ
        debited them or may have (those stay until the sale finishes: completed with the
        sale, or reversed). With ``mark_first_pending`` the first asked-for line not yet
        debited is marked attempted in the same commit: its Redeem is about to leave, and if
        the process dies waiting for the answer the line must still say it may have been
        debited."""
        with self._db.write() as conn:
            open_sale(conn, transaction_id)
            wanted = [line.line_id for line in lines]
            placeholders = ", ".join("?" * len(wanted))  # only "?" marks, values bound
            conn.execute(
                "DELETE FROM sale_lines WHERE transaction_id = ? AND redeem_response IS NULL "  # noqa: S608
                f"AND attempted = 0 AND line_id NOT IN ({placeholders})",
                (transaction_id, *wanted),
            )
            insert_lines(conn, transaction_id, lines)
            records = select_lines(conn, transaction_id)
            if mark_first_pending:
                debited = {r.line.line_id for r in records if r.redeem_response is not None}
                first = next((i for i in wanted if i not in debited), None)
                if first is not None:
                    self._set_attempted(conn, transaction_id, first)
        return records

    def record_redeemed(
        self, transaction_id: str, line_id: str, response: bytes, next_line_id: str | None
    ) -> None:
        """Keep HQ's answer for a debited line and, in the same commit, mark the next line
        as attempted before its Redeem goes out (one commit per line, not two)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE sale_lines SET redeem_response = ?, attempted = 0 "
                "WHERE transaction_id = ? AND line_id = ?",
                (response, transaction_id, line_id),
            )
            if next_line_id is not None:
                self._set_attempted(conn, transaction_id, next_line_id)

    def clear_attempted(self, transaction_id: str, line_id: str) -> None:
        """The line's Redeem surely debited nothing (HQ refused it, or it never left)."""
        with self._db.write() as conn:
            conn.execute(
                "UPDATE sale_lines SET attempted = 0 WHERE transaction_id = ? AND line_id = ?",
                (transaction_id, line_id),
            )

    @staticmethod
    def _set_attempted(conn: sqlite3.Connection, transaction_id: str, line_id: str) -> None:
        conn.execute(
            "UPDATE sale_lines SET attempted = 1 WHERE transaction_id = ? AND line_id = ?",
            (transaction_id, line_id),
        )


def insert_lines(conn: sqlite3.Connection, transaction_id: str, lines: Sequence[SaleLine]) -> None:
    """Store lines not stored yet, each with a new request id (a stored line keeps its own)."""
    conn.executemany(
        "INSERT OR IGNORE INTO sale_lines (transaction_id, line_id, card_number, "
        "amount_minor, currency_code, request_id) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (
                transaction_id,
                line.line_id,
                line.card_number,
                line.amount.amount_minor,
                line.amount.currency_code,
                str(uuid.uuid4()),
            )
            for line in lines
        ],
    )
