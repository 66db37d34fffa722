"""Error details through the wire (issue 12). A required field left out: every RPC answers
that the field is required and names it, in the message, in the one ErrorInfo (metadata
`field`) and in a `google.rpc.BadRequest` detail, and nothing of the request is applied or
remembered. A time in an error is written as a response's time is in JSON (RFC 3339, `Z`).

Which fields are required is read from the contract itself: every request field whose
comment in protos/ says "Required" (the descriptor set reflection serves, with comments)."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, offline_pb2, terminal_status_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import RunningHQ
from .harness import Till, eur, failure_of, new_id
from .test_offline_wire import offline_sale


def required_fields() -> dict[str, list[descriptor_pb2.FieldDescriptorProto]]:
    """Per RPC, the request fields the contract's comments call "Required"."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("storedvalue.v1").joinpath("descriptor_set.binpb").read_bytes()).file
    required: dict[str, list[descriptor_pb2.FieldDescriptorProto]] = {}
    for file in files:
        if file.package != "storedvalue.v1":
            continue
        comments = {tuple(loc.path): loc.leading_comments for loc in file.source_code_info.location}
        for m, message in enumerate(file.message_type):
            if not message.name.endswith("Request"):
                continue
            rpc = message.name.removesuffix("Request")
            for f, field in enumerate(message.field):
                if re.search(r"\bRequired\b", comments.get((4, m, 2, f), "")):
                    required.setdefault(rpc, []).append(field)
    return required


REQUIRED = required_fields()
TERMINAL_RPCS = {m.name for m in ts.DESCRIPTOR.services_by_name["TerminalService"].methods}


def expected_reason(field: descriptor_pb2.FieldDescriptorProto) -> str:
    """errors.proto: a missing card number is INVALID_CARD_NUMBER, a missing amount
    INVALID_AMOUNT, any other missing field INVALID_FIELD."""
    if field.name == "card_number":
        return "INVALID_CARD_NUMBER"
    if field.type_name == ".storedvalue.v1.Money":
        return "INVALID_AMOUNT"
    return "INVALID_FIELD"


def complete_requests(till: Till, card: str) -> dict[str, Callable[[], Message]]:
    """A well-formed request per RPC with required fields (each call a fresh request_id)."""
    token = till.lock(card, "sale-1").lock.fencing_token
    exception_id = "no-such-exception"
    reported = timestamp_pb2.Timestamp(seconds=1_790_000_000)
    return {
        "LockCard": lambda: ts.LockCardRequest(
            request_id=new_id(), card_number=card, transaction_id="sale-1"),
        "UnlockCard": lambda: ts.UnlockCardRequest(
            request_id=new_id(), card_number=card, transaction_id="sale-1",
            fencing_token=token),
        "Redeem": lambda: ts.RedeemRequest(
            request_id=new_id(), card_number=card, transaction_id="sale-1", line_id="1",
            fencing_token=token, amount=eur(100)),
        "GetCard": lambda: ts.GetCardRequest(card_number=card),
        "IssueCard": lambda: ts.IssueCardRequest(
            request_id=new_id(), kind=common_pb2.CARD_KIND_GIFT_CARD, initial_value=eur(500)),
        "AddValue": lambda: ts.AddValueRequest(
            request_id=new_id(), card_number=card, amount=eur(100)),
        "CompleteOffline": lambda: ts.CompleteOfflineRequest(
            request_id=new_id(), transaction=offline_sale(1, card, 100)),
        "SyncOfflineBatch": lambda: ts.SyncOfflineBatchRequest(
            request_id=new_id(), transactions=[offline_sale(1, card, 100)]),
        "ReportTerminalStatus": lambda: ts.ReportTerminalStatusRequest(
            request_id=new_id(), report=terminal_status_pb2.TerminalStatusReport(
                reported_at=reported)),
        "UpdateParameters": lambda: bo.UpdateParametersRequest(
            request_id=new_id(), gift_card_offline_completion_allowed=True),
        "GetStoreParameters": lambda: bo.GetStoreParametersRequest(store_id="S12"),
        "ForceUnlockCard": lambda: bo.ForceUnlockCardRequest(
            request_id=new_id(), card_number=card, reason="till 12 destroyed"),
        "ResolveOfflineException": lambda: bo.ResolveOfflineExceptionRequest(
            request_id=new_id(), exception_id=exception_id, resolution="refunded"),
        "ListJournalEntries": lambda: bo.ListJournalEntriesRequest(card_number=card),
        "RegisterTerminal": lambda: bo.RegisterTerminalRequest(
            request_id=new_id(), terminal_id="till-2"),
        "RotateTerminalCredential": lambda: bo.RotateTerminalCredentialRequest(
            request_id=new_id(), terminal_id="till-1"),
        "GetTerminalSyncStatus": lambda: bo.GetTerminalSyncStatusRequest(terminal_id="till-1"),
        "RevokeTerminal": lambda: bo.RevokeTerminalRequest(
            request_id=new_id(), terminal_id="till-1", reason="till stolen"),
        "SetTerminalStore": lambda: bo.SetTerminalStoreRequest(
            request_id=new_id(), terminal_id="till-1", store_id="S12"),
    }


