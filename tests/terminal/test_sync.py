"""The sync agent: oldest first, bounded batches, retries only what is transient."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from in_process_hq import ANSWER_DROPPED, LARGE_ANSWER, fail

from storedvalue.hq.services.offline import SyncLimits
from storedvalue.terminal import (
    ConnectivityState,
    LineState,
    PermissionDenied,
    SaleLine,
    SyncOutcome,
    SyncProgress,
    TerminalConfig,
)
from storedvalue.v1 import offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, eur, sell_offline, wait_until


def test_sync_sends_oldest_first_in_batches_no_larger_than_hq_allows(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    hq.restart(sync_limits=SyncLimits(max_transactions_per_batch=3))
    terminal = make_terminal(config=MANUAL_SYNC)
    numbers = sell_offline(hq, terminal, 7)
    progress: list[SyncProgress] = []
    terminal.on_sync_progress(progress.append)
    summary = terminal.sync_now()
    assert (summary.sent, summary.applied, summary.remaining, summary.error) == (7, 7, 0, None)
    assert hq.batch_sizes() == [3, 3, 1]
    assert hq.synced_through("T1") == 7
    assert [(p.done, p.total) for p in progress] == [(3, 7), (6, 7), (7, 7)]
    assert all(p.rate_per_s > 0 for p in progress)
    assert all(hq.card(n).balance == 900 and hq.card(n).lock is None for n in numbers)


def test_configured_batch_size_bounds_batches_below_hq_limit(
    hq: StoreHQ, make_terminal: TerminalFactory
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
    assert hq.batch_sizes() == [2, 2, 1]


def test_transient_sync_failures_are_retried_and_nothing_is_applied_twice(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    numbers = sell_offline(hq, terminal, 4)
    hq.link.script(
        "SyncOfflineBatch",
        fail(grpc.StatusCode.UNAVAILABLE),
        fail(grpc.StatusCode.RESOURCE_EXHAUSTED),
        ANSWER_DROPPED,
    )
    summary = terminal.sync_now()
    assert summary.error is None
    assert summary.remaining == 0
    # The resend after the lost answer carries the batch's request id: HQ gives the answer
    # that was lost (AIP-155), not a second application.
    assert (summary.applied, summary.already_applied) == (4, 0)
    assert hq.link.calls("SyncOfflineBatch") == 4
    assert len({request.request_id for request in hq.link.requests("SyncOfflineBatch")}) == 1
    assert hq.synced_through("T1") == 4
    assert all(hq.card(n).balance == 900 for n in numbers)


def test_non_transient_sync_failure_is_surfaced_and_not_retried(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 3)
    hq.link.script("SyncOfflineBatch", fail(grpc.StatusCode.PERMISSION_DENIED))
    summary = terminal.sync_now()
    assert isinstance(summary.error, PermissionDenied)
    assert (summary.sent, summary.remaining) == (0, 3)
    assert hq.link.calls("SyncOfflineBatch") == 1
    assert len(terminal.outbox()) == 3
    assert terminal.last_sync == summary


def first_batch(request: Any) -> bool:
    """Whether a SyncOfflineBatch request carries the till's first offline transaction."""
    return any(transaction.sequence_number == 1 for transaction in request.transactions)


