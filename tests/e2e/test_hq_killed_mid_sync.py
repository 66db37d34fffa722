"""A real HQ process killed (SIGKILL) in the middle of an offline sync, restarted on the same
SQLite file, and sent everything again: every offline transaction is applied exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import BackOffice, HQProcess, Till, eur, new_id

CARDS = 20
BATCHES = 6
BATCH_SIZE = 500
OPENING_BALANCE = 100_000


@pytest.fixture
def hq_process(tmp_path: Path) -> Iterator[HQProcess]:
    hq = HQProcess(tmp_path)
    hq.start()
    try:
        yield hq
    finally:
        hq.stop()


Batch = list[offline_pb2.OfflineTransaction]


def offline_batches(cards: list[str], parameters_version: int) -> list[Batch]:
    completed = Timestamp(seconds=1_790_000_000)
    transactions = [
        offline_pb2.OfflineTransaction(
            transaction_id=f"offline-{seq}", sequence_number=seq, completed_at=completed,
            parameters_version=parameters_version,
            redeem_lines=[offline_pb2.OfflineRedeemLine(
                line_id="1", card_number=cards[seq % len(cards)],
                # Sold without a lock (HQ applies each with a LOCK_NOT_HELD exception): locking
                # each card for each of these 3,000 sales would take longer than the test.
                card_kind=common_pb2.CARD_KIND_GIFT_CARD, amount=eur(seq % 7 + 1),
                fencing_token=0)],
        )
        for seq in range(1, BATCHES * BATCH_SIZE + 1)
    ]
    return [transactions[i:i + BATCH_SIZE] for i in range(0, len(transactions), BATCH_SIZE)]


def sync(till: Till, batch: Batch) -> ts.SyncOfflineBatchResponse:
    request = ts.SyncOfflineBatchRequest(request_id=new_id(), transactions=batch)
    response: ts.SyncOfflineBatchResponse = till.call("SyncOfflineBatch", request)
    return response


def test_a_batch_cut_off_by_killing_hq_is_applied_exactly_once_when_resent(
    hq_process: HQProcess,
) -> None:
    with grpc.insecure_channel(hq_process.address) as channel:
        back_office = BackOffice(channel)
        till = back_office.register_till("till-1")
        version = back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), gift_card_offline_completion_allowed=True,
        )).parameters.version
        cards = [till.issue_gift_card(OPENING_BALANCE).card_number for _ in range(CARDS)]
    token = dict(till.metadata)["authorization"].removeprefix("Bearer ")
    batches = offline_batches(cards, version)
    expected_debit = {number: 0 for number in cards}
    for batch in batches:
        for txn in batch:
            line = txn.redeem_lines[0]
            expected_debit[line.card_number] += line.amount.amount_minor

    # Sync batch after batch; kill HQ as soon as the third batch is on its way.
    third_sent = threading.Event()
    sender_errors: list[grpc.RpcError] = []

    def send_all() -> None:
        with grpc.insecure_channel(hq_process.address) as channel:
            sender = Till(channel, "till-1", token)
            for index, batch in enumerate(batches):
                if index == 2:
                    third_sent.set()
                try:
                    sync(sender, batch)
                except grpc.RpcError as error:
                    sender_errors.append(error)
                    return

    sender = threading.Thread(target=send_all)
    sender.start()
    assert third_sent.wait(timeout=60), "the sender never reached the third batch"
    hq_process.kill()
    sender.join(timeout=60)
    assert sender_errors, "HQ was killed, so some batch must have failed on the wire"

    hq_process.start()
    with grpc.insecure_channel(hq_process.address) as channel:
        back_office = BackOffice(channel)
        resender = Till(channel, "till-1", token)
        applied_now = 0
        for batch in batches:
            outcomes = {r.outcome for r in sync(resender, batch).results}
            # Each batch was one database transaction: it landed whole or not at all.
            assert outcomes in ({offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION},
                                {offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED}), outcomes
            applied_now += offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION in outcomes
        assert 1 <= applied_now <= BATCHES - 2  # the first two batches had been acknowledged

        # A third delivery changes nothing.
        for batch in batches:
            assert {r.outcome for r in sync(resender, batch).results} == {
                offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED}

        for number in cards:
            card = resender.get_card(number)
            assert card.balance.amount_minor == OPENING_BALANCE - expected_debit[number]
            journal = back_office.journal(number)
            assert sum(e.amount.amount_minor for e in journal) == card.balance.amount_minor
            assert card.HasField("lock") is False
        status = back_office.call("GetTerminalSyncStatus", bo.GetTerminalSyncStatusRequest(
            terminal_id="till-1")).sync_status
        assert status.highest_contiguous_sequence == BATCHES * BATCH_SIZE
        assert list(status.gaps) == []
