"""The sale flow: add a stored-value tender (lock), remove it (unlock, or queue the unlock
when offline), complete the sale online or, when HQ is out of reach, offline."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from storedvalue.v1 import offline_pb2, terminal_service_pb2

from ._connectivity import Connectivity
from ._convert import (
    card_from_pb,
    kind_from_pb,
    kind_to_pb,
    money_from_pb,
    money_to_pb,
    timestamp_from_pb,
    timestamp_to_pb,
)
from ._errors import (
    CardNotFound,
    HQUnavailable,
    InvalidArgument,
    LockNotHeld,
    OfflineNotAllowed,
    OfflineRefusal,
    PermissionDenied,
    RateLimited,
    RedeemOutcomeUnknown,
    SaleAlreadyCompleted,
    TenderNotFound,
    TerminalError,
    Unauthenticated,
    UnexpectedError,
)
from ._hq_client import HQClient
from ._model import LineResult, SaleLine, SaleResult, Tender
from ._outbox import Outbox
from ._parameters import ParametersCache
from ._sale_state import LineRecord, SaleState, TenderRecord

_log = logging.getLogger(__name__)

_NOT_A_VERDICT = (RateLimited, Unauthenticated, PermissionDenied, UnexpectedError)
"""Refusals HQ may give without looking up the request id: they say nothing about whether
an earlier, lost send of the same Redeem debited the card."""


class Checkout:
    def __init__(
        self,
        *,
        hq: HQClient,
        connectivity: Connectivity,
        sale_state: SaleState,
        outbox: Outbox,
        parameters: ParametersCache,
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._state = sale_state
        self._outbox = outbox
        self._parameters = parameters

    def add_tender(self, transaction_id: str, card_number: str) -> Tender:
        """Lock the card. A pending tender is written before LockCard leaves: if HQ commits
        the lock and its answer is lost, the sale still knows to release the card. Calling
        again for the same sale and card turns a pending tender into a confirmed one (HQ
        relocks idempotently for the same terminal and sale). Raises SaleAlreadyCompleted
        when the sale was completed offline: a lock taken now would never be released."""
        self._refuse_if_completed_offline(transaction_id)
        if not self._connectivity.online:
            raise HQUnavailable("terminal is OFFLINE; HQ not called", request_sent=False, code=None)
        added_pending = self._state.save_pending_tender(transaction_id, card_number)
        try:
            response = self._hq.call(
                self._hq.stub.LockCard,
                terminal_service_pb2.LockCardRequest(
                    request_id=str(uuid.uuid4()),
                    card_number=card_number,
                    transaction_id=transaction_id,
                ),
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
        lock = response.lock
        tender = Tender(
            transaction_id=transaction_id,
            card_number=card_number,
            kind=kind_from_pb(response.card.kind),
            balance=money_from_pb(response.card.balance),
            fencing_token=lock.fencing_token,
            lease_expires_at=(
                timestamp_from_pb(lock.lease_expires_at)
                if lock.HasField("lease_expires_at")
                else None
            ),
        )
        self._state.save_tender(tender)
        return tender

    def remove_tender(self, transaction_id: str, card_number: str) -> bool:
        """Release the card; True when HQ released it now, False when the unlock is queued."""
        record = self._state.tender(transaction_id, card_number)
        if record is None:
            raise TenderNotFound(f"sale {transaction_id} has no tender for this card")
        if self._unlock_online(record):
            self._state.forget_tender(transaction_id, card_number)
            return True
        self._state.mark_removed_offline(transaction_id, card_number)
        return False

    def abandon_sale(self, transaction_id: str) -> None:
        """Release every card the sale locked (online, or queued in the outbox)."""
        self._refuse_if_completed_offline(transaction_id)
        records = self._state.lines(transaction_id)
        if any(record.redeem_response is not None for record in records):
            raise InvalidArgument(
                f"sale {transaction_id} has lines HQ already debited; complete it instead",
                reason="INVALID_FIELD",
            )
        unknown = tuple(record.line.line_id for record in records if record.attempted)
        if unknown:
            raise RedeemOutcomeUnknown(
                f"sale {transaction_id}: HQ may have debited line(s) {', '.join(unknown)} (a "
                "Redeem was sent and its answer lost); complete the sale instead, the retry "
                "resends the same request id",
                line_ids=unknown,
            )
        self._release(transaction_id, self._state.tenders(transaction_id))

    def complete_sale(self, transaction_id: str, lines: Sequence[SaleLine]) -> SaleResult:
        _check_lines(lines)
        self._refuse_if_completed_offline(transaction_id)
        online = self._connectivity.online and self._confirm_pending_locks(transaction_id, lines)
        # Checked on what is stored before anything is marked attempted: a refused call
        # sends nothing, so it must leave no line saying it may have been debited.
        records = _merge(self._state.lines(transaction_id), lines)
        by_id = {record.line.line_id: record for record in records}
        for line in lines:
            if by_id[line.line_id].line != line:
                raise InvalidArgument(
                    f"line {line.line_id} changed since its first attempt; use a new line id",
                    reason="INVALID_FIELD",
                    metadata={"field": "lines"},
                )
        tenders = {
            record.card_number: record
            for record in self._state.tenders(transaction_id)
            if not record.removed_offline
        }
        if online:
            for record in records:
                if record.redeem_response is None and record.line.card_number not in tenders:
                    raise TenderNotFound(
                        f"line {record.line.line_id}: card not added to sale {transaction_id}",
                        metadata={"line_id": record.line.line_id},
                    )
            records = self._state.prepare_lines(transaction_id, lines, mark_first_pending=True)
            by_id = {record.line.line_id: record for record in records}
        # else already OFFLINE: nothing will be sent, so nothing needs writing before the one
        # commit that stores the offline transaction (the p99 budget is ~2 ms).
        ordered = [by_id[line.line_id] for line in lines]
        ordered += [record for record in records if record not in ordered]
        done: dict[str, LineResult] = {
            record.line.line_id: _online_result(record.line, record.redeem_response)
            for record in ordered
            if record.redeem_response is not None
        }
        pending = [record for record in ordered if record.redeem_response is None]
        attempted = {record.line.line_id for record in pending if record.attempted}
        if online:
            pending = self._redeem_online(transaction_id, pending, tenders, done, attempted)
        if pending:
            return self._complete_offline(
                transaction_id, ordered, pending, tenders, done, attempted
            )
        used = {record.line.card_number for record in ordered}
        leftovers = [
            record
            for record in self._state.tenders(transaction_id)
            if record.card_number not in used
        ]
        sequence = self._release(transaction_id, leftovers)
        return SaleResult(
            transaction_id=transaction_id,
            completed_offline=False,
            lines=tuple(done[record.line.line_id] for record in ordered),
            sequence_number=sequence,
        )

    def _redeem_online(
        self,
        transaction_id: str,
        pending: list[LineRecord],
        tenders: dict[str, TenderRecord],
        done: dict[str, LineResult],
        attempted: set[str],
    ) -> list[LineRecord]:
        """Redeem lines one by one; return those left when the link dropped. Each line is
        marked attempted durably before its request leaves (the first by prepare_lines, the
        next ones in the commit recording the previous answer)."""
        for index, record in enumerate(pending):
            line = record.line
            request = terminal_service_pb2.RedeemRequest(
                request_id=record.request_id,
                card_number=line.card_number,
                transaction_id=transaction_id,
                line_id=line.line_id,
                fencing_token=tenders[line.card_number].fencing_token,
                amount=money_to_pb(line.amount),
            )
            try:
                response = self._hq.call(self._hq.stub.Redeem, request)
            except HQUnavailable as unavailable:
                if unavailable.request_sent:
                    attempted.add(line.line_id)
                elif line.line_id not in attempted:
                    # Never left, and no earlier attempt did: HQ cannot have debited it.
                    self._state.clear_attempted(transaction_id, line.line_id)
                return pending[index:]
            except TerminalError as refusal:
                # HQ answered no to this request id. An earlier lost attempt of the same
                # request id stays "maybe debited" unless the answer is a verdict on it.
                if line.line_id not in attempted or not isinstance(refusal, _NOT_A_VERDICT):
                    attempted.discard(line.line_id)
                    self._state.clear_attempted(transaction_id, line.line_id)
                raise
            following = pending[index + 1].line.line_id if index + 1 < len(pending) else None
            blob = response.SerializeToString()
            self._state.record_redeemed(transaction_id, line.line_id, blob, following)
            done[line.line_id] = _online_result(line, blob)
        return []

    def _complete_offline(
        self,
        transaction_id: str,
        ordered: list[LineRecord],
        pending: list[LineRecord],
        tenders: dict[str, TenderRecord],
        done: dict[str, LineResult],
        attempted: set[str],
    ) -> SaleResult:
        parameters = self._parameters.current
        refusals: list[OfflineRefusal] = []
        for record in pending:
            line = record.line
            record_held = tenders.get(line.card_number)
            held = record_held.tender if record_held is not None else None
            why = ""
            if record_held is None:
                why = "NOT_LOCKED"
            elif held is None:
                # HQ may have refused the lock (another till holds the card, the card is
                # flagged or unknown): spending it offline could spend someone else's lock.
                why = "LOCK_UNCONFIRMED"
            elif not parameters.allows_offline(held.kind):
                why = "KIND_NOT_ALLOWED"
            elif line.amount.currency_code != held.balance.currency_code:
                why = "CURRENCY_MISMATCH"
            elif line.amount.amount_minor > held.balance.amount_minor:
                why = "OVER_BALANCE"
            if why:
                refusals.append(OfflineRefusal(line.line_id, line.card_number, why))
        if refusals:
            raise OfflineNotAllowed(tuple(refusals))
        used = {record.line.card_number for record in ordered}
        all_tenders = self._state.tenders(transaction_id)
        confirmed = {
            number: record.tender
            for number, record in tenders.items()
            if record.tender is not None
        }
        transaction = offline_pb2.OfflineTransaction(
            transaction_id=transaction_id,
            completed_at=timestamp_to_pb(datetime.now(UTC)),
            parameters_version=parameters.version,
            redeem_lines=[
                offline_pb2.OfflineRedeemLine(
                    line_id=record.line.line_id,
                    card_number=record.line.card_number,
                    card_kind=kind_to_pb(confirmed[record.line.card_number].kind),
                    amount=money_to_pb(record.line.amount),
                    fencing_token=confirmed[record.line.card_number].fencing_token,
                    online_redeem_attempted=record.line.line_id in attempted,
                )
                for record in pending
            ],
            unlocks=_unlocks(transaction_id, all_tenders, used),
        )
        sequence = self._outbox.append(
            transaction, also=lambda conn: SaleState.forget_sale(conn, transaction_id)
        )
        for record in pending:
            done[record.line.line_id] = LineResult(
                line_id=record.line.line_id,
                card_number=record.line.card_number,
                amount=record.line.amount,
                completed_offline=True,
                online_redeem_attempted=record.line.line_id in attempted,
                balance_after=None,
                remainder_credit_memo=None,
            )
        return SaleResult(
            transaction_id=transaction_id,
            completed_offline=True,
            lines=tuple(done[record.line.line_id] for record in ordered),
            sequence_number=sequence,
        )

    def _refuse_if_completed_offline(self, transaction_id: str) -> None:
        if self._outbox.holds(transaction_id):
            raise SaleAlreadyCompleted(
                f"sale {transaction_id} was completed offline and waits for sync"
            )

    def _confirm_pending_locks(self, transaction_id: str, lines: Sequence[SaleLine]) -> bool:
        """Relock the cards of these lines whose LockCard answer was lost, to learn their
        tokens before redeeming. False when the link dropped meanwhile: the sale takes the
        offline path, which refuses the lines still pending."""
        wanted = {line.card_number for line in lines}
        for record in self._state.tenders(transaction_id):
            if record.lock_pending and not record.removed_offline and record.card_number in wanted:
                try:
                    self.add_tender(transaction_id, record.card_number)
                except HQUnavailable:
                    return False
        return True

    def _unlock_online(self, record: TenderRecord) -> bool:
        request = terminal_service_pb2.UnlockCardRequest(
            request_id=record.unlock_request_id or str(uuid.uuid4()),
            card_number=record.card_number,
            transaction_id=record.transaction_id,
            # 0 for a pending lock: HQ releases whatever this terminal holds for the sale.
            fencing_token=record.fencing_token,
        )
        try:
            self._hq.call(self._hq.stub.UnlockCard, request)
        except (LockNotHeld, CardNotFound):
            pass  # Released or taken over already: nothing of ours to release.
        except HQUnavailable:
            return False
        return True

    def _release(self, transaction_id: str, records: list[TenderRecord]) -> int | None:
        """Unlock the cards online; those out of reach go to the outbox as one unlock-only
        offline transaction. Closes the sale's local state. Returns that sequence number."""
        unreleased: list[TenderRecord] = []
        for record in records:
            try:
                if not self._unlock_online(record):
                    unreleased.append(record)
            except TerminalError as failure:
                # HQ refused the unlock now (rate limited, ...): queue it as an offline unlock,
                # which HQ applies by terminal and transaction at sync, rather than leaving
                # the card locked for the whole lease.
                _log.warning(
                    "release of a lock of sale %s queued for sync: %s", transaction_id, failure
                )
                unreleased.append(record)
        if not unreleased:
            self._state.finish_sale(transaction_id)
            return None
        transaction = offline_pb2.OfflineTransaction(
            transaction_id=transaction_id,
            completed_at=timestamp_to_pb(datetime.now(UTC)),
            parameters_version=self._parameters.current.version,
            unlocks=_unlocks(transaction_id, unreleased, set()),
        )
        return self._outbox.append(
            transaction, also=lambda conn: SaleState.forget_sale(conn, transaction_id)
        )


