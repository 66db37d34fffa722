"""One place maps HQ's google.rpc.Status + ErrorInfo onto the typed error hierarchy."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from storedvalue.terminal import (
    CardKind,
    CardLocked,
    CardNotFound,
    ConnectivityState,
    HQBusy,
    HQUnavailable,
    InsufficientFunds,
    InvalidArgument,
    Money,
    RequestIdReused,
    TerminalError,
    Unauthenticated,
    UnexpectedError,
    error_from_rpc,
)
from storedvalue.terminal._errors import _BY_REASON, FALLBACK_REASONS
from storedvalue.v1 import errors_pb2

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, card_number


class FailedCall(grpc.RpcError, grpc.Call):
    """A failed call as grpc hands it to the client: code, details, trailers."""

    def __init__(
        self, code: grpc.StatusCode, reason: str = "", metadata: dict[str, str] | None = None
    ) -> None:
        self._code = code
        self._trailers: tuple[tuple[str, str | bytes], ...] = ()
        if reason:
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.ErrorInfo(
                    reason=reason, domain="storedvalue.dev", metadata=metadata or {}
                )
            )
            status = status_pb2.Status(code=code.value[0], message="failed", details=[detail])
            self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "failed"

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:  # type: ignore[override]
        return self._trailers

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


CONTRACT_REASONS = [
    name.removeprefix("ERROR_REASON_")
    for name in errors_pb2.ErrorReason.keys()  # noqa: SIM118 (an enum wrapper, not a dict)
    if name != "ERROR_REASON_UNSPECIFIED"
]


@pytest.mark.parametrize(
    "reason", [reason for reason in CONTRACT_REASONS if reason not in FALLBACK_REASONS]
)
def test_every_reason_a_till_can_meet_has_its_own_error_class(reason: str) -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.FAILED_PRECONDITION, reason))
    assert not isinstance(error, UnexpectedError)
    assert reason in type(error).reasons
    assert error.reason == reason


def test_every_reason_of_the_contract_has_a_class_or_a_documented_fallback_not_both() -> None:
    from_hq = set(_BY_REASON)
    assert set(CONTRACT_REASONS) == from_hq | FALLBACK_REASONS
    assert not from_hq & FALLBACK_REASONS


@pytest.mark.parametrize("reason", sorted(FALLBACK_REASONS))
def test_a_fallback_reason_raises_its_status_codes_class_with_the_reason(reason: str) -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.NOT_FOUND, reason, {"k": "v"}))
    assert type(error) is CardNotFound
    assert (error.reason, dict(error.metadata)) == (reason, {"k": "v"})


def test_an_error_class_registers_itself_and_a_reason_has_one_class() -> None:
    class MadeUpForTheTest(TerminalError):
        reasons = ("MADE_UP_FOR_THE_TEST",)

    try:
        error = error_from_rpc(FailedCall(grpc.StatusCode.ABORTED, "MADE_UP_FOR_THE_TEST"))
        assert type(error) is MadeUpForTheTest
        with pytest.raises(TypeError, match="already MadeUpForTheTest's"):
            class Again(TerminalError):
                reasons = ("MADE_UP_FOR_THE_TEST",)
    finally:
        del _BY_REASON["MADE_UP_FOR_THE_TEST"]


def test_an_error_the_library_raises_itself_is_never_built_from_hq() -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.FAILED_PRECONDITION, "TENDER_NOT_FOUND"))
    assert type(error) is UnexpectedError and error.reason == "TENDER_NOT_FOUND"


def test_card_locked_carries_the_holder_and_the_lease_end() -> None:
    error = error_from_rpc(
        FailedCall(
            grpc.StatusCode.FAILED_PRECONDITION,
            "CARD_LOCKED",
            {
                "card": "1234",
                "holder_terminal_id": "T7",
                "holder_transaction_id": "sale-42",
                "lease_expires_at": "2030-01-02T03:04:05Z",
            },
        )
    )
    assert isinstance(error, CardLocked)
    assert (error.holder_terminal_id, error.holder_transaction_id) == ("T7", "sale-42")
    assert error.lease_expires_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_transient_codes_mean_hq_unavailable_with_an_unknown_outcome() -> None:
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        error = error_from_rpc(FailedCall(code))
        assert isinstance(error, HQUnavailable)
        assert error.request_sent


def test_unknown_reason_falls_back_on_the_status_code() -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.INVALID_ARGUMENT, "SOMETHING_NEW"))
    assert type(error) is InvalidArgument
    assert error.reason == "SOMETHING_NEW"
    assert type(error_from_rpc(FailedCall(grpc.StatusCode.INTERNAL))) is UnexpectedError


def test_unknown_card_is_card_not_found_on_the_wire(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    with pytest.raises(CardNotFound):
        terminal.balance(card_number=card_number())
    assert terminal.state is ConnectivityState.ONLINE, "a business error is no link failure"


def test_same_request_id_with_other_content_is_request_id_reused(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.issue_card(kind=CardKind.GIFT_CARD, initial_value=Money(100, "EUR"), request_id="r")
    with pytest.raises(RequestIdReused):
        terminal.issue_card(
            kind=CardKind.GIFT_CARD, initial_value=Money(200, "EUR"), request_id="r"
        )


def test_wrong_credential_is_unauthenticated(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    terminal = make_terminal("T9", config=MANUAL_SYNC)
    with pytest.raises(Unauthenticated):
        terminal.balance(card_number=card_number())


def test_insufficient_funds_says_the_balance(hq: StoreHQ) -> None:
    error = error_from_rpc(
        FailedCall(
            grpc.StatusCode.FAILED_PRECONDITION,
            "INSUFFICIENT_FUNDS",
            {"balance_minor": "100", "requested_minor": "500", "currency_code": "EUR"},
        )
    )
    assert isinstance(error, InsufficientFunds)
    assert (error.balance_minor, error.requested_minor) == (100, 500)
    assert isinstance(error, TerminalError)


def test_hq_busy_is_transient_and_says_nothing_was_applied() -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.UNAVAILABLE, "HQ_BUSY"))
    assert isinstance(error, HQBusy)
    assert isinstance(error, HQUnavailable)
    assert error.request_sent is False
    assert error.reason == "HQ_BUSY"
