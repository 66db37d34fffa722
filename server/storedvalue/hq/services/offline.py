"""Applying offline transactions exactly once (CompleteOffline, SyncOfflineBatch).

Two keys make a delivery safe to repeat. Each transaction applies once by its
transaction_id, whatever request carries it (a resent batch may be regrouped freely). And
each request is AIP-155 idempotent by its request_id, like the online calls: the same id
with the same content gets the first answer again, the same id with other content (or for
another RPC) is REQUEST_ID_REUSED and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from storedvalue.hq.domain.cards import generate_card_number
from storedvalue.hq.domain.errors import LimitExceeded, TerminalNotFound, Unauthenticated
from storedvalue.hq.domain.offline import (
    OfflineOutcome,
    OfflineRecord,
    OfflineTransaction,
    OfflineTransactionResult,
    plan_offline_batch,
)
from storedvalue.hq.domain.offline_checks import DEFAULT_ITEM_LIMITS, ItemLimits
from storedvalue.hq.domain.offline_common import (
    CommonBatchPlan,
    CommonSales,
    common_sales,
    plan_common_batch,
    sales_to_look_up,
)
from storedvalue.hq.domain.reversals import cards_a_reversal_touches, reversal_keys
from storedvalue.hq.domain.terminals import SequenceGap, Terminal, sequence_gaps
from storedvalue.hq.services.batch_order import BatchOrder
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.idempotency import RequestKey, remember, replay
from storedvalue.hq.services.parameters import parameters_as_used
from storedvalue.hq.services.throttle import UnknownCardThrottle
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Repositories

# Offline transactions in a batch above which its unit of work counts as large.
LARGE_BATCH = 8


@dataclass(frozen=True, slots=True)
class SyncLimits:
    """Documented limits on offline sync. Over a per-request one (transactions, bytes) the
    whole request is refused; over a per-item one only that transaction is rejected (kept
    for review), so no item can block the ones after it."""

    max_transactions_per_batch: int = 1000
    max_lines_per_transaction: int = DEFAULT_ITEM_LIMITS.max_lines
    max_message_bytes: int = 8 * 1024 * 1024
    max_sequence_jump: int = DEFAULT_ITEM_LIMITS.max_sequence_jump

    @property
    def per_item(self) -> ItemLimits:
        return ItemLimits(max_lines=self.max_lines_per_transaction,
                          max_sequence_jump=self.max_sequence_jump)


@dataclass(frozen=True, slots=True)
class SyncStatus:
    terminal_id: str
    highest_contiguous_sequence: int
    highest_sequence_seen: int
    gaps: tuple[SequenceGap, ...]
    last_synced_at: datetime | None


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    # A tuple, or the common path's `AppliedResults` (equal to the tuple of its results).
    results: Sequence[OfflineTransactionResult]
    status: SyncStatus


@dataclass(frozen=True, slots=True)
class AnsweredBatch:
    """What an offline request answered, kept under its request_id, compactly: the offline
    records (never changed once written) hold most of it. `items` has one letter per item:
    N, the result of the record this request wrote; A, an earlier record's result as a
    redelivery; K, a result kept here in `kept`, in order (an item rejected without a
    record: its id and sequence number stay free)."""

    items: str
    kept: tuple[OfflineTransactionResult, ...] = ()


def answered_batch(results: Sequence[OfflineTransactionResult],
                   new_records: Sequence[OfflineRecord]) -> AnsweredBatch:
    written = {record.transaction_id: record.result for record in new_records}
    letters: list[str] = []
    kept: list[OfflineTransactionResult] = []
    for result in results:
        if written.get(result.transaction_id) is result:
            letters.append("N")
        elif result.outcome is OfflineOutcome.ALREADY_APPLIED:
            letters.append("A")
        else:
            letters.append("K")
            kept.append(result)
    return AnsweredBatch(items="".join(letters), kept=tuple(kept))


def replayed_results(answer: AnsweredBatch, transactions: Sequence[OfflineTransaction],
                     records: Mapping[str, OfflineRecord]) -> tuple[OfflineTransactionResult, ...]:
    """The results `answer` stands for, rebuilt from the records of these transactions (the
    same content as when it was given: the request's fingerprint matched)."""
    kept = iter(answer.kept)
    results = []
    for letter, txn in zip(answer.items, transactions, strict=True):
        if letter == "K":
            results.append(next(kept))
        else:
            result = records[txn.transaction_id].result
            results.append(result if letter == "N" else result.as_redelivery())
    return tuple(results)


def sync_status(uow: Repositories, terminal: Terminal) -> SyncStatus:
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
        transactions: Transactions,
        *,
        limits: SyncLimits | None = None,
        clock: Clock = utc_now,
        new_card_number: Callable[[], str] = generate_card_number,
        throttle: UnknownCardThrottle | None = None,
        common_path: bool = True,
    ) -> None:
        """`throttle`: the unknown-card limit, shared with the CardService of the process
        (one limit per till across online and offline lookups). `common_path`: apply a
        batch of common-case transactions in bulk (`plan_common_batch`); off, every batch
        goes through `plan_offline_batch` (the same outcome, for the tests comparing both)."""
        self._transactions = transactions
        self.limits = limits or SyncLimits()
        self._clock = clock
        self._new_card_number = new_card_number
        self._throttle = throttle or UnknownCardThrottle()
        self._common_path = common_path
        self._order = BatchOrder()

    async def sync(self, *, key: RequestKey, terminal_id: str,
                   transactions: Sequence[OfflineTransaction], in_order: bool = True,
                   sales: CommonSales | Literal[False] | None = None) -> SyncOutcome:
        """Apply a terminal's offline transactions in order, each all-or-nothing and exactly
        once, in one database transaction; return one result per item and the terminal's
        sequence status. Only the documented size limits and a reused request id refuse the
        whole request; a bad item is rejected and kept for review alone. A request already
        answered (same `key`, same content) gets the same results again, with the sequence
        status as it is now. `in_order`: wait for the terminal's batches of lower sequence
        numbers that are on their way (see `batch_order`); CompleteOffline's single
        transaction does not. `sales`: the same transactions as `CommonSales` when they
        have the common case's shape, False when they have not, as the batch decoder tells
        (then `transactions` is read only when the common path does not take the batch, and
        may decode them only then); None: found here from `transactions`."""
        key.validate()
        self._check_limits(transactions)
        budget = self._throttle.remaining(terminal_id)
        lookups = 0
        if not self._common_path or sales is False:
            sales = None
        elif sales is None:
            sales = common_sales(transactions)

        def work(uow: Repositories) -> SyncOutcome:
            nonlocal lookups
            now = self._clock()
            # Lock order: terminal, then cards by number (the storage contract).
            terminal = uow.terminals.get_for_update(terminal_id)
            if terminal is None:
                raise TerminalNotFound(terminal_id)
            if terminal.revoked:  # revoked since its credential was looked up
                raise Unauthenticated("unknown or revoked credential")
            answered = replay(uow, key, AnsweredBatch)  # REQUEST_ID_REUSED for other content
            if answered is not None:
                batch = list(transactions)
                recorded = uow.offline.get_many(
                    terminal_id, {txn.transaction_id for txn in batch
                                  if "\x00" not in txn.transaction_id})
                return SyncOutcome(results=replayed_results(answered, batch, recorded),
                                   status=sync_status(uow, terminal))
            if sales is not None:
                outcome = self._apply_common(uow, key, terminal, sales, transactions, now)
                if outcome is not None:
                    return outcome
            batch = list(transactions)
            # No key with a NUL is looked up (PostgreSQL refuses one in a string; the plan
            # rejects those items). A cheap test: the plan checks every field anyway.
            numbers = {line.card_number for txn in batch for line in txn.redeem_lines}
            numbers.update(unlock.card_number for txn in batch for unlock in txn.unlocks)
            identified = [txn for txn in batch if "\x00" not in txn.transaction_id]
            reversed_keys = {key for key in reversal_keys(terminal_id, identified)
                             if "\x00" not in key[2]}
            if reversed_keys:
                # A reversal may move value back from a remainder memo: lock it with the rest.
                numbers.update(r.card_number for txn in batch for r in txn.reversals)
                for line in uow.redemptions.get_many(reversed_keys).values():
                    numbers.update(cards_a_reversal_touches(line))
            cards = uow.cards.get_many_for_update(
                [number for number in numbers if "\x00" not in number])
            txn_ids = {txn.transaction_id for txn in identified}
            known = uow.offline.get_many(terminal_id, txn_ids)
            owners = uow.offline.sequence_owners(
                terminal_id, {txn.sequence_number for txn in identified}
            )
            line_keys = {
                (terminal_id, txn.transaction_id, line.line_id)
                for txn in identified
                for line in txn.redeem_lines
                if "\x00" not in line.line_id
            }
            redemptions = uow.redemptions.get_many(line_keys | reversed_keys)
            if reversed_keys and any(
                number not in cards
                for key in reversed_keys if key in redemptions
                for number in cards_a_reversal_touches(redemptions[key])
            ):
                # A line was redeemed online between the two reads (PostgreSQL): again.
                raise ConcurrentUpdate("a reversed line was redeemed meanwhile")
            # What the terminal applied: its store's parameters at each version it names.
            parameters = parameters_as_used(
                uow, terminal.store_id, (txn.parameters_version for txn in batch)
            )
            grants = uow.lock_history.for_sales(terminal_id, txn_ids)
            plan = plan_offline_batch(
                terminal_id=terminal_id,
                transactions=batch,
                cards=cards,
                known=known,
                sequence_owners=owners,
                redemptions=redemptions,
                parameters=parameters,
                lock_grants=grants,
                highest_sequence_seen=terminal.highest_sequence_seen,
                unknown_card_budget=budget,
                now=now,
                new_card_number=self._new_card_number,
                limits=self.limits.per_item,
            )
            uow.cards.save(cards.values())
            if plan.released_by_holder:
                uow.lock_history.mark_released_by_holder(plan.released_by_holder, now)
            if plan.new_cards:
                uow.cards.add(plan.new_cards)
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
            remember(uow, key, answered_batch(plan.results, plan.records), now)
            lookups = plan.unknown_card_lookups
            return SyncOutcome(results=tuple(plan.results), status=_status(terminal, gaps))

        # A batch of more than a few transactions takes milliseconds: off the event loop.
        numbers = ([] if not in_order else sales.sequence_numbers if sales is not None
                   else [txn.sequence_number for txn in transactions])
        async with self._order.turn(terminal_id, numbers):
            outcome = await self._transactions.write(
                work, large=len(transactions) > LARGE_BATCH)
        self._throttle.record_misses(terminal_id, lookups)
        return outcome

    def _apply_common(self, uow: Repositories, key: RequestKey, terminal: Terminal,
                      sales: CommonSales, transactions: Sequence[OfflineTransaction],
                      now: datetime) -> SyncOutcome | None:
        """Apply a batch in which every transaction is the common case (see
        `storedvalue.hq.domain.offline_common`) in bulk, or change nothing and return None
        (as soon as one is not: the general path then plans the whole batch)."""
        terminal_id = terminal.terminal_id
        txn_ids = sales.transaction_ids
        if ("\x00" in "".join(txn_ids) or "\x00" in "".join(sales.line_ids)
                or "\x00" in "".join(sales.card_numbers)):
            return None  # rejected: not the common case (and no key with a NUL is read)
        numbers = set(sales.card_numbers)
        if len(numbers) != len(txn_ids):
            return None
        cards = uow.cards.balances_for_update(numbers, terminal_id)
        if len(cards) != len(numbers):
            return None
        # No record holds a sequence number above the highest seen (a record is written
        # with its number seen): a batch above it needs no lookup of their owners.
        seen = terminal.highest_sequence_seen
        if min(sales.sequence_numbers, default=seen + 1) <= seen and (
                uow.offline.sequence_owners(terminal_id, set(sales.sequence_numbers))):
            return None

        def apply() -> CommonBatchPlan | None:
            plan = plan_common_batch(
                terminal_id=terminal_id,
                sales=sales,
                transactions=transactions,
                cards=cards,
                known={},
                sequence_owners={},
                redemptions={},
                parameters=parameters_as_used(
                    uow, terminal.store_id, sales.parameters_versions),
                sale_locks=uow.lock_history.sale_locks(
                    terminal_id, sales_to_look_up(sales, cards)),
                highest_sequence_seen=seen,
                now=now,
                limits=self.limits.per_item,
            )
            if plan is None:
                return None
            # The entries first: on SQLite the balances' UPDATE then also sets each card's
            # last entry, the batch's (storage.card_repositories.JournaledDebits).
            uow.journal.append_offline_debits(terminal_id, plan.debits, now)
            uow.cards.set_balances(plan.balances)
            uow.redemptions.add_offline_debits(terminal_id, plan.debits, now)
            uow.offline.add_offline_debits(terminal_id, plan.debits, now)
            return plan

        # Only for transactions and lines not stored yet (a redelivery, or a sale's id HQ
        # knows from an online call, goes the general way).
        plan = uow.offline.if_first_delivery(terminal_id, txn_ids, sales.line_ids, apply)
        if plan is None:
            return None
        sequences = sales.sequence_numbers
        # Without a gap before (every number up to the mark received, none above it: no
        # record is above the highest number seen), the numbers above the mark are this
        # batch's: no need to read them back.
        gapless = seen == terminal.highest_contiguous_sequence
        terminal.record_sequences(sequences, now=now)
        above = sequences if gapless else uow.offline.sequences_above(
            terminal_id, terminal.highest_contiguous_sequence)
        gaps = terminal.advance_contiguous(above)
        uow.terminals.save(terminal)
        remember(uow, key, AnsweredBatch(items="N" * len(plan.debits)), now)
        return SyncOutcome(results=plan.results, status=_status(terminal, gaps))

    def _check_limits(self, transactions: Sequence[OfflineTransaction]) -> None:
        limits = self.limits
        if len(transactions) > limits.max_transactions_per_batch:
            raise LimitExceeded(
                "max_transactions_per_batch", limits.max_transactions_per_batch, len(transactions)
            )
