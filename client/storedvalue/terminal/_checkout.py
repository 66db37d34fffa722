"""The end of a sale: complete it online or, when HQ is out of reach, offline; or abandon it.

A line whose Redeem was sent without an answer may have been debited: it is never silently
dropped. Left out of the completed sale, or abandoned, it gets a reversal queued in the
sale's offline transaction, which HQ applies exactly once (credit back, or never apply).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from . import _convert
from ._connectivity import Connectivity
from ._errors import (
    HandshakeFailed,
    HQUnavailable,
    InvalidArgument,
    OfflineNotAllowed,
    PermissionDenied,
    RateLimited,
    RedeemOutcomeUnknown,
    SaleAbandoned,
    SaleAlreadyCompleted,
    TenderNotFound,
    TerminalError,
    Unauthenticated,
    UnexpectedError,
)
from ._hq_client import HQClient
from ._hq_records import OfflineLine, OfflineSale, QueuedReversal, QueuedUnlock
from ._model import CardKind, LineResult, SaleLine, SaleResult, SaleStatus
from ._offline_eligibility import offline_refusals
from ._outbox import Outbox
from ._parameters import ParametersCache
from ._sale_book import SaleBook, line_result
from ._sale_state import LineRecord, SaleState, TenderRecord
from ._tenders import Tenders

_NOT_A_VERDICT = (RateLimited, Unauthenticated, PermissionDenied, UnexpectedError,
                  HandshakeFailed)
"""Refusals HQ may give without looking up the request id: they say nothing about whether
an earlier, lost send of the same Redeem debited the card. (A TLS handshake that failed
means this send never left.)"""


@dataclass(frozen=True)
class _SaleLines:
    """The lines of a sale being completed, as this call asks and as the terminal stored."""

    asked: list[LineRecord]
    """The lines asked for, in order (a stored line keeps its request id and flags)."""
    kept: list[LineRecord]
    """Lines HQ debited earlier that this call leaves out: the money moved, they stay."""
    dropped: list[LineRecord]
    """Lines left out whose Redeem was sent without an answer: reversed when the sale ends."""

    @classmethod
    def of(cls, stored: list[LineRecord], lines: Sequence[SaleLine]) -> _SaleLines:
        by_id = {record.line.line_id: record for record in stored}
        asked = [
            by_id.get(line.line_id)
            or LineRecord(line=line, request_id=str(uuid.uuid4()), attempted=False,
                          redeem_response=None)
            for line in lines
        ]
        wanted = {line.line_id for line in lines}
        rest = [record for record in stored if record.line.line_id not in wanted]
        return cls(
            asked=asked,
            kept=[r for r in rest if r.redeem_response is not None],
            dropped=[r for r in rest if r.redeem_response is None and r.attempted],
        )

    @property
    def result_lines(self) -> list[SaleLine]:
        return [record.line for record in self.asked + self.kept]

    def paid(self, done: dict[str, LineResult]) -> tuple[LineResult, ...]:
        """The lines debited so far, in the result's order."""
        return tuple(done[r.line.line_id] for r in self.asked + self.kept
                     if r.line.line_id in done)

    def cards(self) -> set[str]:
        """Cards whose lock the sale's lines release at HQ (debit, offline line, reversal)."""
        return {record.line.card_number for record in self.asked + self.kept + self.dropped}


