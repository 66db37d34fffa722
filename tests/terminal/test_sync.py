"""The sync agent: oldest first, bounded batches, retries only what is transient."""

from __future__ import annotations

import grpc

from storedvalue.terminal import PermissionDenied, SyncOutcome, SyncProgress, TerminalConfig

from .conftest import MANUAL_SYNC, TerminalFactory, sell_offline, wait_until
from .fake_hq import FakeHQ


def test_sync_sends_oldest_first_in_batches_no_larger_than_hq_allows(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    hq.state.limits.max_transactions_per_batch = 3
    terminal = make_terminal(config=MANUAL_SYNC)
    numbers = sell_offline(hq, terminal, 7)
    progress: list[SyncProgress] = []
    terminal.on_sync_progress(progress.append)
    summary = terminal.sync_now()
    assert (summary.sent, summary.applied, summary.remaining, summary.error) == (7, 7, 0, None)
    assert hq.state.sync_batch_sizes == [3, 3, 1]
    assert hq.state.sequences["T1"] == [1, 2, 3, 4, 5, 6, 7]
    assert [(p.done, p.total) for p in progress] == [(3, 7), (6, 7), (7, 7)]
    assert all(p.rate_per_s > 0 for p in progress)
    assert all(hq.card(n).balance == 900 and hq.card(n).lock is None for n in numbers)


def test_configured_batch_size_bounds_batches_below_hq_limit(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    config = TerminalConfig(
        call_timeout_s=0.5,
        probe_initial_backoff_s=0.02,
        probe_max_backoff_s=0.2,
        sync_batch_size=2,
        sync_automatically=False,
    )
    terminal = make_terminal(config=config)
    sell_offline(hq, terminal, 5)
    terminal.sync_now()
    assert hq.state.sync_batch_sizes == [2, 2, 1]


def test_transient_sync_failures_are_retried_and_nothing_is_applied_twice(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    numbers = sell_offline(hq, terminal, 4)
    hq.state.sync_failures.extend([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
    hq.state.sync_answers_to_drop = 1
    summary = terminal.sync_now()
    assert summary.error is None
    assert summary.remaining == 0
    assert summary.already_applied == 4, "the resend after a lost answer is recognised"
    assert hq.state.sync_calls == 4
    assert hq.state.sequences["T1"] == [1, 2, 3, 4]
    assert all(hq.card(n).balance == 900 for n in numbers)


def test_non_transient_sync_failure_is_surfaced_and_not_retried(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 3)
    hq.state.sync_failures.append(grpc.StatusCode.PERMISSION_DENIED)
    summary = terminal.sync_now()
    assert isinstance(summary.error, PermissionDenied)
    assert (summary.sent, summary.remaining) == (0, 3)
    assert hq.state.sync_calls == 1
    assert len(terminal.outbox()) == 3
    assert terminal.last_sync == summary


def test_rejected_transaction_leaves_the_outbox_and_is_reported(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    numbers = sell_offline(hq, terminal, 2)
    del hq.state.cards[numbers[0]]
    summary = terminal.sync_now()
    assert (summary.rejected, summary.applied, summary.remaining) == (1, 1, 0)
    (report,) = terminal.sync_reports()
    assert (report.outcome, report.reason) == (SyncOutcome.REJECTED, "CARD_NOT_FOUND")
    assert report.transaction_id == "sale-0"


def test_lower_hq_limit_is_learned_from_limit_exceeded_and_the_batch_resent_smaller(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 5)
    hq.state.limits.max_transactions_per_batch = 2
    summary = terminal.sync_now()
    assert (summary.error, summary.remaining) == (None, 0)
    assert hq.state.sync_batch_sizes == [2, 2, 1]


def test_background_agent_syncs_on_reconnection_without_being_asked(
    hq: FakeHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal()
    numbers = sell_offline(hq, terminal, 3)
    wait_until(lambda: terminal.outbox() == ())
    assert all(hq.card(n).balance == 900 for n in numbers)
    assert hq.state.sequences["T1"] == [1, 2, 3]
