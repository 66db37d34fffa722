"""Offline sync through the wire: applied once, resends, limits, gaps, exceptions."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
from google.protobuf import timestamp_pb2

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import E2E_SYNC_LIMITS, RunningHQ
from .harness import Till, eur, expect_failure, new_id


def allow_gift_cards_offline(hq: RunningHQ) -> int:
    version: int = hq.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
        request_id=new_id(), gift_card_offline_completion_allowed=True,
    )).parameters.version
    return version


def offline_sale(sequence: int, card_number: str, amount_minor: int, *, token: int = 0,
                 params_version: int = 0, txn: str | None = None, lines: int = 1,
                 line_id_length: int = 8) -> offline_pb2.OfflineTransaction:
    completed = timestamp_pb2.Timestamp()
    completed.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    return offline_pb2.OfflineTransaction(
        transaction_id=txn or f"offline-{sequence}",
        sequence_number=sequence,
        completed_at=completed,
        parameters_version=params_version,
        redeem_lines=[
            offline_pb2.OfflineRedeemLine(
                line_id=f"{i}".zfill(line_id_length), card_number=card_number,
                card_kind=common_pb2.CARD_KIND_GIFT_CARD, amount=eur(amount_minor),
                fencing_token=token,
            )
            for i in range(lines)
        ],
    )


def sync(till: Till, *transactions: offline_pb2.OfflineTransaction
         ) -> ts.SyncOfflineBatchResponse:
    request = ts.SyncOfflineBatchRequest(request_id=new_id(), transactions=transactions)
    response: ts.SyncOfflineBatchResponse = till.call("SyncOfflineBatch", request)
    return response


def test_an_offline_sale_is_applied_once_and_a_resend_is_already_applied(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(5000)
    lock = till.lock(card.card_number, "offline-1").lock
    version = allow_gift_cards_offline(hq)
    sale = offline_sale(1, card.card_number, 1500, token=lock.fencing_token,
                        params_version=version)

    first = sync(till, sale)
    resent = sync(till, sale)

    result = first.results[0]
    assert result.outcome == offline_pb2.OFFLINE_OUTCOME_APPLIED
    assert result.line_results[0].outcome == offline_pb2.OFFLINE_LINE_OUTCOME_APPLIED
    assert result.line_results[0].balance_after == eur(3500)
    assert first.sync_status.highest_contiguous_sequence == 1
    assert resent.results[0].outcome == offline_pb2.OFFLINE_OUTCOME_ALREADY_APPLIED
    assert resent.results[0].original_outcome == offline_pb2.OFFLINE_OUTCOME_APPLIED
    after = till.get_card(card.card_number)
    assert after.balance == eur(3500)
    assert not after.HasField("lock")
    journal = hq.back_office.journal(card.card_number)
    assert [e.offline for e in journal if e.kind == bo.JOURNAL_ENTRY_KIND_REDEEM] == [True]


def test_a_batch_over_the_transaction_limit_is_limit_exceeded_and_applies_nothing(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(100_000)
    too_many = E2E_SYNC_LIMITS.max_transactions_per_batch + 1
    batch = [offline_sale(seq, card.card_number, 10) for seq in range(1, too_many + 1)]

    failure = expect_failure(lambda: sync(till, *batch))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "LIMIT_EXCEEDED"
    assert failure.metadata["limit"] == "max_transactions_per_batch"
    assert failure.metadata["value"] == str(too_many)
    assert till.get_card(card.card_number).balance == eur(100_000)
    status = hq.back_office.call("GetTerminalSyncStatus", bo.GetTerminalSyncStatusRequest(
        terminal_id="till-1")).sync_status
    assert status.highest_sequence_seen == 0


def test_a_request_over_the_message_size_limit_is_limit_exceeded_and_applies_nothing(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(100_000)
    lines = E2E_SYNC_LIMITS.max_lines_per_transaction
    batch = [offline_sale(seq, card.card_number, 1, lines=lines, line_id_length=120)
             for seq in range(1, E2E_SYNC_LIMITS.max_transactions_per_batch + 1)]
    request = ts.SyncOfflineBatchRequest(request_id=new_id(), transactions=batch)
    assert request.ByteSize() > E2E_SYNC_LIMITS.max_message_bytes

    failure = expect_failure(lambda: till.call("SyncOfflineBatch", request))
    single = expect_failure(lambda: till.call("CompleteOffline", ts.CompleteOfflineRequest(
        request_id=new_id(), transaction=offline_sale(
            1, card.card_number, 1, lines=lines * 20, line_id_length=120))))

    for refused in (failure, single):
        assert refused.code is grpc.StatusCode.INVALID_ARGUMENT
        assert refused.reason == "LIMIT_EXCEEDED"
        assert refused.metadata["limit"] == "max_message_bytes"
    assert till.get_card(card.card_number).balance == eur(100_000)


def test_complete_offline_reports_a_sequence_gap_until_it_is_filled(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000)

    def complete(seq: int) -> ts.CompleteOfflineResponse:
        response: ts.CompleteOfflineResponse = till.call(
            "CompleteOffline", ts.CompleteOfflineRequest(
                request_id=new_id(), transaction=offline_sale(seq, card.card_number, 100)))
        return response

    complete(1)
    with_gap = complete(3).sync_status
    filled = complete(2).sync_status

    assert [(g.first_missing, g.last_missing) for g in with_gap.gaps] == [(2, 2)]
    assert with_gap.highest_contiguous_sequence == 1
    assert with_gap.highest_sequence_seen == 3
    assert list(filled.gaps) == []
    assert filled.highest_contiguous_sequence == 3
    assert filled.HasField("last_synced_at")


def test_an_offline_overdraft_flags_the_card_until_the_back_office_resolves_it(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1000)
    lock = till.lock(card.card_number, "offline-1").lock
    version = allow_gift_cards_offline(hq)

    result = sync(till, offline_sale(1, card.card_number, 1500, token=lock.fencing_token,
                                     params_version=version)).results[0]

    assert result.outcome == offline_pb2.OFFLINE_OUTCOME_APPLIED_WITH_EXCEPTION
    assert result.reason == "OFFLINE_OVERDRAFT"
    flagged = till.get_card(card.card_number)
    assert flagged.status == common_pb2.CARD_STATUS_FLAGGED
    assert flagged.balance == eur(-500)
    refused = expect_failure(lambda: till.lock(card.card_number, "sale-2"))
    assert refused.reason == "CARD_FLAGGED"

    listed = hq.back_office.call("ListOfflineExceptions", bo.ListOfflineExceptionsRequest(
        card_number=card.card_number)).exceptions
    assert [e.kind for e in listed] == [bo.OFFLINE_EXCEPTION_KIND_OVERDRAFT]
    assert listed[0].amount == eur(1500)
    resolved = hq.back_office.call("ResolveOfflineException", bo.ResolveOfflineExceptionRequest(
        request_id=new_id(), exception_id=listed[0].exception_id, resolution="customer paid",
    ))
    assert resolved.exception.resolution == "customer paid"
    assert resolved.card.status == common_pb2.CARD_STATUS_ACTIVE


def test_an_offline_sale_of_an_unknown_card_is_rejected_and_kept_for_review(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    unknown = "4111111111111111"

    result = sync(till, offline_sale(1, unknown, 100)).results[0]

    assert result.outcome == offline_pb2.OFFLINE_OUTCOME_REJECTED
    assert result.reason == "CARD_NOT_FOUND"
    kept = hq.back_office.call("ListOfflineExceptions", bo.ListOfflineExceptionsRequest(
        terminal_id="till-1")).exceptions
    assert [e.kind for e in kept] == [bo.OFFLINE_EXCEPTION_KIND_REJECTED]
    assert kept[0].transaction.redeem_lines[0].card_number == unknown
    assert kept[0].transaction.redeem_lines[0].amount == eur(100)
