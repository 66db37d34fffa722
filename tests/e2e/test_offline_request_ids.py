"""The offline RPCs honour request_id as the online ones do (AIP-155): the same id with the
same content gets the first answer again, the same id with other content (or for another
RPC) is REQUEST_ID_REUSED and changes nothing. Each transaction still applies once by its
transaction_id, whatever request carries it."""

from __future__ import annotations

import grpc

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import RunningHQ
from .harness import Failure, eur, expect_failure, new_id
from .test_offline_wire import offline_sale


def batch(request_id: str, *transactions: offline_pb2.OfflineTransaction
          ) -> ts.SyncOfflineBatchRequest:
    return ts.SyncOfflineBatchRequest(request_id=request_id, transactions=transactions)


def highest_seen(hq: RunningHQ, terminal_id: str) -> int:
    status = hq.back_office.call("GetTerminalSyncStatus", bo.GetTerminalSyncStatusRequest(
        terminal_id=terminal_id)).sync_status
    return int(status.highest_sequence_seen)


def assert_reused(failure: Failure, request_id: str) -> None:
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "REQUEST_ID_REUSED"
    assert failure.metadata == {"request_id": request_id}


def test_a_batch_resent_with_its_request_id_gets_its_first_answer_and_debits_once(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(5_000)
    request = batch(new_id(), offline_sale(1, card.card_number, 1_500),
                    offline_sale(2, card.card_number, 1_000))

    first: ts.SyncOfflineBatchResponse = till.call("SyncOfflineBatch", request)
    again: ts.SyncOfflineBatchResponse = till.call("SyncOfflineBatch", request)

    # The first answer word for word: whoever lost it learns what happened then.
    assert list(again.results) == list(first.results)
    assert [r.outcome for r in again.results] == [
        offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION] * 2  # no lock held: exceptions
    assert again.sync_status.highest_contiguous_sequence == 2
    assert till.get_card(card.card_number).balance == eur(2_500)
    # Regrouped under a new id, the same transactions are per-item redeliveries.
    regrouped: ts.SyncOfflineBatchResponse = till.call(
        "SyncOfflineBatch", batch(new_id(), *request.transactions))
    assert [r.outcome for r in regrouped.results] == [
        offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED] * 2
    assert till.get_card(card.card_number).balance == eur(2_500)


def test_a_batch_request_id_reused_with_other_transactions_is_refused_and_applies_nothing(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000)
    request_id = new_id()
    till.call("SyncOfflineBatch", batch(request_id, offline_sale(1, card.card_number, 1_000)))

    def resend_with(other: offline_pb2.OfflineTransaction) -> Failure:
        return expect_failure(lambda: till.call("SyncOfflineBatch", batch(request_id, other)))

    refused = [resend_with(other) for other in (
        offline_sale(2, card.card_number, 2_000),
        offline_sale(1, card.card_number, 3_000),  # the same transaction, another amount
        offline_sale(3, card.card_number, 500, txn="offline-3"),
    )]

    for failure in refused:
        assert_reused(failure, request_id)
    assert till.get_card(card.card_number).balance == eur(9_000)
    assert highest_seen(hq, "till-1") == 1


def test_complete_offline_honours_its_request_id(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000)
    request = ts.CompleteOfflineRequest(request_id=new_id(),
                                        transaction=offline_sale(1, card.card_number, 1_000))

    first: ts.CompleteOfflineResponse = till.call("CompleteOffline", request)
    again: ts.CompleteOfflineResponse = till.call("CompleteOffline", request)
    other = ts.CompleteOfflineRequest(request_id=request.request_id,
                                      transaction=offline_sale(2, card.card_number, 4_000))
    failure = expect_failure(lambda: till.call("CompleteOffline", other))

    assert again.result == first.result
    assert first.result.outcome != offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED
    assert_reused(failure, request.request_id)
    assert till.get_card(card.card_number).balance == eur(9_000)
    assert highest_seen(hq, "till-1") == 1


def test_a_request_id_is_refused_across_rpcs_offline_and_online(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000)
    synced_id, locked_id, completed_id = new_id(), new_id(), new_id()
    till.call("SyncOfflineBatch", batch(synced_id, offline_sale(1, card.card_number, 1_000)))
    till.call("LockCard", ts.LockCardRequest(request_id=locked_id,
                                             card_number=card.card_number,
                                             transaction_id="sale-online"))
    till.call("CompleteOffline", ts.CompleteOfflineRequest(
        request_id=completed_id, transaction=offline_sale(2, card.card_number, 1_000)))

    refusals = {
        "LockCard after SyncOfflineBatch": (synced_id, expect_failure(lambda: till.call(
            "LockCard", ts.LockCardRequest(request_id=synced_id, card_number=card.card_number,
                                           transaction_id="sale-2")))),
        "CompleteOffline after LockCard": (locked_id, expect_failure(lambda: till.call(
            "CompleteOffline", ts.CompleteOfflineRequest(
                request_id=locked_id, transaction=offline_sale(3, card.card_number, 1_000))))),
        "SyncOfflineBatch after CompleteOffline": (completed_id, expect_failure(
            lambda: till.call("SyncOfflineBatch", batch(
                completed_id, offline_sale(2, card.card_number, 1_000))))),
    }

    for request_id, failure in refusals.values():
        assert_reused(failure, request_id)
    after = till.get_card(card.card_number)
    assert after.balance == eur(8_000)
    assert after.lock.transaction_id == "sale-online"
    assert highest_seen(hq, "till-1") == 2


def test_offline_requests_without_a_request_id_are_invalid_and_apply_nothing(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000)

    failures = [
        expect_failure(lambda: till.call("SyncOfflineBatch", batch(
            "", offline_sale(1, card.card_number, 1_000)))),
        expect_failure(lambda: till.call("CompleteOffline", ts.CompleteOfflineRequest(
            transaction=offline_sale(1, card.card_number, 1_000)))),
    ]

    for failure in failures:
        assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
        assert failure.reason == "INVALID_FIELD"
        assert failure.metadata["field"] == "request_id"
    assert till.get_card(card.card_number).balance == eur(10_000)
    assert highest_seen(hq, "till-1") == 0


def test_two_tills_may_use_the_same_request_id(hq: RunningHQ) -> None:
    first, second = hq.till("till-1"), hq.till("till-2")
    card = first.issue_gift_card(10_000)
    request_id = new_id()

    for till in (first, second):
        answer: ts.SyncOfflineBatchResponse = till.call("SyncOfflineBatch", batch(
            request_id, offline_sale(1, card.card_number, 1_000)))
        assert answer.results[0].outcome != offline_pb2.OFFLINE_OUTCOME_REJECTED

    assert first.get_card(card.card_number).balance == eur(8_000)
