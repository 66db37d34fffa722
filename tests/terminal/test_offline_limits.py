"""The offline risk limits: the till refuses a line past one while offline (the sale stays
open, nothing is lost), and HQ checks them again at sync against the parameters version the
till applied."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import duration_pb2

from storedvalue.terminal import (
    CardKind,
    ConnectivityState,
    HQUnavailable,
    Money,
    OfflineLimitExceeded,
    SaleLine,
    SaleStatus,
    SyncOutcome,
    Terminal,
    UnsyncedAmount,
)
from storedvalue.terminal._database import DATABASE_FILE
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, parameters_pb2

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, eur


def gift_card_limits(hq: StoreHQ, **limits: object) -> int:
    """Set gift card offline limits at HQ; the version made."""
    return hq.desk.update_parameters(bo.UpdateParametersRequest(
        gift_card_offline_limits=parameters_pb2.OfflineRiskLimits(**limits)))  # type: ignore[arg-type]


def euros(cents: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=cents, currency_code="EUR")


def online_with(hq: StoreHQ, make_terminal: TerminalFactory, version: int) -> Terminal:
    terminal = make_terminal(config=MANUAL_SYNC)
    assert terminal.wait_for_parameters(version=version, timeout_s=10)
    return terminal


def cut_link(hq: StoreHQ, terminal: Terminal) -> None:
    """The link drops and the till notices (before the sale: no Redeem is left unanswered)."""
    hq.link.up = False
    with pytest.raises(HQUnavailable):
        terminal.balance(card_number="4000000000000002")
    assert terminal.state is ConnectivityState.OFFLINE


def test_a_line_over_the_largest_offline_line_is_refused_and_the_sale_stays_open(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    version = gift_card_limits(hq, max_line_amount=euros(2000))
    number = hq.add_card(balance=5000)
    terminal = online_with(hq, make_terminal, version)
    terminal.add_tender(transaction_id="S1", card_number=number)
    cut_link(hq, terminal)

    with pytest.raises(OfflineLimitExceeded) as refused:
        terminal.complete_sale(transaction_id="S1", lines=[SaleLine("L1", number, eur(2500))])
    open_sale = terminal.sale(transaction_id="S1")
    within = terminal.complete_sale(transaction_id="S1",
                                    lines=[SaleLine("L1", number, eur(2000))])

    assert refused.value.limit == "max_line_amount"
    assert refused.value.amount_left == Money(2000, "EUR")
    assert refused.value.line_id == "L1"
    assert refused.value.reason == "OFFLINE_LIMIT_EXCEEDED"
    assert open_sale is not None and open_sale.status is SaleStatus.OPEN
    assert within.completed_offline
    assert terminal.unsynced_amounts() == (UnsyncedAmount(CardKind.GIFT_CARD, eur(2000), 1),)


def test_sales_past_the_unsynced_total_are_refused_until_a_sync_frees_the_exposure(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    version = gift_card_limits(hq, max_unsynced_amount=euros(3000))
    numbers = [hq.add_card(balance=5000) for _ in range(4)]
    terminal = online_with(hq, make_terminal, version)
    for sale, number in enumerate(numbers, start=1):
        terminal.add_tender(transaction_id=f"S{sale}", card_number=number)
    cut_link(hq, terminal)

    for sale, cents in ((1, 2000), (2, 1000)):
        assert terminal.complete_sale(transaction_id=f"S{sale}", lines=[
            SaleLine("L1", numbers[sale - 1], eur(cents))]).completed_offline
    with pytest.raises(OfflineLimitExceeded) as refused:
        terminal.complete_sale(transaction_id="S3", lines=[SaleLine("L1", numbers[2], eur(1))])
    exposure = terminal.unsynced_amounts()
    outbox = len(terminal.outbox())
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    synced = terminal.sync_now()
    cut_link(hq, terminal)
    after_sync = terminal.complete_sale(transaction_id="S4",
                                        lines=[SaleLine("L1", numbers[3], eur(3000))])

    assert refused.value.limit == "max_unsynced_amount"
    assert refused.value.amount_left == Money(0, "EUR")
    assert exposure == (UnsyncedAmount(CardKind.GIFT_CARD, eur(3000), 2),)
    assert outbox == 2, "the refused sale wrote nothing"
    assert (synced.applied, synced.remaining) == (2, 0)
    assert after_sync.completed_offline
    assert terminal.sale(transaction_id="S3").status is SaleStatus.OPEN  # type: ignore[union-attr]


def test_a_till_out_of_touch_longer_than_allowed_refuses_offline_sales_after_a_restart(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    version = gift_card_limits(
        hq, max_offline_duration=duration_pb2.Duration(seconds=2 * 3600))
    recent, stale = hq.add_card(balance=5000), hq.add_card(balance=5000)
    terminal = online_with(hq, make_terminal, version)
    terminal.add_tender(transaction_id="S1", card_number=recent)
    terminal.add_tender(transaction_id="S2", card_number=stale)
    hq.link.up = False
    completed = terminal.complete_sale(transaction_id="S1",
                                       lines=[SaleLine("L1", recent, eur(100))])
    terminal.close()
    # The till stays switched off, out of touch with HQ, for three hours.
    three_hours_ago = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    with sqlite3.connect(tmp_path / "T1" / DATABASE_FILE) as db:
        db.execute("UPDATE link_contact SET last_reached_hq_at = ?", (three_hours_ago,))

    restarted = make_terminal(config=MANUAL_SYNC, data_dir=tmp_path / "T1")
    with pytest.raises(OfflineLimitExceeded) as refused:
        restarted.complete_sale(transaction_id="S2", lines=[SaleLine("L1", stale, eur(100))])

    assert completed.completed_offline
    assert restarted.state is ConnectivityState.OFFLINE
    assert restarted.last_reached_hq_at == datetime.fromisoformat(three_hours_ago)
    assert refused.value.limit == "max_offline_duration"
    assert refused.value.time_left == timedelta(0)
    assert restarted.sale(transaction_id="S2").status is SaleStatus.OPEN  # type: ignore[union-attr]


def test_hq_records_an_exception_when_a_till_with_an_older_copy_of_the_parameters_went_past_a_limit(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    version = gift_card_limits(hq, max_line_amount=euros(2000))
    number = hq.add_card(balance=5000)
    terminal = online_with(hq, make_terminal, version)
    terminal.add_tender(transaction_id="S1", card_number=number)
    terminal.close()
    # What an older till library kept of that version: it did not know the limits.
    older_copy = parameters_pb2.Parameters(
        version=version, gift_card_offline_completion_allowed=True,
        credit_memo_offline_completion_allowed=True,
        lock_lease=duration_pb2.Duration(seconds=4 * 3600),
    ).SerializeToString()
    with sqlite3.connect(tmp_path / "T1" / DATABASE_FILE) as db:
        db.execute("UPDATE parameters SET parameters = ?", (older_copy,))
    hq.link.up = False
    older_till = make_terminal(config=MANUAL_SYNC, data_dir=tmp_path / "T1")
    sold = older_till.complete_sale(transaction_id="S1",
                                    lines=[SaleLine("L1", number, eur(2500))])
    hq.link.up = True
    assert older_till.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    summary = older_till.sync_now()
    (report,) = older_till.sync_reports()
    exceptions = hq.desk.admin("ListOfflineExceptions", bo.ListOfflineExceptionsRequest())

    assert sold.completed_offline
    assert summary.applied_with_exception == 1
    assert (report.outcome, report.reason) == (SyncOutcome.APPLIED_WITH_EXCEPTION,
                                               "OFFLINE_LINE_LIMIT_EXCEEDED")
    assert hq.card(number).balance == 2500, "applied anyway: the goods left the store"
    (exception,) = exceptions.exceptions
    assert exception.kind == bo.OFFLINE_EXCEPTION_KIND_OFFLINE_LIMIT_EXCEEDED
    assert (exception.reason, exception.line_id, exception.amount.amount_minor) == (
        "OFFLINE_LINE_LIMIT_EXCEEDED", "L1", 2500)
    assert f"parameters version {version} allowed at most 2000 EUR" in exception.message


def test_a_till_within_the_limits_of_the_version_it_applied_gets_no_exception_after_hq_lowered_them(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    version = gift_card_limits(hq, max_line_amount=euros(5000))
    number = hq.add_card(balance=5000)
    terminal = online_with(hq, make_terminal, version)
    terminal.add_tender(transaction_id="S1", card_number=number)
    hq.link.up = False
    sold = terminal.complete_sale(transaction_id="S1", lines=[SaleLine("L1", number, eur(3000))])
    lowered = gift_card_limits(hq, max_line_amount=euros(1000))  # while the till is offline
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    summary = terminal.sync_now()

    assert sold.completed_offline and lowered > version
    assert (summary.applied, summary.applied_with_exception) == (1, 0)
    assert terminal.wait_for_parameters(version=lowered, timeout_s=10)
    assert terminal.parameters.gift_card_offline_limits.max_line_amount == eur(1000)
