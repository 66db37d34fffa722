"""Bad input through the wire (issue 9): always a documented status with exactly one
ErrorInfo, never INTERNAL, and nothing changed. A bad offline item is REJECTED and kept for
review without failing its batch or blocking the items after it."""

from __future__ import annotations

import base64
from collections.abc import Callable
from functools import partial

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import RunningHQ
from .harness import Failure, Till, eur, expect_failure, failure_of, new_id
from .test_offline_wire import offline_sale, sync

MAX_BALANCE_MINOR = 10**15


def assert_invalid(failure: Failure, reason: str = "INVALID_FIELD") -> None:
    assert (failure.code, failure.reason, failure.error_infos) == (
        grpc.StatusCode.INVALID_ARGUMENT, reason, 1), failure


def token(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode()


def status_of(hq: RunningHQ, terminal_id: str) -> offline_pb2.TerminalSyncStatus:
    status: offline_pb2.TerminalSyncStatus = hq.back_office.call(
        "GetTerminalSyncStatus", bo.GetTerminalSyncStatusRequest(terminal_id=terminal_id)
    ).sync_status
    return status


# -- offline items ---------------------------------------------------------------------------


def test_an_unreadable_completion_time_rejects_that_item_only(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000).card_number
    far = offline_sale(1, card, 100)
    far.completed_at.seconds = 10**15
    negative_nanos = offline_sale(2, card, 100)
    negative_nanos.completed_at.nanos = -1
    good = offline_sale(3, card, 100)

    first = sync(till, far, negative_nanos, good).results
    resent = sync(till, far, negative_nanos, good).results  # no poison item: same answers

    assert [(r.outcome, r.reason) for r in first[:2]] == [
        (offline_pb2.OFFLINE_OUTCOME_REJECTED, "INVALID_FIELD")] * 2
    assert first[2].outcome != offline_pb2.OFFLINE_OUTCOME_REJECTED
    assert [(r.original_outcome, r.reason) for r in resent] == [
        (r.original_outcome, r.reason) for r in first]
    assert till.get_card(card).balance == eur(9_900)
    kept = hq.back_office.call("ListOfflineExceptions", bo.ListOfflineExceptionsRequest(
        terminal_id="till-1")).exceptions
    assert {e.transaction_id for e in kept if e.kind == bo.OFFLINE_EXCEPTION_KIND_REJECTED} == {
        "offline-1", "offline-2"}


def test_an_item_without_an_id_or_sequence_number_is_rejected_alone(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000).card_number
    no_id = offline_sale(1, card, 100, txn="")
    no_id.transaction_id = ""
    no_sequence = offline_sale(0, card, 100, txn="offline-x")
    nul_id = offline_sale(2, card, 100, txn="sale\x00-2")
    long_unlock = offline_sale(3, card, 100)
    long_unlock.unlocks.add(card_number=card, transaction_id="u" * 129)
    good = offline_sale(4, card, 100)

    results = sync(till, no_id, no_sequence, nul_id, long_unlock, good).results

    assert [r.outcome for r in results[:4]] == [offline_pb2.OFFLINE_OUTCOME_REJECTED] * 4
    assert results[4].outcome != offline_pb2.OFFLINE_OUTCOME_REJECTED
    assert till.get_card(card).balance == eur(9_900)


def test_a_sequence_number_far_past_the_highest_seen_leaves_no_gap(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000).card_number

    far, next_one = sync(till, offline_sale(2**63 - 1, card, 100),
                         offline_sale(1, card, 100)).results

    assert (far.outcome, far.reason) == (offline_pb2.OFFLINE_OUTCOME_REJECTED, "INVALID_FIELD")
    assert next_one.outcome != offline_pb2.OFFLINE_OUTCOME_REJECTED
    status = status_of(hq, "till-1")
    assert (status.highest_sequence_seen, list(status.gaps)) == (1, [])


def test_an_offline_debit_past_the_largest_balance_is_rejected_and_kept(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(100).card_number
    huge = offline_sale(1, card, MAX_BALANCE_MINOR, lines=2)
    good = offline_sale(2, card, 50)

    (refused, applied) = sync(till, huge, good).results

    assert (refused.outcome, refused.reason) == (offline_pb2.OFFLINE_OUTCOME_REJECTED,
                                                 "LIMIT_EXCEEDED")
    assert applied.outcome != offline_pb2.OFFLINE_OUTCOME_REJECTED
    assert till.get_card(card).balance == eur(50)


# -- online calls ----------------------------------------------------------------------------


def test_adding_value_past_the_largest_balance_is_limit_exceeded(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(MAX_BALANCE_MINOR).card_number

    failure = expect_failure(lambda: till.call("AddValue", ts.AddValueRequest(
        request_id=new_id(), card_number=card, amount=eur(1))))

    assert_invalid(failure, "LIMIT_EXCEEDED")
    assert failure.metadata["limit"] == "max_balance_minor"
    assert till.get_card(card).balance == eur(MAX_BALANCE_MINOR)


def test_a_currency_with_a_trailing_newline_is_refused(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    failure = expect_failure(lambda: till.call("IssueCard", ts.IssueCardRequest(
        request_id=new_id(), kind=common_pb2.CARD_KIND_GIFT_CARD,
        initial_value=common_pb2.Money(amount_minor=100, currency_code="EUR\n"))))
    assert_invalid(failure)


def test_ids_with_nul_or_line_breaks_are_refused_and_change_nothing(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1_000).card_number
    calls: list[Callable[[], object]] = [
        lambda: till.call("LockCard", ts.LockCardRequest(
            request_id=new_id(), card_number=card, transaction_id="sale\x00")),
        lambda: till.call("LockCard", ts.LockCardRequest(
            request_id="id\x00", card_number=card, transaction_id="sale-1")),
        lambda: hq.back_office.call("RegisterTerminal", bo.RegisterTerminalRequest(
            request_id=new_id(), terminal_id="till-2\n")),
        lambda: hq.back_office.call("ListLocks", bo.ListLocksRequest(terminal_id="t\x00")),
        lambda: hq.back_office.call("ListOfflineExceptions", bo.ListOfflineExceptionsRequest(
            card_number="12\x00")),
    ]
    for call in calls:
        failure = expect_failure(call)
        assert failure.code is grpc.StatusCode.INVALID_ARGUMENT and failure.error_infos == 1
    assert not till.get_card(card).HasField("lock")
    terminals = hq.back_office.call("ListTerminals", bo.ListTerminalsRequest()).terminals
    assert [t.terminal_id for t in terminals] == ["till-1"]


def test_free_text_is_bounded(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1_000).card_number
    till.lock(card, "sale-1")

    failure = expect_failure(lambda: hq.back_office.call("ForceUnlockCard",
                                                         bo.ForceUnlockCardRequest(
        request_id=new_id(), card_number=card, reason="r" * 1_000_000)))

    assert_invalid(failure)
    assert till.get_card(card).HasField("lock")


def test_a_lock_lease_that_is_not_a_valid_duration_is_refused(hq: RunningHQ) -> None:
    before = hq.back_office.call("ListParameterVersions", bo.ListParameterVersionsRequest())
    for lease in (duration_pb2.Duration(seconds=2**62),
                  duration_pb2.Duration(seconds=3_600, nanos=-1),
                  duration_pb2.Duration(seconds=-3_600, nanos=5)):
        failure = expect_failure(partial(
            hq.back_office.call, "UpdateParameters",
            bo.UpdateParametersRequest(request_id=new_id(), lock_lease=lease)))
        assert_invalid(failure)
    after = hq.back_office.call("ListParameterVersions", bo.ListParameterVersionsRequest())
    assert after == before


def test_page_tokens_this_server_never_issued_are_invalid_arguments(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1_000).card_number
    lists: dict[str, Callable[[str], object]] = {
        "journal": lambda t: hq.back_office.call("ListJournalEntries",
                                                 bo.ListJournalEntriesRequest(
            card_number=card, page_token=t)),
        "versions": lambda t: hq.back_office.call("ListParameterVersions",
                                                  bo.ListParameterVersionsRequest(page_token=t)),
        "exceptions": lambda t: hq.back_office.call(
            "ListOfflineExceptions", bo.ListOfflineExceptionsRequest(page_token=t)),
        "locks": lambda t: hq.back_office.call("ListLocks", bo.ListLocksRequest(page_token=t)),
        "terminals": lambda t: hq.back_office.call("ListTerminals",
                                                   bo.ListTerminalsRequest(page_token=t)),
    }
    numeric = {"journal", "versions", "exceptions"}  # their cursors are int64 positions
    for name, call in lists.items():
        prefix = name.encode() + b":"
        bad_tokens = [
            token(prefix + "²".encode()),
            token(prefix + b"9" * 5_000),
            token(prefix + b"\xff\xfe"),
            token(prefix + b"a\x00b"),
            token(b"other:1"),
            "not base64 at all!",
            "a" * 100_000,
        ]
        if name in numeric:
            bad_tokens += [token(prefix + b"9999999999999999999"), token(prefix + b"-1")]
        for bad in bad_tokens:
            failure = expect_failure(partial(call, bad))
            assert_invalid(failure)
            assert failure.metadata["field"] == "page_token", (name, bad[:40])


def test_undecodable_request_bytes_are_invalid_argument_after_authentication(
    hq: RunningHQ,
) -> None:
    till: Till = hq.till("till-1")
    garbage = bytes.fromhex("0a02fffe")  # field 1, a string that is not UTF-8
    truncated = b"\x0a\x05ab"  # a length running past the end
    methods = {  # an empty message has no string to mistype: only truncation is bad there
        "/storedvalue.v1.TerminalService/LockCard": (till.metadata, (garbage, truncated)),
        "/storedvalue.v1.TerminalService/GetParameters": (till.metadata, (truncated,)),
        "/storedvalue.v1.BackOfficeService/ListJournalEntries": (
            hq.back_office.metadata, (garbage, truncated)),
    }
    for method, (credential, bodies) in methods.items():
        raw = hq.channel.unary_unary(method, request_serializer=None,
                                     response_deserializer=None)
        for body in bodies:
            try:
                raw(body, metadata=credential, timeout=10)
            except grpc.RpcError as error:
                assert_invalid(failure_of(error), "MALFORMED_REQUEST")
            else:
                raise AssertionError(f"{method} accepted {body!r}")
            try:
                raw(body, timeout=10)  # no credential: that comes first
            except grpc.RpcError as error:
                failure = failure_of(error)
                assert (failure.code, failure.reason) == (
                    grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"), method
            else:
                raise AssertionError(f"{method} accepted {body!r} without a credential")

    stream = hq.channel.unary_stream("/storedvalue.v1.TerminalService/WatchParameters",
                                     request_serializer=None, response_deserializer=None)
    try:
        list(stream(truncated, metadata=till.metadata, timeout=10))
    except grpc.RpcError as error:
        assert_invalid(failure_of(error), "MALFORMED_REQUEST")
    else:
        raise AssertionError("WatchParameters accepted undecodable bytes")


def test_a_timestamp_sent_in_range_still_round_trips(hq: RunningHQ) -> None:
    """The edge of the Timestamp range is a valid completion time."""
    till = hq.till("till-1")
    card = till.issue_gift_card(1_000).card_number
    sale = offline_sale(1, card, 100)
    sale.completed_at.CopyFrom(timestamp_pb2.Timestamp(seconds=253_402_300_799,
                                                       nanos=999_999_999))
    (result,) = sync(till, sale).results
    assert result.outcome != offline_pb2.OFFLINE_OUTCOME_REJECTED


def test_undecodable_bytes_to_health_and_reflection_are_invalid_argument(hq: RunningHQ) -> None:
    """The services that are not storedvalue's own (health, reflection) answer bad bytes as
    ours do, not with gRPC's INTERNAL; a well-formed request still gets its answer."""
    truncated = b"\x0a\x05ab"  # field 1 with a length running past the end
    check = hq.channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None,
                                   response_deserializer=None)
    watch = hq.channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=None,
                                    response_deserializer=None)
    for call in (lambda: check(truncated, timeout=10),
                 lambda: list(watch(truncated, timeout=10))):
        try:
            call()
        except grpc.RpcError as error:
            assert_invalid(failure_of(error), "MALFORMED_REQUEST")
        else:
            raise AssertionError("health accepted undecodable bytes")
    assert check(b"", timeout=10) == b"\x08\x01"  # status: SERVING

    for version in ("v1", "v1alpha"):
        reflect = hq.channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=None, response_deserializer=None)
        list_services = b"\x3a\x01*"  # list_services: "*"
        answers = list(reflect(iter([list_services]), timeout=10))
        assert len(answers) == 1 and b"storedvalue.v1.TerminalService" in answers[0], version
        try:
            list(reflect(iter([list_services, truncated]), timeout=10))
        except grpc.RpcError as error:
            assert_invalid(failure_of(error), "MALFORMED_REQUEST")
        else:
            raise AssertionError(f"reflection {version} accepted undecodable bytes")
