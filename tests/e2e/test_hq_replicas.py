"""Two real HQ processes on one database, PostgreSQL or a SQLite file: locks and
redemptions stay correct when the tills racing for one card talk to different replicas, and a
parameter change or a revocation made through one replica reaches the other at once.

PostgreSQL needs STOREDVALUE_TEST_POSTGRES_URL; each run creates its own database and drops
it after. The SQLite processes share a file in the test's directory (writer lock and
notifications table: README, "Serving a fleet").
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from held_row import row_held
from sqlalchemy import create_engine

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import (
    ADMIN_TOKEN,
    BackOffice,
    Till,
    eur,
    expect_failure,
    failure_of,
    free_port,
    fresh_postgres_database,
    new_id,
    reap,
    start_serve,
    stop_process,
    wait_serving,
)

pytestmark = [pytest.mark.slow]
RACERS = 16
ROUNDS = 50


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres),
                        "sqlite-file"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite-file":
        yield f"sqlite:///{tmp_path / 'shared.sqlite3'}"
        return
    with fresh_postgres_database("sv_e2e") as url:
        yield url


@dataclass
class Replicas:
    channels: list[grpc.Channel]
    back_office: BackOffice

    def tills(self, count: int, prefix: str) -> list[Till]:
        """`count` terminals, alternately connected to each replica."""
        return [
            self.back_office.register_till(f"{prefix}-{i}", self.channels[i % 2])
            for i in range(count)
        ]


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    env = {"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN}
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes: list[subprocess.Popen[str]] = [
        start_serve(["--listen", address, "--database-url", database_url,
                     "--grace-period", "5"], env, tmp_path)
        for address in addresses  # started together: both migrate the same new database
    ]
    channels: list[grpc.Channel] = []
    try:
        for process, address in zip(processes, addresses, strict=True):
            wait_serving(process, address)
        channels = [grpc.insecure_channel(address) for address in addresses]
        yield Replicas(channels, BackOffice(channels[0]))
    finally:
        for channel in channels:
            channel.close()
        # Each stopped before any exit is judged: a failed one must not leave the other
        # running.
        exits = []
        for process in processes:
            try:
                exits.append(stop_process(process, timeout=15))
            except BaseException:
                for rest in processes:
                    reap(rest)
                raise
        for code, _out, err in exits:
            assert code == 0, err


def test_sixteen_tills_racing_for_one_card_across_two_replicas_have_one_winner_per_round(
    replicas: Replicas,
) -> None:
    tills = replicas.tills(RACERS, "racer")
    card = tills[0].issue_gift_card(1000)
    start = threading.Barrier(RACERS)

    def race(till: Till, round_no: int) -> tuple[Till, ts.LockCardResponse | str]:
        start.wait(timeout=30)
        try:
            return till, till.lock(card.card_number, f"round-{round_no}-{till.terminal_id}")
        except grpc.RpcError as error:
            failure = failure_of(error)
            return till, failure.reason or f"{failure.code}: {failure.message}"

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        for round_no in range(ROUNDS):
            outcomes = list(pool.map(race, tills, [round_no] * RACERS))
            winners = [(t, o) for t, o in outcomes if isinstance(o, ts.LockCardResponse)]
            losers = [o for _t, o in outcomes if isinstance(o, str)]
            assert len(winners) == 1, f"round {round_no}: {len(winners)} winners"
            assert losers == ["CARD_LOCKED"] * (RACERS - 1)
            winner, response = winners[0]
            winner.call("UnlockCard", ts.UnlockCardRequest(
                request_id=new_id(), card_number=card.card_number,
                transaction_id=response.lock.transaction_id,
                fencing_token=response.lock.fencing_token,
            ))


def test_concurrent_redemptions_through_two_replicas_never_overdraw_and_the_journal_balances(
    replicas: Replicas,
) -> None:
    tills = replicas.tills(8, "redeemer")
    initial, amount = 10_000, 700
    card = tills[0].issue_gift_card(initial)
    redeemed = [0] * len(tills)

    def spend(index: int) -> None:
        till = tills[index]
        for attempt in range(10_000):
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
            future.result(timeout=120)

    balance = tills[1].get_card(card.card_number).balance.amount_minor
    journal = replicas.back_office.journal(card.card_number, page_size=5)
    assert balance == initial % amount
    assert sum(redeemed) == initial - balance
    assert sum(entry.amount.amount_minor for entry in journal) == balance
    assert [entry.balance_after.amount_minor for entry in journal][-1] == balance
    assert min(entry.balance_after.amount_minor for entry in journal) >= 0


def test_one_line_sent_to_both_replicas_at_once_under_two_request_ids_is_debited_once(
    database_url: str, replicas: Replicas,
) -> None:
    """A till's two sends of one sale line under two request ids, one through each replica,
    arrive together: the line is debited once and both get the debit. (PostgreSQL: the card's
    row is held until both wait for it, so the second waits for the first's commit.)"""
    (till,) = replicas.tills(1, "twice")
    twin = Till(replicas.channels[1], till.terminal_id, till.token)  # the other replica
    card = till.issue_gift_card(10_000).card_number
    lock = till.lock(card, "sale-1").lock

    def redeem(through: Till) -> ts.RedeemResponse:
        response: ts.RedeemResponse = through.call("Redeem", ts.RedeemRequest(
            request_id=new_id(), card_number=card, transaction_id="sale-1", line_id="1",
            fencing_token=lock.fencing_token, amount=eur(2_500)))
        return response

    engine = create_engine(database_url) if database_url.startswith("postgresql") else None
    try:
        with row_held(engine, card, until_waiting=2), ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(redeem, [till, twin]))
    finally:
        if engine is not None:
            engine.dispose()
    assert [answer.card.balance.amount_minor for answer in answers] == [7_500, 7_500]
    assert till.get_card(card).balance.amount_minor == 7_500
    journal = replicas.back_office.journal(card)
    assert [entry.amount.amount_minor for entry in journal] == [10_000, -2_500]


