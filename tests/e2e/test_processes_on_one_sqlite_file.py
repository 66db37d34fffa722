"""Two HQ servers on ONE SQLite file, as several `storedvalue serve` processes on one machine
run: what one does reaches the other's tills as it would between PostgreSQL replicas. A
parameter change made through one reaches the other's watch streams, a terminal revoked
through one is cut off by the other, and tills racing for one card through both never
spend it twice.

Two servers in this process stand for two processes: each has its own storage, executor,
writer lock handle (a `flock` belongs to an open file, not to a process) and notification
follower, and they share nothing but the file."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from in_process_hq import InProcessHQ, hq_config

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import ADMIN_TOKEN, BackOffice, Till, eur, expect_failure, failure_of, new_id

# The notifications are read every 0.1 s (the default); the deadlines leave room for a slow VM.
DEADLINE = 10.0


@dataclass
class TwoProcesses:
    servers: list[InProcessHQ]
    channels: list[grpc.Channel]
    back_office: BackOffice  # through the first

    def tills(self, count: int, prefix: str) -> list[Till]:
        """`count` terminals, alternately connected to each server."""
        return [
            self.back_office.register_till(f"{prefix}-{i}", self.channels[i % 2])
            for i in range(count)
        ]


@pytest.fixture
def two(tmp_path: Path) -> Iterator[TwoProcesses]:
    config = hq_config(tmp_path, admin_token=ADMIN_TOKEN, notifications_poll_seconds=0.1)
    with InProcessHQ(config) as first, InProcessHQ(config) as second:
        channels = [grpc.insecure_channel(server.address) for server in (first, second)]
        try:
            yield TwoProcesses([first, second], channels, BackOffice(channels[0]))
        finally:
            for channel in channels:
                channel.close()


def test_a_parameter_change_through_one_process_reaches_the_other_process_watchers(
    two: TwoProcesses,
) -> None:
    # The till follows the second server; the back office changes parameters through the first.
    till = two.tills(2, "watcher")[1]
    version = till.call("GetParameters", ts.GetParametersRequest()).parameters.version
    stream: Any = till.stub.WatchParameters(
        ts.WatchParametersRequest(known_version=version), metadata=till.metadata, timeout=30
    )
    received: queue.Queue[ts.WatchParametersResponse] = queue.Queue()

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):
            for message in stream:
                received.put(message)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        updated = two.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), credit_memo_offline_completion_allowed=True,
        )).parameters
        message = received.get(timeout=DEADLINE)
    finally:
        stream.cancel()
        follower.join(timeout=10)

    assert updated.version > version
    assert message.parameters == updated


def test_a_till_revoked_through_one_process_is_cut_off_by_the_other(
    two: TwoProcesses,
) -> None:
    # The till works through the second server (which caches its credential); the back
    # office revokes it through the first.
    till = two.tills(2, "stolen")[1]
    card = till.issue_gift_card(1000).card_number
    till.call("LockCard", ts.LockCardRequest(request_id=new_id(), card_number=card,
                                             transaction_id="S1"))
    stream: Any = till.stub.WatchParameters(ts.WatchParametersRequest(known_version=0),
                                            metadata=till.metadata, timeout=30)
    next(stream)  # open, with the current parameters
    ended: queue.Queue[grpc.RpcError] = queue.Queue()

    def follow() -> None:
        try:
            for _message in stream:
                pass
        except grpc.RpcError as error:
            ended.put(error)

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        revoked = two.back_office.call("RevokeTerminal", bo.RevokeTerminalRequest(
            request_id=new_id(), terminal_id=till.terminal_id, reason="till stolen"))
        error = ended.get(timeout=DEADLINE)
        refused = expect_failure(lambda: till.call("GetCard", ts.GetCardRequest(
            card_number=card)))
    finally:
        stream.cancel()
        follower.join(timeout=10)

    assert [lock.card_number for lock in revoked.released_locks] == [card]
    # The second server heard of it: its stream ended, its credential cache forgot the till.
    assert failure_of(error).reason == "UNAUTHENTICATED"
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED,
                                              "UNAUTHENTICATED")


def test_tills_redeeming_one_card_through_two_processes_never_spend_it_twice(
    two: TwoProcesses,
) -> None:
    tills = two.tills(6, "redeemer")
    initial, amount = 5_000, 300
    card = tills[0].issue_gift_card(initial)
    redeemed = [0] * len(tills)
    start = threading.Barrier(len(tills))

    def spend(index: int) -> None:
        till = tills[index]
        start.wait(timeout=30)
        deadline = time.monotonic() + 120
        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            txn = f"{till.terminal_id}-{attempt}"
            try:
                lock = till.lock(card.card_number, txn).lock
            except grpc.RpcError as error:
                refused = failure_of(error).reason
                assert refused == "CARD_LOCKED"
                continue  # another till is mid-sale; try again
            try:
                till.call("Redeem", ts.RedeemRequest(
                    request_id=new_id(), card_number=card.card_number, transaction_id=txn,
                    line_id="line-1", fencing_token=lock.fencing_token, amount=eur(amount),
                ))
            except grpc.RpcError as error:
                refused = failure_of(error).reason
                assert refused == "INSUFFICIENT_FUNDS"
                till.call("UnlockCard", ts.UnlockCardRequest(
                    request_id=new_id(), card_number=card.card_number, transaction_id=txn,
                    fencing_token=lock.fencing_token,
                ))
                return
            redeemed[index] += amount
        pytest.fail(f"{till.terminal_id} never saw the card run out")

    with ThreadPoolExecutor(max_workers=len(tills)) as pool:
        for future in [pool.submit(spend, i) for i in range(len(tills))]:
            future.result(timeout=180)

    # Read through both: each sees the other's commits.
    balances = {till.get_card(card.card_number).balance.amount_minor for till in tills[:2]}
    journal = two.back_office.journal(card.card_number, page_size=5)
    assert balances == {initial % amount}
    assert sum(redeemed) == initial - initial % amount
    assert sum(entry.amount.amount_minor for entry in journal) == initial % amount
    assert min(entry.balance_after.amount_minor for entry in journal) >= 0
