"""The sync agent: sends the outbox to HQ, oldest first, in bounded batches.

Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED) are retried with
capped exponential backoff and jitter; anything else stops the run and is surfaced, never
retried blindly. An item leaves the outbox only in the commit that records HQ's answer.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from storedvalue.v1 import offline_pb2, terminal_service_pb2

from ._backoff import Backoff
from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._errors import (
    RETRYABLE_SYNC_CODES,
    CardNotFound,
    HQUnavailable,
    LimitExceeded,
    LockNotHeld,
    TerminalError,
    UnexpectedError,
)
from ._hq_client import HQClient
from ._model import ConnectivityChange, ConnectivityState, SyncProgress, SyncSummary
from ._outbox import Outbox, PendingItem
from ._parameters import ParametersCache
from ._sale_state import SaleState

_log = logging.getLogger(__name__)

_OUTCOME_FIELD = {
    offline_pb2.OFFLINE_OUTCOME_APPLIED: "applied",
    offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED: "already_applied",
    offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION: "applied_with_exception",
    offline_pb2.OFFLINE_OUTCOME_REJECTED: "rejected",
}


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
        sale_state: SaleState,
        parameters: ParametersCache,
        refresh_parameters: Callable[[], None],
        config: TerminalConfig,
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._outbox = outbox
        self._sale_state = sale_state
        self._parameters = parameters
        self._refresh_parameters = refresh_parameters
        self._config = config
        self._run_lock = threading.Lock()
        self._trigger = threading.Event()
        self._stopping = threading.Event()
        self._progress_listeners: list[Callable[[SyncProgress], None]] = []
        self.last_summary: SyncSummary | None = None
        self._thread = threading.Thread(
            target=self._loop, name="storedvalue-terminal-sync", daemon=True
        )

    def add_progress_listener(self, listener: Callable[[SyncProgress], None]) -> None:
        self._progress_listeners.append(listener)

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

    def on_connectivity(self, change: ConnectivityChange) -> None:
        if change.state is ConnectivityState.ONLINE:
            self.trigger()

    def sync_now(self) -> SyncSummary:
        """Run a sync in the calling thread (waits for a background run to finish first)."""
        with self._run_lock:
            summary = self._run()
            self.last_summary = summary
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
                isinstance(error, TerminalError)
                and error.code in RETRYABLE_SYNC_CODES
                and self._connectivity.online
                and self._stopping.wait(self._config.sync_max_backoff_s) is False
            ):
                self._trigger.set()

    def _batch_size(self) -> int:
        limits = self._parameters.sync_limits
        if limits is not None and limits.max_transactions_per_batch > 0:
            return min(self._config.sync_batch_size, limits.max_transactions_per_batch)
        return self._config.sync_batch_size

    def _run(self) -> SyncSummary:
        started = time.monotonic()
        tally = _Tally()
        error: Exception | None = None
        total = len(self._outbox)
        refreshed_limits = False
        while not self._stopping.is_set():
            items = self._outbox.oldest(self._batch_size())
            if not items:
                break
            try:
                results = self._send(items)
            except LimitExceeded as exceeded:
                if refreshed_limits:
                    error = exceeded
                    break
                refreshed_limits = True
                try:
                    self._refresh_parameters()
                except TerminalError as failure:
                    error = failure
                    break
                continue
            except TerminalError as failure:
                error = failure
                break
            acknowledged = items[: len(results)]
            self._outbox.acknowledge(acknowledged, results)
            for outcome, count in Counter([result.outcome for result in results]).items():
                field = _OUTCOME_FIELD[outcome]
                setattr(tally, field, getattr(tally, field) + count)
            tally.sent += len(results)
            if len(results) < len(items):
                error = UnexpectedError("HQ answered an offline transaction with no outcome")
                break
            # Sequence numbers are assigned in order and leave the outbox oldest first: those
            # above the last acknowledged one are what is left (no COUNT(*) per batch).
            left = self._outbox.last_sequence_number() - acknowledged[-1].sequence_number
            total = max(total, tally.sent + left)
            self._report_progress(tally.sent, total, started)
        if error is None and not self._stopping.is_set():
            error = self._release_pending_unlocks()
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

    def _send(self, items: list[PendingItem]) -> list[offline_pb2.OfflineTransactionResult]:
        """One batch, resent as is (same request id) after transient failures. Returns the
        results HQ gave, cut at the first one whose outcome this library does not know."""
        request = terminal_service_pb2.SyncOfflineBatchRequest(request_id=str(uuid.uuid4()))
        for item in items:
            request.transactions.add().MergeFromString(item.payload)
        backoff = Backoff(
            initial_s=self._config.sync_initial_backoff_s,
            maximum_s=self._config.sync_max_backoff_s,
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._hq.call(
                    self._hq.stub.SyncOfflineBatch,
                    request,
                    timeout_s=self._config.sync_call_timeout_s,
                    report_transient=False,
                )
                break
            except TerminalError as failure:
                if failure.code not in RETRYABLE_SYNC_CODES:
                    raise
                if attempt >= self._config.sync_max_attempts:
                    if isinstance(failure, HQUnavailable):
                        self._connectivity.report_failure("sync could not reach HQ")
                    raise
                if self._stopping.wait(backoff.next_delay()):
                    raise
        results = list(response.results)
        for index, result in enumerate(results[: len(items)]):
            if (
                result.transaction_id != items[index].transaction_id
                or result.outcome not in _OUTCOME_FIELD
            ):
                return results[:index]
        return results[: len(items)]

    def _release_pending_unlocks(self) -> TerminalError | None:
        for record in self._sale_state.pending_unlocks():
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
                pass  # Released or taken over already: nothing left to release.
            except TerminalError as failure:
                return failure
            self._sale_state.forget_tender(
                record.transaction_id, record.card_number, only_if_removed_offline=True
            )
        return None

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