def test_a_batch_sent_with_one_that_failed_is_applied_once_and_synced_later(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    # Two batches are in flight: the first is refused, the second reaches HQ and applies.
    hq.restart(sync_limits=SyncLimits(max_transactions_per_batch=3))
    terminal = make_terminal(config=MANUAL_SYNC)
    numbers = sell_offline(hq, terminal, 6)
    hq.link.script_call("SyncOfflineBatch", first_batch,  # whichever crosses first
                        fail(grpc.StatusCode.PERMISSION_DENIED))
    summary = terminal.sync_now()
    assert isinstance(summary.error, PermissionDenied)
    assert sorted(hq.batch_sizes()) == [3, 3]
    # The till records answers in order: the second stays in the outbox, applied at HQ.
    assert (summary.sent, summary.remaining) == (0, 6)
    assert [hq.card(n).balance for n in numbers] == [1_000] * 3 + [900] * 3
    again = terminal.sync_now()
    assert (again.error, again.applied, again.already_applied, again.remaining) == (
        None, 3, 3, 0)
    assert hq.synced_through("T1") == 6
    assert all(hq.card(n).balance == 900 and hq.card(n).lock is None for n in numbers)


def test_one_batch_at_a_time_when_configured(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    hq.restart(sync_limits=SyncLimits(max_transactions_per_batch=3))
    terminal = make_terminal(config=TerminalConfig(
        call_timeout_s=0.5, probe_initial_backoff_s=0.02, probe_max_backoff_s=0.2,
        sync_automatically=False, sync_batches_in_flight=1))
    sell_offline(hq, terminal, 6)
    hq.link.script("SyncOfflineBatch", fail(grpc.StatusCode.PERMISSION_DENIED))
    summary = terminal.sync_now()
    assert isinstance(summary.error, PermissionDenied)
    assert hq.batch_sizes() == [3]
    assert terminal.sync_now().applied == 6


def test_rejected_transaction_leaves_the_outbox_and_is_reported(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    (number, _) = sell_offline(hq, terminal, 2)
    # Another delivery of "sale-0", with other content, reached HQ first (a support tool).
    (queued, _) = terminal.outbox()
    other = offline_pb2.OfflineTransaction(
        transaction_id="sale-0", sequence_number=queued.sequence_number, parameters_version=1)
    other.completed_at.GetCurrentTime()
    hq.desk.till("CompleteOffline", ts.CompleteOfflineRequest(request_id="support-1",
                 transaction=other), token=hq.tokens["T1"])
    summary = terminal.sync_now()
    assert (summary.rejected, summary.applied, summary.remaining) == (1, 1, 0)
    (report,) = terminal.sync_reports()
    assert (report.outcome, report.reason) == (SyncOutcome.REJECTED, "TRANSACTION_CONFLICT")
    assert report.transaction_id == "sale-0"
    sale = terminal.sale(transaction_id="sale-0")
    assert sale is not None
    assert [(line.state, line.hq_reason) for line in sale.lines] == [
        (LineState.REJECTED_AT_SYNC, "TRANSACTION_CONFLICT")
    ]
    assert hq.card(number).balance == 1000, "kept for review at HQ, not debited"


def test_a_card_spent_to_zero_offline_shows_a_zero_balance_after_sync(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    emptied, kept = hq.add_card(balance=250), hq.add_card(balance=1000)
    for transaction_id, number in (("sale-0", emptied), ("sale-1", kept)):
        terminal.add_tender(transaction_id=transaction_id, card_number=number)
    hq.link.up = False
    for transaction_id, number in (("sale-0", emptied), ("sale-1", kept)):
        assert terminal.complete_sale(transaction_id=transaction_id, lines=[
            SaleLine("L1", number, eur(250))]).completed_offline
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)

    assert terminal.sync_now().applied == 2

    balances = {}
    for transaction_id in ("sale-0", "sale-1"):
        sale = terminal.sale(transaction_id=transaction_id)
        assert sale is not None and sale.synced
        (line,) = sale.lines
        assert line.state is LineState.APPLIED_AT_SYNC
        balances[transaction_id] = line.balance_after
    assert balances == {"sale-0": eur(0), "sale-1": eur(750)}, "a zero balance is a balance"


def test_lower_hq_limit_is_learned_from_limit_exceeded_and_the_batch_resent_smaller(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 5)
    hq.restart(sync_limits=SyncLimits(max_transactions_per_batch=2))
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    summary = terminal.sync_now()
    assert (summary.error, summary.remaining) == (None, 0)
    assert hq.batch_sizes() == [5, 2, 2, 1], "refused whole, then resent in HQ's size"


def test_batches_are_cut_to_fit_hq_largest_request(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 7)
    hq.restart(sync_limits=SyncLimits(max_message_bytes=450))  # room for about three
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)

    summary = terminal.sync_now()

    assert (summary.error, summary.remaining, hq.synced_through()) == (None, 0, 7)
    refused, *resent = hq.link.requests("SyncOfflineBatch")
    assert len(refused.transactions) == 7, "sent whole before the till knew the new limit"
    assert sum(len(request.transactions) for request in resent) == 7
    assert len(resent) > 1 and all(request.ByteSize() <= 450 for request in resent)


def test_an_answer_past_grpc_default_receive_limit_is_read_the_first_time(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    """The till fills a batch up to HQ's max_message_bytes (8 MiB), and HQ's answer can be
    larger than the request: past gRPC's default 4 MiB receive limit, a batch HQ applied
    would be RESOURCE_EXHAUSTED, resent, and answered as large again, for ever."""
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 2)
    hq.link.script("SyncOfflineBatch", LARGE_ANSWER)

    summary = terminal.sync_now()

    assert (summary.error, summary.remaining, hq.synced_through()) == (None, 0, 2)
    assert hq.link.calls("SyncOfflineBatch") == 1, "read at once, not resent"


def test_hq_sends_an_answer_larger_than_the_requests_it_takes(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    """HQ takes requests up to about twice max_message_bytes (so that a larger one gets
    LIMIT_EXCEEDED), and answers after its commit: an answer past that, refused by HQ's
    own transport, would turn an applied batch into an error on every resend."""
    hq.restart(sync_limits=SyncLimits(max_message_bytes=64 * 1024))  # takes up to 1.1 MiB
    terminal = make_terminal(config=MANUAL_SYNC)
    sell_offline(hq, terminal, 2)
    hq.link.script("SyncOfflineBatch", LARGE_ANSWER)

    summary = terminal.sync_now()

    assert (summary.error, summary.remaining, hq.synced_through()) == (None, 0, 2)
    assert hq.link.calls("SyncOfflineBatch") == 1, "answered at once, not resent"


def test_background_agent_syncs_on_reconnection_without_being_asked(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal()
    numbers = sell_offline(hq, terminal, 3)
    wait_until(lambda: terminal.outbox() == ())
    assert all(hq.card(n).balance == 900 for n in numbers)
    assert hq.synced_through("T1") == 3


SYNCING_TILL = Path(__file__).with_name("syncing_till.py")


def sync_and_kill(hq: StoreHQ, data_dir: Path, batch_size: int, kill_after: int,
                  extra_s: float) -> None:
    """Start a till process syncing the outbox in ``data_dir``, SIGKILL it once it recorded
    ``kill_after`` batches and ``extra_s`` more went by (the kill lands anywhere in a batch:
    while it is read, at HQ, or being recorded), unless it finished syncing first."""
    till = subprocess.Popen(
        [sys.executable, str(SYNCING_TILL), hq.address, hq.tokens["T1"], str(data_dir),
         str(batch_size)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert till.stdin is not None
    assert till.stdout is not None
    try:
        assert till.stdout.readline().strip() == "SYNCING"
        recorded, finished = 0, False
        while recorded < kill_after and not finished:
            line = till.stdout.readline().strip()
            assert line, "the syncing till ended before it was killed"
            assert not line.startswith("FAILED"), line
            finished = line == "SYNCED"
            recorded += 1
        time.sleep(extra_s)  # only moves the moment of the kill; nothing waits on it
        os.kill(till.pid, signal.SIGKILL)
        till.wait(timeout=30)
    finally:
        if till.poll() is None:
            till.kill()
            till.wait(timeout=30)
        till.stdin.close()
        till.stdout.close()


@pytest.mark.slow
def test_a_till_killed_mid_sync_loses_and_duplicates_nothing(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "till"
    filling = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    cards = sell_offline(hq, filling, 120)
    filling.close()
    chooser = random.Random(14)
    for _ in range(4):
        sync_and_kill(hq, data_dir, batch_size=7, kill_after=chooser.randint(1, 3),
                      extra_s=chooser.uniform(0, 0.02))
        hq.link.up = False  # what the killed till left: read before HQ is reached again
        left = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
        sequences = [entry.sequence_number for entry in left.outbox()]
        synced = hq.synced_through()
        assert sequences == list(range(sequences[0], 121)) if sequences else synced == 120
        assert not sequences or sequences[0] <= synced + 1, "nothing HQ lacks left the outbox"
        left.close()
        hq.link.up = True

    terminal = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    summary = terminal.sync_now()

    assert (summary.error, summary.remaining, hq.synced_through()) == (None, 0, 120)
    assert summary.rejected == summary.applied_with_exception == 0
    assert [hq.card(number).balance for number in cards] == [900] * 120, "each debited once"
    for index in range(120):
        sale = terminal.sale(transaction_id=f"sale-{index}")
        assert sale is not None and sale.synced, f"sale-{index}"
        assert [(line.state, line.balance_after) for line in sale.lines] == [
            (LineState.APPLIED_AT_SYNC, eur(900))], f"sale-{index}"
    assert terminal.sync_now().sent == 0
