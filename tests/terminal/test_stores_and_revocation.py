"""Parameters per store, what the back office sees of each till, and revoking a till: the
real HQ in this process, tills on real SQLite files."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from in_process_hq import error_reason

from storedvalue.terminal import (
    ConnectivityState,
    Parameters,
    SaleLine,
    Terminal,
    TerminalConfig,
    Unauthenticated,
)
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, parameters_pb2, terminal_status_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, eur, wait_until

WATCHING = TerminalConfig(call_timeout_s=0.5, probe_initial_backoff_s=0.02,
                          probe_max_backoff_s=0.2, sync_automatically=False)


def in_store(hq: StoreHQ, make_terminal: TerminalFactory, terminal_id: str, store_id: str,
             config: TerminalConfig = WATCHING) -> Terminal:
    hq.tokens[terminal_id] = hq.desk.register(terminal_id, store_id=store_id)
    terminal = make_terminal(terminal_id, config=config)
    assert terminal.wait_for_parameters_matching(lambda p: p.store_id == store_id
                                                 and p.version > 0, timeout_s=10)
    return terminal


def test_a_store_override_reaches_only_that_stores_tills_within_a_second(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    fraud_prone = in_store(hq, make_terminal, "A-1", "store-A")
    other = in_store(hq, make_terminal, "B-1", "store-B")
    seen: dict[str, list[Parameters]] = {"A-1": [], "B-1": []}
    fraud_prone.on_parameters_change(seen["A-1"].append)
    other.on_parameters_change(seen["B-1"].append)

    started = time.monotonic()
    override = hq.desk.update_parameters(bo.UpdateParametersRequest(
        store_id="store-A", gift_card_offline_completion_allowed=False))
    assert fraud_prone.wait_for_parameters(version=override, timeout_s=1.0)
    reached_in = time.monotonic() - started
    everyone = hq.desk.update_parameters(bo.UpdateParametersRequest(
        credit_memo_offline_limits=parameters_pb2.OfflineRiskLimits(
            max_line_amount=common_pb2.Money(amount_minor=5000, currency_code="EUR"))))
    assert fraud_prone.wait_for_parameters(version=everyone, timeout_s=1.0)
    assert other.wait_for_parameters(version=everyone, timeout_s=1.0)

    assert reached_in < 1.0
    assert [p.version for p in seen["A-1"]] == [override, everyone]
    assert [p.version for p in seen["B-1"]] == [everyone], "store B never saw A's override"
    assert not fraud_prone.parameters.gift_card_offline_completion_allowed
    assert other.parameters.gift_card_offline_completion_allowed
    assert fraud_prone.parameters.credit_memo_offline_limits.max_line_amount == eur(5000)
    assert other.parameters.credit_memo_offline_limits.max_line_amount == eur(5000)


def test_a_till_moved_to_another_store_follows_that_stores_parameters(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    store_b = hq.desk.update_parameters(bo.UpdateParametersRequest(
        store_id="store-B", credit_memo_offline_completion_allowed=False))
    store_a = hq.desk.update_parameters(bo.UpdateParametersRequest(
        store_id="store-A", lock_lease=duration_pb2.Duration(seconds=3600)))
    till = in_store(hq, make_terminal, "A-1", "store-A")
    # Store B's parameters are older than those the till has: it takes them all the same.
    assert till.parameters.version == store_a > store_b

    hq.desk.admin("SetTerminalStore", bo.SetTerminalStoreRequest(
        request_id=str(uuid.uuid4()), terminal_id="A-1", store_id="store-B"))

    assert till.wait_for_parameters_matching(lambda p: p.store_id == "store-B", timeout_s=5)
    assert till.parameters.version == store_b
    assert not till.parameters.credit_memo_offline_completion_allowed
    assert till.parameters.lock_lease == timedelta(hours=4)


def test_a_till_reports_its_link_history_and_exposure_when_it_reaches_hq(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=5000)
    till = in_store(hq, make_terminal, "A-1", "store-A", config=MANUAL_SYNC)
    till.add_tender(transaction_id="S1", card_number=number)
    hq.link.up = False
    till.complete_sale(transaction_id="S1", lines=[SaleLine("L1", number, eur(1250))])
    hq.link.up = True
    assert till.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    wait_until(lambda: hq.desk.terminal("A-1").last_report.outbox.transaction_count == 1)
    reported = hq.desk.terminal("A-1")
    till.sync_now()
    after_sync = hq.desk.terminal("A-1")

    assert reported.store_id == "store-A"
    assert reported.link.state == terminal_status_pb2.LINK_STATE_ONLINE
    states = [change.state for change in reported.last_report.link_history]
    assert states[-2:] == [terminal_status_pb2.LINK_STATE_OFFLINE,
                           terminal_status_pb2.LINK_STATE_ONLINE]
    (held,) = reported.last_report.outbox.unsynced_amounts
    assert (held.card_kind, held.amount.amount_minor, held.line_count) == (
        common_pb2.CARD_KIND_GIFT_CARD, 1250, 1)
    assert after_sync.last_report.outbox.transaction_count == 0
    assert not after_sync.last_report.outbox.unsynced_amounts
    assert after_sync.sync_status.highest_contiguous_sequence == 1


def test_a_revoked_till_is_refused_its_locks_released_and_its_unsynced_sales_stay_visible(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    held, sold = hq.add_card(balance=5000), hq.add_card(balance=5000)
    till = make_terminal("T1", config=MANUAL_SYNC)
    till.add_tender(transaction_id="S1", card_number=held)
    till.add_tender(transaction_id="S2", card_number=sold)
    hq.link.up = False
    till.complete_sale(transaction_id="S2", lines=[SaleLine("L1", sold, eur(700))])
    hq.link.up = True
    assert till.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    wait_until(lambda: hq.desk.terminal("T1").last_report.outbox.transaction_count == 1)
    stream = hq.desk.till("WatchParameters", ts.WatchParametersRequest(known_version=0),
                          token=hq.tokens["T1"])
    next(stream)  # the stream is open: it starts with the current version
    ended: list[grpc.RpcError] = []
    watcher = threading.Thread(target=lambda: _drain(stream, ended), daemon=True)
    watcher.start()

    revoked = hq.desk.admin("RevokeTerminal", bo.RevokeTerminalRequest(
        request_id=str(uuid.uuid4()), terminal_id="T1", reason="till stolen"))
    with pytest.raises(Unauthenticated):
        till.balance(card_number=held)
    summary = till.sync_now()
    watcher.join(timeout=5)
    listed = hq.desk.terminal("T1")

    assert sorted(lock.card_number for lock in revoked.released_locks) == sorted([held, sold])
    assert hq.card(held).lock is None and hq.card(sold).lock is None
    assert hq.desk.journal(held)[-1].note == "admin: terminal T1 revoked: till stolen"
    assert isinstance(summary.error, Unauthenticated)
    assert summary.remaining == 1, "the till's outbox keeps what HQ never took"
    assert hq.card(sold).balance == 5000
    assert [error_reason(error) for error in ended] == ["UNAUTHENTICATED"]
    assert listed.HasField("revoked_at")
    assert (listed.revoked_by, listed.revocation_reason) == ("admin", "till stolen")
    (unsynced,) = listed.last_report.outbox.unsynced_amounts
    assert unsynced.amount.amount_minor == 700
    refused = _refusal(lambda: hq.desk.admin("RotateTerminalCredential",
                                             bo.RotateTerminalCredentialRequest(
                                                 request_id=str(uuid.uuid4()),
                                                 terminal_id="T1")))
    assert (refused.code(), error_reason(refused)) == (grpc.StatusCode.FAILED_PRECONDITION,
                                                       "TERMINAL_REVOKED")


def _drain(stream: object, ended: list[grpc.RpcError]) -> None:
    try:
        for _message in stream:  # type: ignore[attr-defined]
            pass
    except grpc.RpcError as error:
        ended.append(error)


def _refusal(call: object) -> grpc.RpcError:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call was not refused")