class Checkout:
    def __init__(
        self,
        *,
        hq: HQClient,
        connectivity: Connectivity,
        sale_state: SaleState,
        book: SaleBook,
        outbox: Outbox,
        parameters: ParametersCache,
        tenders: Tenders,
        on_queued: Callable[[], None],
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._state = sale_state
        self._book = book
        self._outbox = outbox
        self._parameters = parameters
        self._tenders = tenders
        self._on_queued = on_queued
        """Called after something was queued while online (the sync agent sends it now)."""

    # -- completing ---------------------------------------------------------------------

    def complete_sale(self, transaction_id: str, lines: Sequence[SaleLine]) -> SaleResult:
        _check_lines(lines)
        status = self._book.status(transaction_id)
        if status is not None and status is not SaleStatus.OPEN:
            return self._completed_before(transaction_id, status, lines)
        stored = self._state.lines(transaction_id)
        # Checked on what is stored before anything is marked attempted: a refused call
        # sends nothing, so it must leave no line saying it may have been debited.
        _check_against(stored, lines)
        try:
            online = self._connectivity.online and self._tenders.confirm_pending(
                transaction_id, lines
            )
        except TerminalError as refusal:
            raise refusal._refusing(refusal.line_id, _debited(stored, lines)) from None
        all_tenders = self._state.tenders(transaction_id)
        tenders = {
            record.card_number: record for record in all_tenders if not record.removed_offline
        }
        if online:
            debited = {r.line.line_id for r in stored if r.redeem_response is not None}
            for line in lines:
                if line.line_id not in debited and line.card_number not in tenders:
                    raise TenderNotFound(
                        f"line {line.line_id}: card not added to sale {transaction_id}",
                        metadata={"line_id": line.line_id},
                    )._refusing(line.line_id, _debited(stored, lines))
            stored = self._state.prepare_lines(transaction_id, lines, mark_first_pending=True)
        # else already OFFLINE: nothing will be sent, so nothing needs writing before the one
        # commit that stores the offline transaction (the p99 budget is ~2 ms).
        sale = _SaleLines.of(stored, lines)
        done = {
            r.line.line_id: _convert.online_result(r.line, r.redeem_response)
            for r in sale.asked + sale.kept
            if r.redeem_response is not None
        }
        pending = [record for record in sale.asked if record.redeem_response is None]
        if online and pending:
            pending = self._redeem_online(transaction_id, pending, tenders, done, sale)
            if pending:  # the link dropped: the stored attempted flags are the truth now
                fresh = {r.line.line_id: r for r in self._state.lines(transaction_id)}
                pending = [fresh[r.line.line_id] for r in pending]
        if pending:
            # Redeems change no tender: what was read above is what the sale holds.
            return self._complete_offline(transaction_id, sale, pending, all_tenders, tenders,
                                          done)
        return self._complete_online(transaction_id, sale)

    def _redeem_online(
        self,
        transaction_id: str,
        pending: list[LineRecord],
        tenders: dict[str, TenderRecord],
        done: dict[str, LineResult],
        sale: _SaleLines,
    ) -> list[LineRecord]:
        """Redeem lines one by one; return those left when the link dropped. Each line is
        marked attempted durably before its request leaves (the first by prepare_lines, the
        next ones in the commit recording the previous answer)."""
        attempted = {record.line.line_id for record in pending if record.attempted}
        for index, record in enumerate(pending):
            line = record.line
            try:
                debit = self._hq.redeem(
                    request_id=record.request_id, transaction_id=transaction_id, line=line,
                    fencing_token=tenders[line.card_number].fencing_token,
                )
            except HQUnavailable as unavailable:
                if not unavailable.request_sent and line.line_id not in attempted:
                    # Never left, and no earlier attempt did: HQ cannot have debited it.
                    self._state.clear_attempted(transaction_id, line.line_id)
                return pending[index:]
            except TerminalError as refusal:
                # HQ answered no to this request id. An earlier lost attempt of the same
                # request id stays "maybe debited" unless the answer is a verdict on it.
                if line.line_id not in attempted or not isinstance(refusal, _NOT_A_VERDICT):
                    self._state.clear_attempted(transaction_id, line.line_id)
                raise refusal._refusing(line.line_id, sale.paid(done)) from None
            following = pending[index + 1].line.line_id if index + 1 < len(pending) else None
            self._state.record_redeemed(transaction_id, line.line_id, debit.stored, following)
            done[line.line_id] = _convert.online_result(line, debit.stored)
        return []

    def _complete_offline(
        self,
        transaction_id: str,
        sale: _SaleLines,
        pending: list[LineRecord],
        all_tenders: list[TenderRecord],
        tenders: dict[str, TenderRecord],
        done: dict[str, LineResult],
    ) -> SaleResult:
        parameters = self._parameters.current
        locks = {number: record.tender for number, record in tenders.items()}
        lines = [record.line for record in pending]
        last_reached = self._connectivity.history.last_reached_hq_at
        completed_at = datetime.now(UTC)

        def admit(unsynced: Mapping[tuple[CardKind, str], int]) -> None:
            refusals = offline_refusals(lines, locks, parameters, unsynced=unsynced,
                                        last_reached_hq_at=last_reached, now=completed_at)
            if refusals:
                raise OfflineNotAllowed.of(refusals)._refusing(refusals[0].line_id,
                                                                sale.paid(done))

        # Once now, so that only eligible lines are built; again under the outbox's lock,
        # where what it holds cannot change before this sale is in.
        admit(self._outbox.unsynced_minor())
        redeem_lines = []
        for record in pending:
            held = locks[record.line.card_number]
            assert held is not None  # eligible: the lock was confirmed
            redeem_lines.append(OfflineLine(
                line_id=record.line.line_id, card_number=record.line.card_number,
                card_kind=held.kind, amount=record.line.amount,
                fencing_token=held.fencing_token, online_redeem_attempted=record.attempted,
            ))
        offline = OfflineSale(
            transaction_id=transaction_id,
            completed_at=completed_at,
            parameters_version=parameters.version,
            redeem_lines=tuple(redeem_lines),
            unlocks=_unlocks([t for t in all_tenders if t.card_number not in sale.cards()]),
            reversals=_reversals(sale.dropped, all_tenders),
            last_reached_hq_at=last_reached,
        )
        paid = sale.result_lines

        def close_sale(conn: sqlite3.Connection, sequence: int) -> None:
            SaleBook.finish(
                conn, transaction_id, SaleStatus.COMPLETED_OFFLINE, sequence_number=sequence,
                paid=paid, offline=[r.line.line_id for r in pending],
                reversed_ids=[r.line.line_id for r in sale.dropped], read_result=False,
            )

        sequence = self._outbox.append(offline, admit=admit, also=close_sale)
        # What SaleBook.result reads back from the lines just stored (a retry returns it), put
        # together from them rather than read: the lines debited online with HQ's answers,
        # the others offline (with their attempted flags as stored), the dropped reversed.
        offline_lines = {r.line.line_id: r for r in pending}
        return SaleResult(
            transaction_id=transaction_id,
            completed_offline=True,
            lines=tuple(
                done[line.line_id] if line.line_id in done
                else line_result(offline_lines[line.line_id])
                for line in paid
            ),
            sequence_number=sequence,
            reversed_lines=tuple(r.line for r in sale.dropped),
        )

    def _complete_online(self, transaction_id: str, sale: _SaleLines) -> SaleResult:
        all_tenders = self._state.tenders(transaction_id)
        unreleased = self._tenders.release_all(
            [t for t in all_tenders if t.card_number not in sale.cards()]
        )
        return _completed(self._finish(
            transaction_id, SaleStatus.COMPLETED_ONLINE, paid=sale.result_lines,
            unreleased=unreleased, to_reverse=sale.dropped, tenders=all_tenders,
        ))

    def _completed_before(self, transaction_id: str, status: SaleStatus,
                          lines: Sequence[SaleLine]) -> SaleResult:
        """A retry of a completed sale gets its result again; anything else is refused."""
        if status is SaleStatus.ABANDONED:
            raise SaleAbandoned(f"sale {transaction_id} was abandoned")
        result = _completed(self._book.result(transaction_id))
        paid = {(r.line_id, r.card_number, r.amount) for r in result.lines}
        if all((line.line_id, line.card_number, line.amount) in paid for line in lines):
            return result
        raise SaleAlreadyCompleted(
            f"sale {transaction_id} was already completed "
            f"{'offline' if result.completed_offline else 'online'} with other lines",
            result=result,
        )

    # -- abandoning ---------------------------------------------------------------------

    def abandon_sale(self, transaction_id: str) -> None:
        """Release every card the sale locked and reverse every line HQ debited or may have
        debited: online when HQ answers, else queued in the outbox. Abandoning again is a
        no-op; a completed sale cannot be abandoned."""
        status = self._book.status(transaction_id)
        if status is SaleStatus.ABANDONED or status is None:
            return
        if status is not SaleStatus.OPEN:
            raise SaleAlreadyCompleted(
                f"sale {transaction_id} was already completed",
                result=self._book.result(transaction_id),
            )
        to_reverse = [r for r in self._state.lines(transaction_id) if r.may_be_debited]
        reversed_cards = {r.line.card_number for r in to_reverse}
        all_tenders = self._state.tenders(transaction_id)
        unreleased = self._tenders.release_all(
            [t for t in all_tenders if t.card_number not in reversed_cards]
        )
        self._finish(transaction_id, SaleStatus.ABANDONED, paid=(), unreleased=unreleased,
                     to_reverse=to_reverse, tenders=all_tenders)

    # -- internals ----------------------------------------------------------------------

    def _finish(
        self,
        transaction_id: str,
        status: SaleStatus,
        *,
        paid: Sequence[SaleLine],
        unreleased: list[TenderRecord],
        to_reverse: list[LineRecord],
        tenders: list[TenderRecord],
    ) -> SaleResult | None:
        """Close a sale whose lines are settled online: locks HQ could not release now and
        reversals go to the outbox as one offline transaction (sent at once when online).
        Returns the result of a completed sale."""
        if not unreleased and not to_reverse:
            return self._book.finish_now(transaction_id, status, paid=paid)
        queued = OfflineSale(
            transaction_id=transaction_id,
            completed_at=datetime.now(UTC),
            parameters_version=self._parameters.current.version,
            unlocks=_unlocks(unreleased),
            reversals=_reversals(to_reverse, tenders),
        )
        finished: list[SaleResult | None] = []
        self._outbox.append(queued, also=lambda conn, sequence: finished.append(SaleBook.finish(
            conn, transaction_id, status, sequence_number=sequence, paid=paid,
            reversed_ids=[r.line.line_id for r in to_reverse],
        )))
        if self._connectivity.online:
            self._on_queued()
        return finished[0]


def _completed(result: SaleResult | None) -> SaleResult:
    assert result is not None, "a completed sale has a result"
    return result


def _unlocks(records: Iterable[TenderRecord]) -> tuple[QueuedUnlock, ...]:
    return tuple(
        # 0 for a pending lock; HQ releases by terminal and transaction at sync anyway.
        QueuedUnlock(card_number=r.card_number, transaction_id=r.transaction_id,
                     fencing_token=r.fencing_token)
        for r in records
    )


def _reversals(lines: Iterable[LineRecord], tenders: Iterable[TenderRecord]
               ) -> tuple[QueuedReversal, ...]:
    tokens = {t.card_number: t.fencing_token for t in tenders}
    return tuple(
        QueuedReversal(line_id=r.line.line_id, card_number=r.line.card_number,
                       amount=r.line.amount, fencing_token=tokens.get(r.line.card_number, 0))
        for r in lines
    )


def _debited(stored: list[LineRecord], lines: Sequence[SaleLine]) -> tuple[LineResult, ...]:
    sale = _SaleLines.of(stored, lines)
    return sale.paid({
        r.line.line_id: _convert.online_result(r.line, r.redeem_response)
        for r in stored if r.redeem_response is not None
    })


def _check_against(stored: list[LineRecord], lines: Sequence[SaleLine]) -> None:
    """A line id keeps its content; a card whose line's Redeem went unanswered is not used
    by another line (HQ may hold a debit of that card for it)."""
    by_id = {record.line.line_id: record for record in stored}
    unanswered = {
        r.line.card_number: r.line.line_id
        for r in stored
        if r.attempted and r.redeem_response is None
    }
    for line in lines:
        known = by_id.get(line.line_id)
        if known is not None and known.line != line:
            raise InvalidArgument(
                f"line {line.line_id} changed since its first attempt; use a new line id",
                reason="INVALID_FIELD",
                metadata={"field": "lines", "line_id": line.line_id},
            )._refusing(line.line_id, _debited(stored, lines))
        other = unanswered.get(line.card_number)
        if other is not None and other != line.line_id:
            raise RedeemOutcomeUnknown(
                f"line {line.line_id}: line {other} of the same card was sent to HQ and never "
                f"answered; resend {other} unchanged, or leave the card out (then {other} is "
                "reversed)",
                line_ids=(other,),
            )._refusing(line.line_id, _debited(stored, lines))


def _check_lines(lines: Sequence[SaleLine]) -> None:
    ids = [line.line_id for line in lines]
    cards = [line.card_number for line in lines]
    problem = ""
    if any(not line_id for line_id in ids) or len(set(ids)) != len(ids):
        problem = "line ids must be non-empty and unique within the sale"
    elif len(set(cards)) != len(cards):
        problem = "one line per card: a redeem releases the card's lock"
    elif any(line.amount.amount_minor <= 0 for line in lines):
        problem = "line amounts must be strictly positive"
    if problem:
        raise InvalidArgument(problem, reason="INVALID_FIELD", metadata={"field": "lines"})
