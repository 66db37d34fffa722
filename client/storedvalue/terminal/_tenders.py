"""Stored-value tenders: locking a card when it is added to a sale, releasing it when it is
removed, and the one way this library releases a lock at HQ (used when a tender is removed,
when a sale finishes, and by the sync agent for releases queued while offline)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from ._connectivity import Connectivity
from ._errors import (
    CardNotFound,
    HQUnavailable,
    LockNotHeld,
    SaleAbandoned,
    SaleAlreadyCompleted,
    TenderNotFound,
    TerminalError,
)
from ._hq_client import HQClient
from ._model import SaleLine, SaleStatus, Tender
from ._sale_book import SaleBook
from ._sale_state import SaleState, TenderRecord


class Tenders:
    def __init__(
        self, *, hq: HQClient, connectivity: Connectivity, sale_state: SaleState, book: SaleBook
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._state = sale_state
        self._book = book

    def add(self, transaction_id: str, card_number: str) -> Tender:
        """Lock the card. A pending tender is written before LockCard leaves: if HQ commits
        the lock and its answer is lost, the sale still knows to release the card. Calling
        again for the same sale and card turns a pending tender into a confirmed one (HQ
        relocks idempotently for the same terminal and sale). Refused for a finished sale:
        a lock taken now would never be released."""
        refuse_if_finished(self._book, transaction_id)
        if not self._connectivity.online:
            raise HQUnavailable("terminal is OFFLINE; HQ not called", request_sent=False, code=None)
        kept = self._kept_for_an_unanswered_redeem(transaction_id, card_number)
        if kept is not None:
            return kept
        added_pending = self._state.save_pending_tender(transaction_id, card_number)
        try:
            tender = self._hq.lock_card(
                request_id=str(uuid.uuid4()), card_number=card_number,
                transaction_id=transaction_id,
            )
        except HQUnavailable as unavailable:
            if added_pending and not unavailable.request_sent:
                self._state.forget_tender(transaction_id, card_number)
            raise
        except TerminalError:
            # HQ answered and refused: this request locked nothing. A tender from an earlier
            # call stays as it was (pending or not), to be released with the sale.
            if added_pending:
                self._state.forget_tender(transaction_id, card_number)
            raise
        self._state.save_tender(tender)
        return tender

    def _kept_for_an_unanswered_redeem(self, transaction_id: str, card_number: str
                                       ) -> Tender | None:
        """The sale's tender for this card when a Redeem sent with its token is unanswered.
        That Redeem is resent with its request id, so with the same token: locking again
        would get a new token if the lost Redeem had released the lock, HQ would refuse the
        resend (REQUEST_ID_REUSED) every time, and the card would stay locked."""
        record = self._state.tender(transaction_id, card_number)
        if record is None or record.tender is None or record.removed_offline:
            return None
        for line in self._state.lines(transaction_id):
            if (line.line.card_number == card_number and line.attempted
                    and line.redeem_response is None):
                return record.tender
        return None

    def remove(self, transaction_id: str, card_number: str) -> bool:
        """Release the card; True when HQ released it now, False when the unlock is queued."""
        record = self._state.tender(transaction_id, card_number)
        if record is None:
            raise TenderNotFound(f"sale {transaction_id} has no tender for this card")
        if release_lock(self._hq, record):
            self._state.forget_tender(transaction_id, card_number)
            return True
        self._state.mark_removed_offline(transaction_id, card_number)
        return False

    def confirm_pending(self, transaction_id: str, lines: Sequence[SaleLine]) -> bool:
        """Relock the cards of these lines whose LockCard answer was lost, to learn their
        tokens before redeeming. False when the link dropped meanwhile: the sale takes the
        offline path, which refuses the lines still pending."""
        line_of = {line.card_number: line.line_id for line in lines}
        for record in self._state.tenders(transaction_id):
            if record.lock_pending and not record.removed_offline and record.card_number in line_of:
                try:
                    self.add(transaction_id, record.card_number)
                except HQUnavailable:
                    return False
                except TerminalError as refusal:  # HQ refused the lock: that line can't be paid
                    raise refusal._refusing(line_of[record.card_number], ()) from None
        return True

    def release_all(self, records: Iterable[TenderRecord]) -> list[TenderRecord]:
        """Release these locks online; returns those HQ could not release now (out of reach,
        or refused: rate limited, ...), whose release is then queued with the sale."""
        unreleased = []
        for record in records:
            try:
                released = release_lock(self._hq, record)
            except TerminalError:
                released = False
            if not released:
                unreleased.append(record)
        return unreleased

    def release_removed_offline(self) -> TerminalError | None:
        """Send the releases of tenders removed while OFFLINE (the sync agent, online)."""
        for record in self._state.pending_unlocks():
            try:
                if not release_lock(self._hq, record):
                    return HQUnavailable("HQ out of reach", request_sent=False, code=None)
            except TerminalError as failure:
                return failure
            self._state.forget_tender(
                record.transaction_id, record.card_number, only_if_removed_offline=True
            )
        return None


def release_lock(hq: HQClient, record: TenderRecord) -> bool:
    """Release this terminal's lock for the tender's sale: True when HQ released it (or it
    was released already, or taken over), False when HQ is out of reach. Other refusals
    are raised."""
    try:
        hq.unlock_card(
            request_id=record.unlock_request_id or str(uuid.uuid4()),
            card_number=record.card_number,
            transaction_id=record.transaction_id,
            # 0 for a pending lock: HQ releases whatever this terminal holds for the sale.
            fencing_token=record.fencing_token,
        )
    except (LockNotHeld, CardNotFound):
        pass  # Released or taken over already: nothing of ours to release.
    except HQUnavailable:
        return False
    return True


def refuse_if_finished(book: SaleBook, transaction_id: str) -> None:
    """A finished sale takes no new tender, line or abandon."""
    status = book.status(transaction_id)
    if status is SaleStatus.ABANDONED:
        raise SaleAbandoned(f"sale {transaction_id} was abandoned")
    if status is not None and status is not SaleStatus.OPEN:
        how = "offline" if status is SaleStatus.COMPLETED_OFFLINE else "online"
        raise SaleAlreadyCompleted(
            f"sale {transaction_id} was already completed {how}",
            result=book.result(transaction_id),
        )
