"""The sync agent: sends the outbox to HQ, oldest first, in bounded batches.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with
capped exponential backoff and jitter; anything else stops the run and is surfaced, never
retried blindly. An item leaves the outbox only in the commit that records HQ's answer.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import operator
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

from ._backoff import Backoff
from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._errors import (
    RETRYABLE_SYNC_CODES,
    HandshakeFailed,
    HQUnavailable,
    LimitExceeded,
    TerminalError,
    UnexpectedError,
)
from ._hq_client import HQClient
from ._hq_records import SyncItemResult, UsualResults
from ._model import (
    SyncOutcome,
    SyncProgress,
    SyncSummary,
)
from ._outbox import Outbox, PendingItem
from ._parameters import ParametersCache
from ._sale_book import SaleBook
from ._tenders import Tenders

_log = logging.getLogger(__name__)

_OUTCOME_FIELD = {
    SyncOutcome.APPLIED: "applied",
    SyncOutcome.ALREADY_APPLIED: "already_applied",
    SyncOutcome.APPLIED_WITH_EXCEPTION: "applied_with_exception",
    SyncOutcome.REJECTED: "rejected",
}


_ITEM_FRAMING = 6
"""Bytes a transaction takes in the request beside its own: its tag and length."""
_REQUEST_ID_ROOM = 64
"""Bytes the request id takes, with its tag and length (a UUID: 38)."""
_payload = operator.attrgetter("payload")
_transaction_id = operator.attrgetter("transaction_id")


@dataclass
class _Tally:
    sent: int = 0
    applied: int = 0
    already_applied: int = 0
    applied_with_exception: int = 0
    rejected: int = 0


class SyncAgent:
    def __init__(
        self,
        *,
        hq: HQClient,
        connectivity: Connectivity,
        outbox: Outbox,
        book: SaleBook,
        tenders: Tenders,
        parameters: ParametersCache,
        refresh_parameters: Callable[[], None],
        config: TerminalConfig,
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._outbox = outbox
        self._book = book
        self._tenders = tenders
        self._parameters = parameters
        self._refresh_parameters = refresh_parameters
        self._config = config
        self._run_lock = threading.Lock()
        self._trigger = threading.Event()
        self._stopping = threading.Event()
        self._progress_listeners: list[Callable[[SyncProgress], None]] = []
        self._after_run: list[Callable[[], object]] = []
        self.last_summary: SyncSummary | None = None
        self._thread = threading.Thread(
            target=self._loop, name="storedvalue-terminal-sync", daemon=True
        )

    def add_progress_listener(self, listener: Callable[[SyncProgress], None]) -> None:
        self._progress_listeners.append(listener)

    def after_run(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` after every run that sent something (the status report, so that
        HQ sees the outbox emptied)."""
        self._after_run.append(callback)

    def start(self) -> None:
        if self._config.sync_automatically:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._trigger.set()
        if self._thread.is_alive():
            self._thread.join()

    def trigger(self) -> None:
        """Ask the background agent for a sync run (no-op while OFFLINE)."""
        self._trigger.set()

    def sync_now(self) -> SyncSummary:
        """Run a sync in the calling thread (waits for a background run to finish first)."""
        with self._run_lock:
            summary = self._run()
            self.last_summary = summary
        if summary.sent:
            for callback in self._after_run:
                try:
                    callback()
                except Exception:
                    _log.exception("after-sync callback failed")
        return summary

    def _loop(self) -> None:
        while True:
            self._trigger.wait()
            self._trigger.clear()
            if self._stopping.is_set():
                return
            if not self._connectivity.online:
                continue
            summary = self.sync_now()
            error = summary.error
            if (
                # A TLS problem is fixed at HQ or in the till's files, both unannounced: the
                # agent looks again as it would after a transient failure.
                isinstance(error, TerminalError)
                and (error.code in RETRYABLE_SYNC_CODES or isinstance(error, HandshakeFailed))
                and self._connectivity.online
                and self._stopping.wait(self._config.sync_max_backoff_s) is False
            ):
                self._trigger.set()

    def _batch_size(self) -> int:
        limits = self._parameters.sync_limits
        if limits is not None and limits.max_transactions_per_batch > 0:
            return min(self._config.sync_batch_size, limits.max_transactions_per_batch)
        return self._config.sync_batch_size

    def _next_batch(self, after: int = 0) -> list[PendingItem]:
        """The oldest items above sequence number ``after``: as many as a batch takes, and
        no more than fit HQ's largest request (one item at least)."""
        items = self._outbox.oldest(self._batch_size(), after=after)
        limits = self._parameters.sync_limits
        if limits is None or limits.max_message_bytes <= 0:
            return items
        room = limits.max_message_bytes - _REQUEST_ID_ROOM
        # Summed in C first: the usual batch fits, and is then not walked item by item.
        if sum(map(len, map(_payload, items))) + _ITEM_FRAMING * len(items) <= room:
            return items
        for index, item in enumerate(items):
            room -= len(item.payload) + _ITEM_FRAMING
            if room < 0:
                return items[:max(index, 1)]
        return items

    def _in_flight(self) -> int:
        """How many batches to keep in flight: the configured number, as long as HQ's
        ``max_sequence_jump`` covers them all (so that even an HQ that applied a later batch
        first would accept its sequence numbers); one when HQ did not say."""
        wanted = self._config.sync_batches_in_flight
        limits = self._parameters.sync_limits
        if wanted == 1 or limits is None or limits.max_sequence_jump <= 0:
            return 1
        return max(1, min(wanted, limits.max_sequence_jump // self._batch_size()))

    def _run(self) -> SyncSummary:
        started = time.monotonic()
        tally = _Tally()
        error: Exception | None = None
        total = len(self._outbox)
        refreshed_limits = False
        depth = self._in_flight()
        # Up to `depth` batches are in flight: HQ applies a till's batches in sequence order
        # (a later one that arrives first waits), and reads the next batch while it applies
        # one. The till's own work overlaps HQ's too: it records the answers, in order, and
        # reads the next batch while HQ works. An answer recorded late, or dropped after an
        # error, only means a resend: HQ answers that ALREADY_APPLIED.
        in_flight: collections.deque[tuple[list[PendingItem], Future[Sequence[SyncItemResult]]]]
        in_flight = collections.deque()
        answered: tuple[list[PendingItem], Sequence[SyncItemResult]] | None = None
        with ThreadPoolExecutor(self._config.sync_batches_in_flight,
                                thread_name_prefix="storedvalue-terminal-sync-call") as hq:
            upcoming = self._next_batch()
            while True:
                while (upcoming and len(in_flight) < depth and error is None
                       and not self._stopping.is_set()):
                    in_flight.append((upcoming, hq.submit(self._send, upcoming)))
                    upcoming = self._next_batch(after=upcoming[-1].sequence_number)
                if answered is not None:
                    total = self._record(*answered, tally, total, started)
                    answered = None
                if not in_flight:
                    break
                items, call = in_flight.popleft()
                try:
                    results = call.result()
                except LimitExceeded as exceeded:
                    if error is not None:
                        continue
                    if refreshed_limits:
                        error = exceeded
                        continue
                    refreshed_limits = True
                    _wait_out(in_flight)  # sent with the old limits: sent again below
                    try:
                        self._refresh_parameters()
                    except TerminalError as failure:
                        error = failure
                        continue
                    depth = min(depth, self._in_flight())
                    upcoming = self._next_batch()
                    continue
                except TerminalError as failure:
                    error = error or failure
                    continue
                if error is not None:
                    continue  # a batch before this one failed: its answer is not recorded
                answered = (items, results)
                if len(results) < len(items):
                    error = UnexpectedError("HQ answered an offline transaction with no outcome")
        if error is None and not self._stopping.is_set():
            error = self._tenders.release_removed_offline()
        self._book.prune()
        if error is not None:
            _log.warning("sync stopped: %s", error)
        return SyncSummary(
            sent=tally.sent,
            applied=tally.applied,
            already_applied=tally.already_applied,
            applied_with_exception=tally.applied_with_exception,
            rejected=tally.rejected,
            remaining=len(self._outbox),
            elapsed_s=time.monotonic() - started,
            error=error,
        )

    def _record(self, items: list[PendingItem], results: Sequence[SyncItemResult], tally: _Tally,
                total: int, started: float) -> int:
        """Take the items HQ answered out of the outbox, with their results, in one commit;
        count them and report progress. Returns the run's total, updated."""
        acknowledged = items[: len(results)]
        if not acknowledged:
            return total
        counts = [item.answers_owed for item in acknowledged]
        owed = None if None in counts else sum(cast("list[int]", counts))
        self._outbox.acknowledge(
            acknowledged, results,
            also=functools.partial(SaleBook.record_sync, results=results, answers_owed=owed),
        )
        if isinstance(results, UsualResults):
            self._book.announce(results.transaction_ids)
            tally.applied += len(results)
        else:
            self._book.announce(result.transaction_id for result in results)
            # Counted by identity (list.count): an Enum member hashes in Python, once a result.
            outcomes = [result.outcome for result in results]
            for outcome, field in _OUTCOME_FIELD.items():
                count = outcomes.count(outcome)
                if count:
                    setattr(tally, field, getattr(tally, field) + count)
        tally.sent += len(results)
        # Sequence numbers are assigned in order and leave the outbox oldest first: those
        # above the last acknowledged one are what is left (no COUNT(*) per batch).
        left = self._outbox.last_sequence_number() - acknowledged[-1].sequence_number
        total = max(total, tally.sent + left)
        self._report_progress(tally.sent, total, started)
        return total

    def _send(self, items: list[PendingItem]) -> Sequence[SyncItemResult]:
        """One batch, resent as is (same request id) after transient failures. Returns the
        results HQ gave, cut at the first one whose outcome this library does not know."""
        request_id = str(uuid.uuid4())
        payloads = [item.payload for item in items]
        backoff = Backoff(
            initial_s=self._config.sync_initial_backoff_s,
            maximum_s=self._config.sync_max_backoff_s,
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                results = self._hq.sync_batch(request_id=request_id, payloads=payloads)
                break
            except TerminalError as failure:
                if failure.code not in RETRYABLE_SYNC_CODES:
                    raise
                if attempt >= self._config.sync_max_attempts:
                    if isinstance(failure, HQUnavailable):
                        self._hq.report_link_down("sync could not reach HQ")
                    raise
                if self._stopping.wait(backoff.next_delay()):
                    raise
        if isinstance(results, UsualResults):
            # Each the usual APPLIED: compared as one list (in C) while all are for their item.
            answered = results[: len(items)]
            if answered.transaction_ids == list(map(_transaction_id, items[: len(answered)])):
                return answered
        for index, result in enumerate(results[: len(items)]):
            if (
                result.transaction_id != items[index].transaction_id
                or result.outcome is None  # an outcome this library does not know
            ):
                return results[:index]
        return results[: len(items)]

    def _report_progress(self, done: int, total: int, started: float) -> None:
        elapsed = time.monotonic() - started
        progress = SyncProgress(
            done=done,
            total=total,
            elapsed_s=elapsed,
            rate_per_s=done / elapsed if elapsed > 0 else 0.0,
        )
        for listener in self._progress_listeners:
            try:
                listener(progress)
            except Exception:
                _log.exception("sync progress listener failed")


def _wait_out(calls: collections.deque[tuple[list[PendingItem], Future[Sequence[SyncItemResult]]]]
              ) -> None:
    """Wait for the calls in flight to end, dropping their answers and errors."""
    while calls:
        _items, call = calls.popleft()
        with contextlib.suppress(TerminalError):
            call.result()