def test_a_parameter_change_through_one_replica_reaches_the_other_replicas_watchers_at_once(
    replicas: Replicas,
) -> None:
    # The till follows replica 1; the back office changes the parameters through replica 0.
    till = replicas.tills(2, "watcher")[1]
    version = till.call("GetParameters", ts.GetParametersRequest()).parameters.version
    stream: Any = till.stub.WatchParameters(
        ts.WatchParametersRequest(known_version=version), metadata=till.metadata, timeout=30
    )
    received: queue.Queue[tuple[float, ts.WatchParametersResponse]] = queue.Queue()

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):
            for message in stream:
                received.put((time.monotonic(), message))

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        changed_at = time.monotonic()
        updated = replicas.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), credit_memo_offline_completion_allowed=True,
        )).parameters
        arrived_at, message = received.get(timeout=10)
    finally:
        stream.cancel()
        follower.join(timeout=10)

    assert message.parameters == updated
    # The other replica is told: PostgreSQL's LISTEN/NOTIFY, or on the SQLite file the
    # notifications table, read every 0.1 s.
    assert arrived_at - changed_at < 1.0


def test_a_till_revoked_through_one_replica_is_cut_off_by_the_other_at_once(
    replicas: Replicas,
) -> None:
    # The till follows replica 1; the back office revokes it through replica 0.
    till = replicas.tills(2, "stolen")[1]
    card = till.issue_gift_card(1000).card_number
    till.call("LockCard", ts.LockCardRequest(request_id=new_id(), card_number=card,
                                             transaction_id="S1"))
    stream: Any = till.stub.WatchParameters(ts.WatchParametersRequest(known_version=0),
                                            metadata=till.metadata, timeout=30)
    next(stream)  # open, with the current parameters
    ended: queue.Queue[tuple[float, grpc.RpcError]] = queue.Queue()

    def follow() -> None:
        try:
            for _message in stream:
                pass
        except grpc.RpcError as error:
            ended.put((time.monotonic(), error))

    follower = threading.Thread(target=follow)
    follower.start()
    try:
        revoked_at = time.monotonic()
        revoked = replicas.back_office.call("RevokeTerminal", bo.RevokeTerminalRequest(
            request_id=new_id(), terminal_id=till.terminal_id, reason="till stolen"))
        cut_at, error = ended.get(timeout=10)
        refused = expect_failure(lambda: till.call("GetCard", ts.GetCardRequest(
            card_number=card)))
    finally:
        stream.cancel()
        follower.join(timeout=10)

    assert [lock.card_number for lock in revoked.released_locks] == [card]
    # The other replica is told (LISTEN/NOTIFY, or the notifications table): its stream
    # ends, its cache forgets.
    assert failure_of(error).reason == "UNAUTHENTICATED"
    assert cut_at - revoked_at < 1.0
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED,
                                              "UNAUTHENTICATED")