def _unlocks(
    transaction_id: str, records: list[TenderRecord], redeemed_cards: set[str]
) -> list[offline_pb2.OfflineUnlock]:
    return [
        offline_pb2.OfflineUnlock(
            card_number=record.card_number,
            transaction_id=transaction_id,
            # 0 for a pending lock; HQ releases by terminal and transaction at sync anyway.
            fencing_token=record.fencing_token,
        )
        for record in records
        if record.card_number not in redeemed_cards
    ]


def _online_result(line: SaleLine, blob: bytes) -> LineResult:
    response = terminal_service_pb2.RedeemResponse.FromString(blob)
    return LineResult(
        line_id=line.line_id,
        card_number=line.card_number,
        amount=line.amount,
        completed_offline=False,
        online_redeem_attempted=False,
        balance_after=money_from_pb(response.card.balance),
        remainder_credit_memo=(
            card_from_pb(response.remainder_credit_memo)
            if response.HasField("remainder_credit_memo")
            else None
        ),
    )


def _merge(stored: list[LineRecord], lines: Sequence[SaleLine]) -> list[LineRecord]:
    """What prepare_lines would return, without writing: stored lines still asked for or
    already debited, plus the new lines."""
    wanted = {line.line_id for line in lines}
    kept = [r for r in stored if r.line.line_id in wanted or r.redeem_response is not None]
    known = {record.line.line_id for record in kept}
    return kept + [
        LineRecord(line=line, request_id=str(uuid.uuid4()), attempted=False, redeem_response=None)
        for line in lines
        if line.line_id not in known
    ]


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
