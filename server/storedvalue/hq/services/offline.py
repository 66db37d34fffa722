"""Applying offline transactions exactly once (CompleteOffline, SyncOfflineBatch)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from storedvalue.hq.domain.cards import generate_card_number
from storedvalue.hq.domain.errors import LimitExceeded, TerminalNotFound
from storedvalue.hq.domain.offline import (
    OfflineTransaction,
    OfflineTransactionResult,
    plan_offline_batch,
    validate_offline_envelope,
)
from storedvalue.hq.domain.reversals import cards_a_reversal_touches, reversal_keys
from storedvalue.hq.domain.terminals import SequenceGap, Terminal, sequence_gaps
from storedvalue.hq.services.cards import add_new_cards, flush
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.transactions import run_in_transaction
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Storage, UnitOfWork


@dataclass(frozen=True, slots=True)
class SyncLimits:
    """Documented limits on offline sync; over one the whole request is refused."""

    max_transactions_per_batch: int = 1000
    max_lines_per_transaction: int = 200
    max_message_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SyncStatus:
    terminal_id: str
    highest_contiguous_sequence: int
    highest_sequence_seen: int
    gaps: tuple[SequenceGap, ...]
    last_synced_at: datetime | None


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    results: tuple[OfflineTransactionResult, ...]
    status: SyncStatus


def sync_status(uow: UnitOfWork, terminal: Terminal) -> SyncStatus:
    above = uow.offline.sequences_above(terminal.terminal_id, terminal.highest_contiguous_sequence)
    return _status(terminal, sequence_gaps(terminal.highest_contiguous_sequence, above))


def _status(terminal: Terminal, gaps: Iterable[SequenceGap]) -> SyncStatus:
    return SyncStatus(
        terminal_id=terminal.terminal_id,
        highest_contiguous_sequence=terminal.highest_contiguous_sequence,
        highest_sequence_seen=terminal.highest_sequence_seen,
        gaps=tuple(gaps),
        last_synced_at=terminal.last_synced_at,
    )


class OfflineService:
    def __init__(
        self,
        storage: Storage,
        *,
        limits: SyncLimits | None = None,
        clock: Clock = utc_now,
        new_card_number: Callable[[], str] = generate_card_number,
    ) -> None:
        self._storage = storage
        self.limits = limits or SyncLimits()
        self._clock = clock
        self._new_card_number = new_card_number

    def sync(self, *, terminal_id: str, transactions: Sequence[OfflineTransaction]
             ) -> SyncOutcome:
        """Apply a terminal's offline transactions in order, each all-or-nothing and exactly
        once, in one database transaction; return one result per item and the terminal's
        sequence status. Limits and unidentifiable items refuse the whole batch."""
        self._check_limits(transactions)
        batch = list(transactions)

        def work(uow: UnitOfWork) -> SyncOutcome:
            now = self._clock()
            # Lock order: terminal, then cards by number (the storage contract).
            terminal = uow.terminals.get_for_update(terminal_id)
            if terminal is None:
                raise TerminalNotFound(terminal_id)
            numbers = {line.card_number for txn in batch for line in txn.redeem_lines}
            numbers.update(unlock.card_number for txn in batch for unlock in txn.unlocks)
            reversed_keys = reversal_keys(terminal_id, batch)
            if reversed_keys:
                # A reversal may move value back from a remainder memo: lock it with the rest.
                numbers.update(r.card_number for txn in batch for r in txn.reversals)
                for line in uow.redemptions.get_many(reversed_keys).values():
                    numbers.update(cards_a_reversal_touches(line))
            cards = uow.cards.get_many_for_update(numbers)
            txn_ids = {txn.transaction_id for txn in batch}
            known = uow.offline.get_many(terminal_id, txn_ids)
            owners = uow.offline.sequence_owners(
                terminal_id, {txn.sequence_number for txn in batch}
            )
            line_keys = {
                (terminal_id, txn.transaction_id, line.line_id)
                for txn in batch
                for line in txn.redeem_lines
            }
            redemptions = uow.redemptions.get_many(line_keys | reversed_keys)
            if reversed_keys and any(
                number not in cards
                for key in reversed_keys if key in redemptions
                for number in cards_a_reversal_touches(redemptions[key])
            ):
                # A line was redeemed online between the two reads (PostgreSQL): again.
                raise ConcurrentUpdate("a reversed line was redeemed meanwhile")
            parameters = uow.parameters.get_versions({txn.parameters_version for txn in batch})
            plan = plan_offline_batch(
                terminal_id=terminal_id,
                transactions=batch,
                cards=cards,
                known=known,
                sequence_owners=owners,
                redemptions=redemptions,
                parameters=parameters,
                now=now,
                new_card_number=self._new_card_number,
            )
            flush(uow, list(cards.values()))
            if plan.new_cards:
                add_new_cards(uow, plan.new_cards)
            if plan.redemptions:
                uow.redemptions.add(plan.redemptions)
            if plan.reversed_redemptions:
                uow.redemptions.mark_reversed(plan.reversed_redemptions)
            if plan.exceptions:
                uow.exceptions.add(plan.exceptions)
            if plan.records:
                uow.offline.add(plan.records)
            terminal.record_sequences((r.sequence_number for r in plan.records), now=now)
            above = uow.offline.sequences_above(
                terminal_id, terminal.highest_contiguous_sequence
            )
            gaps = terminal.advance_contiguous(above)
            uow.terminals.save(terminal)
            return SyncOutcome(results=tuple(plan.results), status=_status(terminal, gaps))

        return run_in_transaction(self._storage, work)

    def _check_limits(self, transactions: Sequence[OfflineTransaction]) -> None:
        limits = self.limits
        if len(transactions) > limits.max_transactions_per_batch:
            raise LimitExceeded(
                "max_transactions_per_batch", limits.max_transactions_per_batch, len(transactions)
            )
        for index, txn in enumerate(transactions):
            validate_offline_envelope(txn, index)
            lines = len(txn.redeem_lines) + len(txn.unlocks) + len(txn.reversals)
            if lines > limits.max_lines_per_transaction:
                raise LimitExceeded(
                    "max_lines_per_transaction", limits.max_lines_per_transaction, lines
                )
