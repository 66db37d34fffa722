"""The offline risk limits as pure rules: the till's eligibility (client side) and HQ's
second check at sync; how a store's override and the global parameters combine."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from storedvalue.hq.domain.cards import CardKind as HQCardKind
from storedvalue.hq.domain.errors import InvalidArgument
from storedvalue.hq.domain.money import Money as HQMoney
from storedvalue.hq.domain.offline_limits import offline_limit_breaches
from storedvalue.hq.domain.offline_transactions import (
    OfflineRedeemLine,
    OfflineTransaction,
    UnsyncedAmount,
)
from storedvalue.hq.domain.parameters import (
    GLOBAL,
    NO_VALUES,
    OfflineRiskLimits,
    ParametersChange,
    ParameterSet,
    effective,
    initial_set,
)
from storedvalue.hq.domain.parameters import Parameters as HQParameters
from storedvalue.terminal import (
    NO_PARAMETERS,
    CardKind,
    Money,
    Parameters,
    SaleLine,
    Tender,
)
from storedvalue.terminal import (
    OfflineRiskLimits as TillLimits,
)
from storedvalue.terminal._offline_eligibility import offline_refusals

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


# -- the till ------------------------------------------------------------------------------


def tender(card: str, kind: CardKind = CardKind.GIFT_CARD) -> Tender:
    return Tender(transaction_id="S1", card_number=card, kind=kind,
                  balance=Money(100_000, "EUR"), fencing_token=1, lease_expires_at=None)


def till_parameters(limits: TillLimits) -> Parameters:
    return replace(NO_PARAMETERS, version=3, gift_card_offline_completion_allowed=True,
                   credit_memo_offline_completion_allowed=True, gift_card_offline_limits=limits)


def refusals(lines: list[SaleLine], limits: TillLimits, *, unsynced: int = 0,
             last_reached: datetime | None = NOW) -> list[tuple[str, str, Money | None]]:
    found = offline_refusals(
        lines, {line.card_number: tender(line.card_number) for line in lines},
        till_parameters(limits),
        unsynced={(CardKind.GIFT_CARD, "EUR"): unsynced}, last_reached_hq_at=last_reached,
        now=NOW,
    )
    return [(r.line_id, r.why, r.amount_left) for r in found]


def eur(cents: int) -> Money:
    return Money(cents, "EUR")


def test_no_limit_set_means_unlimited_as_before() -> None:
    assert refusals([SaleLine("L1", "c1", eur(100_000))], TillLimits(), unsynced=10**12,
                    last_reached=None) == []


def test_the_sales_lines_count_towards_the_unsynced_total_one_after_the_other() -> None:
    lines = [SaleLine("L1", "c1", eur(1500)), SaleLine("L2", "c2", eur(1000)),
             SaleLine("L3", "c3", eur(600))]

    found = refusals(lines, TillLimits(max_unsynced_amount=eur(5000)), unsynced=2500)

    assert found == [("L3", "OFFLINE_UNSYNCED_LIMIT_EXCEEDED", eur(0))]


def test_a_line_in_another_currency_than_a_limit_is_refused_with_nothing_left() -> None:
    line = SaleLine("L1", "c1", Money(100, "USD"))
    parameters = till_parameters(TillLimits(max_line_amount=eur(5000)))

    found = offline_refusals([line], {"c1": Tender("S1", "c1", CardKind.GIFT_CARD,
                                                   Money(900, "USD"), 1, None)},
                             parameters, unsynced={}, last_reached_hq_at=NOW, now=NOW)

    assert [(r.why, r.amount_left, r.limit) for r in found] == [
        ("OFFLINE_LINE_LIMIT_EXCEEDED", eur(0), "max_line_amount")]


def test_the_time_limit_counts_from_the_last_answer_and_refuses_when_that_is_unknown() -> None:
    limits = TillLimits(max_offline_duration=timedelta(hours=2))
    line = [SaleLine("L1", "c1", eur(100))]

    assert refusals(line, limits, last_reached=NOW - timedelta(hours=2)) == []
    assert refusals(line, limits, last_reached=NOW - timedelta(hours=2, seconds=1)) == [
        ("L1", "OFFLINE_DURATION_EXCEEDED", None)]
    assert refusals(line, limits, last_reached=None) == [
        ("L1", "OFFLINE_DURATION_EXCEEDED", None)]


def test_a_kind_not_allowed_offline_is_refused_before_any_limit() -> None:
    parameters = till_parameters(TillLimits(max_line_amount=eur(1)))

    closed = replace(parameters, gift_card_offline_completion_allowed=False)
    found = offline_refusals([SaleLine("L1", "c1", eur(100))], {"c1": tender("c1")}, closed,
                             unsynced={}, last_reached_hq_at=NOW, now=NOW)

    assert [r.why for r in found] == ["KIND_NOT_ALLOWED"]


# -- HQ at sync ----------------------------------------------------------------------------


def hq_params(limits: OfflineRiskLimits) -> HQParameters:
    global_set = initial_set(NOW)
    changed = ParametersChange(True, True, gift_card_offline_limits=limits).applied(
        global_set.values, store=False)
    return effective(ParameterSet(7, GLOBAL, changed, NOW, "admin"), None)


def breaches(lines: list[int], limits: OfflineRiskLimits, *, declared: int | None = None,
             reached: datetime | None = None) -> list[tuple[str, str]]:
    redeem = tuple(OfflineRedeemLine(f"L{i}", f"c{i}", HQCardKind.GIFT_CARD,
                                     HQMoney(cents, "EUR"), 1) for i, cents in enumerate(lines))
    held = () if declared is None else (
        UnsyncedAmount(HQCardKind.GIFT_CARD, HQMoney(declared, "EUR"), 9),)
    txn = OfflineTransaction("S1", 1, NOW, 7, redeem_lines=redeem, last_reached_hq_at=reached,
                             unsynced_amounts=held)
    found = offline_limit_breaches(txn, list(redeem), lambda _line: HQCardKind.GIFT_CARD,
                                   hq_params(limits))
    return [(b.line_id, b.reason) for b in found]


def test_hq_counts_what_the_till_declared_unsynced_but_never_less_than_its_own_lines() -> None:
    limits = OfflineRiskLimits(max_unsynced_amount=HQMoney(5000, "EUR"))

    assert breaches([2000, 2000], limits) == []
    assert breaches([2000, 2000], limits, declared=6000) == [
        ("L1", "OFFLINE_UNSYNCED_LIMIT_EXCEEDED")]
    assert breaches([3000, 3000], limits, declared=100) == [
        ("L1", "OFFLINE_UNSYNCED_LIMIT_EXCEEDED")]


def test_hq_checks_the_line_and_time_limits_on_each_line() -> None:
    limits = OfflineRiskLimits(max_line_amount=HQMoney(1000, "EUR"),
                               max_offline_duration=timedelta(hours=1))

    assert breaches([1000, 1001], limits, reached=NOW - timedelta(minutes=59)) == [
        ("L1", "OFFLINE_LINE_LIMIT_EXCEEDED")]
    assert breaches([500], limits, reached=NOW - timedelta(hours=2)) == [
        ("L0", "OFFLINE_DURATION_EXCEEDED")]
    assert breaches([500], limits, reached=None) == [], "a till that did not say: unchecked"


# -- global and store parameters -----------------------------------------------------------


def test_a_store_override_changes_only_what_it_sets_and_its_version_counts_when_newer() -> None:
    limits = OfflineRiskLimits(max_line_amount=HQMoney(5000, "EUR"),
                               max_offline_duration=timedelta(hours=8))
    global_values = ParametersChange(True, True, gift_card_offline_limits=limits).applied(
        initial_set(NOW).values, store=False)
    global_set = ParameterSet(4, GLOBAL, global_values, NOW, "alice")
    override = ParameterSet(6, "store-9", ParametersChange(
        gift_card_offline_completion_allowed=False,
        gift_card_offline_limits=OfflineRiskLimits(max_line_amount=HQMoney(1000, "EUR")),
    ).applied(NO_VALUES, store=True), NOW + timedelta(hours=1), "bob")

    store = effective(global_set, override, "store-9")

    assert (store.version, store.updated_by, store.store_id) == (6, "bob", "store-9")
    assert not store.gift_card_offline_completion_allowed
    assert store.credit_memo_offline_completion_allowed
    assert store.gift_card_offline_limits == OfflineRiskLimits(
        max_line_amount=HQMoney(1000, "EUR"), max_offline_duration=timedelta(hours=8))
    assert effective(global_set, None).gift_card_offline_limits == limits


def test_clearing_a_limit_makes_it_unlimited_globally_and_inherited_in_a_store() -> None:
    limits = OfflineRiskLimits(max_line_amount=HQMoney(5000, "EUR"))
    values = ParametersChange(gift_card_offline_limits=limits).applied(
        initial_set(NOW).values, store=False)
    clear = ParametersChange(cleared=("gift_card_offline_limits.max_line_amount",))

    assert clear.applied(values, store=False).gift_card_offline_limits == OfflineRiskLimits()
    assert clear.applied(values, store=True).gift_card_offline_limits == OfflineRiskLimits()
    assert ParametersChange(cleared=("*",)).applied(values, store=True) == NO_VALUES


@pytest.mark.parametrize(("change", "store", "field"), [
    (ParametersChange(cleared=("lock_lease",)), False, "clear_fields[0]"),
    (ParametersChange(cleared=("*",)), False, "clear_fields[0]"),
    (ParametersChange(cleared=("gift_card_offline_limits.nonsense",)), True, "clear_fields[0]"),
    (ParametersChange(lock_lease=timedelta(hours=1), cleared=("lock_lease",)), True,
     "clear_fields[0]"),
    (ParametersChange(gift_card_offline_limits=OfflineRiskLimits(
        max_line_amount=HQMoney(0, "EUR"))), False,
     "gift_card_offline_limits.max_line_amount.amount_minor"),
    (ParametersChange(credit_memo_offline_limits=OfflineRiskLimits(
        max_offline_duration=timedelta(seconds=30))), False,
     "credit_memo_offline_limits.max_offline_duration"),
    (ParametersChange(credit_memo_offline_limits=OfflineRiskLimits(
        max_unsynced_amount=HQMoney(100, "eur"))), True,
     "credit_memo_offline_limits.max_unsynced_amount.currency_code"),
])
def test_a_change_out_of_range_or_clearing_what_it_cannot_is_refused(
    change: ParametersChange, store: bool, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        change.applied(initial_set(NOW).values, store=store)

    assert refused.value.metadata["field"] == field