def call(hq: RunningHQ, till: Till, rpc: str, request: Message) -> Any:
    return till.call(rpc, request) if rpc in TERMINAL_RPCS else hq.back_office.call(rpc, request)


def code_of(attempt: Callable[[], object]) -> grpc.StatusCode:
    try:
        attempt()
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def bad_request_of(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        found = error_details_pb2.BadRequest()
        if detail.Unpack(found):
            violations.extend((v.field, v.description) for v in found.field_violations)
    return violations


def test_the_contract_marks_required_fields_on_both_services() -> None:
    assert {"LockCard", "Redeem", "GetCard", "IssueCard", "ForceUnlockCard",
            "RegisterTerminal"} <= set(REQUIRED)
    assert [f.name for f in REQUIRED["GetCard"]] == ["card_number"]


@pytest.mark.parametrize("rpc", sorted(REQUIRED))
def test_each_required_field_left_out_is_named_as_required_and_nothing_is_applied(
    hq: RunningHQ, rpc: str
) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(10_000).card_number
    complete = complete_requests(till, card)[rpc]
    before = (hq.back_office.journal(card), hq.back_office.call(
        "ListLocks", bo.ListLocksRequest()), hq.back_office.call(
        "ListTerminals", bo.ListTerminalsRequest()))
    request_id = ""

    for field in REQUIRED[rpc]:
        request = complete()
        if "request_id" in request.DESCRIPTOR.fields_by_name:
            request_id = request.request_id  # type: ignore[attr-defined]
        request.ClearField(field.name)
        with pytest.raises(grpc.RpcError) as refused:
            call(hq, till, rpc, request)

        failure = failure_of(refused.value)
        assert (failure.code, failure.reason, failure.error_infos) == (
            grpc.StatusCode.INVALID_ARGUMENT, expected_reason(field), 1), (field.name, failure)
        assert failure.message.startswith(f"{field.name}: is required"), failure.message
        assert failure.metadata == {"field": field.name}
        ((named, description),) = bad_request_of(refused.value)
        assert named == field.name and description.startswith("is required"), description
    assert (hq.back_office.journal(card), hq.back_office.call(
        "ListLocks", bo.ListLocksRequest()), hq.back_office.call(
        "ListTerminals", bo.ListTerminalsRequest())) == before

    # The last refused request, completed, goes through validation with the same request
    # id: the refusals remembered nothing of it (no REQUEST_ID_REUSED).
    fixed = complete()
    if request_id:
        fixed.request_id = request_id  # type: ignore[attr-defined]
    # A state refusal (e.g. CARD_LOCKED, EXCEPTION_NOT_FOUND) is fine here.
    assert code_of(lambda: call(hq, till, rpc, fixed)) != grpc.StatusCode.INVALID_ARGUMENT


def test_a_money_left_without_its_currency_names_the_nested_field(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    card = till.issue_gift_card(1_000).card_number
    request = ts.AddValueRequest(request_id=new_id(), card_number=card,
                                 amount=common_pb2.Money(amount_minor=100))

    with pytest.raises(grpc.RpcError) as refused:
        till.call("AddValue", request)

    failure = failure_of(refused.value)
    assert (failure.code, failure.reason, failure.message) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "amount.currency_code: is required")
    assert bad_request_of(refused.value) == [("amount.currency_code", "is required")]
    assert till.get_card(card).balance.amount_minor == 1_000


def test_an_offline_line_without_a_card_number_is_rejected_as_required(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    sale = offline_sale(1, "", 100)

    result = till.call("CompleteOffline", ts.CompleteOfflineRequest(
        request_id=new_id(), transaction=sale)).result

    assert (result.outcome, result.reason) == (
        offline_pb2.OFFLINE_OUTCOME_REJECTED, "INVALID_CARD_NUMBER")
    assert result.message == "redeem_lines[0].card_number: is required"


def test_a_time_in_error_metadata_is_written_as_the_response_writes_it(hq: RunningHQ) -> None:
    first, second = hq.till("till-1"), hq.till("till-2")
    card = first.issue_gift_card(1_000).card_number
    lock = first.lock(card, "sale-1").lock

    with pytest.raises(grpc.RpcError) as refused:
        second.lock(card, "sale-9")

    failure = failure_of(refused.value)
    assert failure.reason == "CARD_LOCKED"
    # RFC 3339 with a Z, character for character the JSON form of the response's Timestamp.
    assert failure.metadata["lease_expires_at"] == lock.lease_expires_at.ToJsonString()
    assert failure.metadata["lease_expires_at"].endswith("Z")
    assert failure.message.endswith(f"until {lock.lease_expires_at.ToJsonString()}")
