"""The online story through the wire: lock, redeem, unlock, errors, retries, parameters."""

from __future__ import annotations

import queue
import threading
import time
from datetime import UTC, datetime
from typing import Any

import grpc

from storedvalue.hq.domain.errors import mask_card_number
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import RunningHQ
from .harness import ADMIN_TOKEN, Till, eur, expect_failure, new_id


def redeem(till: Till, card_number: str, txn: str, token: int, amount: common_pb2.Money,
           request_id: str | None = None, line_id: str = "line-1") -> ts.RedeemResponse:
    response: ts.RedeemResponse = till.call("Redeem", ts.RedeemRequest(
        request_id=request_id or new_id(), card_number=card_number, transaction_id=txn,
        line_id=line_id, fencing_token=token, amount=amount,
    ))
    return response


def test_relocking_by_the_same_terminal_and_sale_is_idempotent_and_renews_the_lease(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(5000)

    first = till.lock(card.card_number, "sale-1")
    again = till.lock(card.card_number, "sale-1")

    assert again.lock.fencing_token == first.lock.fencing_token
    assert again.lock.lease_expires_at.ToDatetime() > first.lock.lease_expires_at.ToDatetime()
    assert again.card.balance == eur(5000)
    assert till.get_card(card.card_number).lock.terminal_id == "till-1"


def test_a_second_terminal_gets_card_locked_with_the_holder_and_lease_end(
    hq: RunningHQ,
) -> None:
    holder, other = hq.till("till-1"), hq.till("till-2")
    card = holder.issue_gift_card(5000)
    held = holder.lock(card.card_number, "sale-1")

    failure = expect_failure(lambda: other.lock(card.card_number, "sale-9"))

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.error_infos == 1
    assert failure.domain == "storedvalue.dev"
    assert failure.reason == "CARD_LOCKED"
    assert failure.metadata["holder_terminal_id"] == "till-1"
    assert failure.metadata["holder_transaction_id"] == "sale-1"
    assert failure.metadata["card"] == mask_card_number(card.card_number)
    lease_end = held.lock.lease_expires_at.ToDatetime(tzinfo=UTC)
    assert datetime.fromisoformat(failure.metadata["lease_expires_at"]) == lease_end
    assert card.card_number not in failure.message


def test_redeem_debits_the_card_and_releases_the_lock(hq: RunningHQ) -> None:
    till, other = hq.till("till-1"), hq.till("till-2")
    card = till.issue_gift_card(5000)
    lock = till.lock(card.card_number, "sale-1").lock

    response = redeem(till, card.card_number, "sale-1", lock.fencing_token, eur(1200))

    assert response.debited == eur(1200)
    assert response.card.balance == eur(3800)
    assert not response.card.HasField("lock")
    assert not response.HasField("remainder_credit_memo")
    assert other.lock(card.card_number, "sale-2").card.balance == eur(3800)


def test_redeeming_part_of_a_credit_memo_returns_a_new_memo_for_the_remainder(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    memo = till.call("IssueCard", ts.IssueCardRequest(
        request_id=new_id(), kind=common_pb2.CARD_KIND_CREDIT_MEMO, initial_value=eur(3000),
    )).card
    lock = till.lock(memo.card_number, "sale-1").lock

    response = redeem(till, memo.card_number, "sale-1", lock.fencing_token, eur(1000))

    assert response.card.status == common_pb2.CARD_STATUS_REDEEMED
    assert response.card.balance == eur(0)
    remainder = response.remainder_credit_memo
    assert remainder.kind == common_pb2.CARD_KIND_CREDIT_MEMO
    assert remainder.balance == eur(2000)
    assert remainder.remainder_of_card_number == memo.card_number
    assert till.get_card(remainder.card_number).balance == eur(2000)


def test_redeeming_more_than_the_balance_is_insufficient_funds_and_changes_nothing(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1000)
    lock = till.lock(card.card_number, "sale-1").lock

    failure = expect_failure(
        lambda: redeem(till, card.card_number, "sale-1", lock.fencing_token, eur(1001))
    )

    assert failure.code is grpc.StatusCode.FAILED_PRECONDITION
    assert failure.reason == "INSUFFICIENT_FUNDS"
    assert failure.metadata["balance_minor"] == "1000"
    assert failure.metadata["requested_minor"] == "1001"
    after = till.get_card(card.card_number)
    assert after.balance == eur(1000)
    assert after.lock.fencing_token == lock.fencing_token


def test_redeeming_in_another_currency_is_currency_mismatch(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1000)
    lock = till.lock(card.card_number, "sale-1").lock

    failure = expect_failure(lambda: redeem(
        till, card.card_number, "sale-1", lock.fencing_token,
        common_pb2.Money(amount_minor=100, currency_code="USD"),
    ))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "CURRENCY_MISMATCH"
    assert failure.metadata == {"card_currency": "EUR", "request_currency": "USD"}
    assert till.get_card(card.card_number).balance == eur(1000)


def test_unlock_releases_the_card_and_a_stale_token_is_lock_not_held(hq: RunningHQ) -> None:
    till, other = hq.till("till-1"), hq.till("till-2")
    card = till.issue_gift_card(1000)
    lock = till.lock(card.card_number, "sale-1").lock

    unlocked = till.call("UnlockCard", ts.UnlockCardRequest(
        request_id=new_id(), card_number=card.card_number, transaction_id="sale-1",
        fencing_token=lock.fencing_token,
    )).card

    assert not unlocked.HasField("lock")
    other_lock = other.lock(card.card_number, "sale-2").lock
    assert other_lock.fencing_token > lock.fencing_token
    failure = expect_failure(
        lambda: redeem(till, card.card_number, "sale-1", lock.fencing_token, eur(10))
    )
    assert failure.reason == "LOCK_NOT_HELD"


def test_a_retried_request_id_returns_the_first_result_and_applies_once(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(5000)
    lock = till.lock(card.card_number, "sale-1").lock
    request_id = new_id()

    first = redeem(till, card.card_number, "sale-1", lock.fencing_token, eur(700), request_id)
    retry = redeem(till, card.card_number, "sale-1", lock.fencing_token, eur(700), request_id)

    assert retry == first
    assert till.get_card(card.card_number).balance == eur(4300)
    debits = [e for e in hq.back_office.journal(card.card_number)
              if e.kind == bo.JOURNAL_ENTRY_KIND_REDEEM]
    assert len(debits) == 1


def test_a_request_id_reused_with_other_content_is_request_id_reused(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    request_id = new_id()
    issue = ts.IssueCardRequest(request_id=request_id, kind=common_pb2.CARD_KIND_GIFT_CARD,
                                initial_value=eur(1000))
    first = till.call("IssueCard", issue).card

    issue.initial_value.amount_minor = 2000
    failure = expect_failure(lambda: till.call("IssueCard", issue))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "REQUEST_ID_REUSED"
    assert failure.metadata == {"request_id": request_id}
    assert till.get_card(first.card_number).balance == eur(1000)


def test_a_call_without_a_valid_credential_is_unauthenticated(hq: RunningHQ) -> None:
    hq.till("till-1")
    anonymous = Till(hq.channel, "nobody", "not-a-token")
    request = ts.GetCardRequest(card_number="4111111111111111")

    no_header = expect_failure(lambda: anonymous.stub.GetCard(request, timeout=10))
    bad_token = expect_failure(lambda: anonymous.call("GetCard", request))

    for failure in (no_header, bad_token):
        assert failure.code is grpc.StatusCode.UNAUTHENTICATED
        assert failure.reason == "UNAUTHENTICATED"


def test_a_terminal_calling_the_back_office_is_permission_denied(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    as_terminal = type(hq.back_office)(hq.channel, admin_token="unused")
    as_terminal.metadata = till.metadata

    failure = expect_failure(lambda: as_terminal.call("ListTerminals", bo.ListTerminalsRequest()))

    assert failure.code is grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "PERMISSION_DENIED"


def test_an_admin_calling_the_terminal_service_is_permission_denied(hq: RunningHQ) -> None:
    admin = Till(hq.channel, "admin", ADMIN_TOKEN)

    failure = expect_failure(lambda: admin.call("GetParameters", ts.GetParametersRequest()))

    assert failure.code is grpc.StatusCode.PERMISSION_DENIED


def test_get_card_with_an_empty_request_is_invalid_argument_with_a_reason(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")

    failure = expect_failure(lambda: till.call("GetCard", ts.GetCardRequest()))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_CARD_NUMBER"
    assert failure.metadata == {"field": "card_number"}


def test_a_malformed_mutating_request_changes_nothing_and_leaves_its_id_unused(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    request_id = new_id()

    failure = expect_failure(lambda: till.call("IssueCard", ts.IssueCardRequest(
        request_id=request_id, initial_value=eur(1000))))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (failure.reason, failure.metadata) == ("INVALID_FIELD", {"field": "kind"})
    card = till.call("IssueCard", ts.IssueCardRequest(
        request_id=request_id, kind=common_pb2.CARD_KIND_GIFT_CARD, initial_value=eur(1000),
    )).card
    assert card.balance == eur(1000)


def test_a_page_token_the_server_did_not_issue_is_invalid_field(hq: RunningHQ) -> None:
    failure = expect_failure(lambda: hq.back_office.call(
        "ListTerminals", bo.ListTerminalsRequest(page_token="bm90LWEtdG9rZW4=")))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (failure.reason, failure.metadata) == ("INVALID_FIELD", {"field": "page_token"})


def test_the_journal_pages_and_sums_to_the_balance(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000)
    for i in range(4):
        lock = till.lock(card.card_number, f"sale-{i}").lock
        redeem(till, card.card_number, f"sale-{i}", lock.fencing_token, eur(100 * (i + 1)))

    entries = hq.back_office.journal(card.card_number, page_size=2)

    assert [e.entry_id for e in entries] == sorted(e.entry_id for e in entries)
    assert len(entries) == 5
    assert sum(e.amount.amount_minor for e in entries) == 9000
    assert till.get_card(card.card_number).balance == eur(9000)


def test_watch_parameters_delivers_an_update_within_one_second(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    current = till.call("GetParameters", ts.GetParametersRequest()).parameters
    stream: Any = till.stub.WatchParameters(
        ts.WatchParametersRequest(known_version=current.version), metadata=till.metadata
    )
    received: queue.Queue[tuple[float, ts.WatchParametersResponse]] = queue.Queue()
    ended_with: list[grpc.StatusCode] = []

    def read() -> None:
        try:
            for message in stream:
                received.put((time.monotonic(), message))
        except grpc.RpcError as error:
            ended_with.append(stream.code())
            del error

    reader = threading.Thread(target=read)
    reader.start()
    try:
        sent_at = time.monotonic()
        updated = hq.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), gift_card_offline_completion_allowed=True,
        )).parameters
        arrived_at, message = received.get(timeout=5)
    finally:
        stream.cancel()
        reader.join(timeout=10)

    assert ended_with == [grpc.StatusCode.CANCELLED]
    assert message.parameters == updated
    assert message.parameters.gift_card_offline_completion_allowed
    assert arrived_at - sent_at < 1.0


def test_watch_parameters_starts_with_the_current_version_when_the_caller_is_behind(
    hq: RunningHQ,
) -> None:
    till = hq.till("till-1")
    stream: Any = till.stub.WatchParameters(
        ts.WatchParametersRequest(known_version=0), metadata=till.metadata, timeout=10
    )
    try:
        first = next(stream)
    finally:
        stream.cancel()

    assert first.parameters.version >= 1
    assert first.parameters.lock_lease.seconds == 4 * 3600
