"""Parameters per store, terminal reports and revocation as use cases, on the in-memory fake
storage: no database, no network."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fakes import FakeStorage
from service_loop import ServiceLoop
from storage_samples import make_report

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.errors import (
    ParametersVersionConflict,
    TerminalRevoked,
    Unauthenticated,
)
from storedvalue.hq.domain.journal import JournalEntryKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.parameters import (
    NO_VALUES,
    OfflineRiskLimits,
    Parameters,
    ParametersChange,
    ParameterSet,
    ParameterValues,
)
from storedvalue.hq.domain.terminal_reports import LinkState, link_now
from storedvalue.hq.services.auth import Authenticator, Caller, Role
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.services.terminal_reports import TerminalReportService

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


def key(caller: str, operation: str, content: object = None) -> RequestKey:
    return RequestKey(caller, f"req-{next(_ids)}", operation,
                      hashlib.sha256(repr(content).encode()).digest())


class Shop:
    def __init__(self) -> None:
        self.storage = FakeStorage()
        self.now = NOW
        clock = lambda: self.now  # noqa: E731 - the tests move it
        self.loop = ServiceLoop(self.storage)
        self.run = self.loop.run
        transactions = self.loop.transactions
        self.params = ParametersService(transactions, clock=clock)
        self.back_office = BackOfficeService(transactions, clock=clock)
        self.cards = CardService(transactions, clock=clock)
        self.reports = TerminalReportService(transactions, clock=clock)
        self.auth = Authenticator(transactions, admin_token_hashes={}, cache_seconds=0)
        self.run(self.params.ensure_initialized())
        self.tokens = {
            terminal_id: self.run(self.back_office.register_terminal(
                key=key("admin:ops", "RegisterTerminal", terminal_id), terminal_id=terminal_id,
                display_name="", store_id=store,
            )).bearer_token
            for terminal_id, store in (("A-1", "store-A"), ("B-1", "store-B"))
        }

    def change(self, change: ParametersChange, *, store: str = "", expected: int = 0) -> int:
        return self.run(self.params.update(
            key=key("admin:ops", "UpdateParameters", change), updated_by="ops", change=change,
            expected_version=expected, store_id=store)).version

    def terminal(self, terminal_id: str) -> Caller:
        return self.run(self.auth.authenticate(f"Bearer {self.tokens[terminal_id]}",
                                               Role.TERMINAL))


@pytest.fixture
def shop() -> Iterator[Shop]:
    opened = Shop()
    yield opened
    opened.loop.close()


def test_every_change_records_who_when_which_scope_and_the_old_and_new_values(
    shop: Shop,
) -> None:
    limits = OfflineRiskLimits(max_unsynced_amount=Money(20_000, "EUR"))
    global_version = shop.change(ParametersChange(True, True, gift_card_offline_limits=limits))
    shop.now += timedelta(minutes=5)
    store_version = shop.change(ParametersChange(gift_card_offline_completion_allowed=False),
                                store="store-A")
    shop.now += timedelta(minutes=5)
    again = shop.change(ParametersChange(cleared=("*",)), store="store-A")

    page = shop.run(shop.params.list_changes(store_id=None, before_version=0, limit=10))
    store_only = shop.run(shop.params.list_changes(store_id="store-A", before_version=0,
                                                   limit=10))

    assert [c.version for c in page.items] == [again, store_version, global_version, 1]
    cleared, override, made_global, _initial = page.items
    assert (override.store_id, override.changed_by, override.changed_at) == (
        "store-A", "ops", NOW + timedelta(minutes=5))
    assert override.old_values == NO_VALUES
    assert override.new_values.gift_card_offline_completion_allowed is False
    assert cleared.old_values == override.new_values and cleared.new_values == NO_VALUES
    assert made_global.store_id == ""
    assert made_global.old_values.gift_card_offline_limits == OfflineRiskLimits()
    assert made_global.new_values.gift_card_offline_limits == limits
    assert [c.version for c in store_only.items] == [again, store_version]
    store_a = shop.run(shop.params.current("store-A"))
    assert store_a.gift_card_offline_completion_allowed
    assert store_a.version == again


def test_the_expected_version_of_a_store_change_is_that_stores_version(shop: Shop) -> None:
    global_version = shop.change(ParametersChange(True, True))
    store_b = shop.change(ParametersChange(credit_memo_offline_completion_allowed=False),
                          store="store-B")

    made = shop.change(ParametersChange(gift_card_offline_completion_allowed=False),
                       store="store-A", expected=global_version)
    with pytest.raises(ParametersVersionConflict):
        shop.change(ParametersChange(lock_lease=timedelta(hours=1)), store="store-B",
                    expected=global_version)

    assert made > store_b
    assert shop.run(shop.params.store_parameters("store-B")).parameters.version == store_b


def test_the_feed_wakes_a_stores_watchers_only_for_changes_that_concern_them(
    shop: Shop,
) -> None:
    feed = shop.params.feed
    known = feed.latest("store-B")
    assert known is not None

    async def watch(store: str) -> Parameters | None:
        try:
            return await asyncio.wait_for(feed.newer_than(store, known.version), timeout=1.0)
        except TimeoutError:
            return None

    async def change_store_a_while_both_watch() -> tuple[Parameters | None, ...]:
        watchers = [asyncio.ensure_future(watch(store)) for store in ("store-A", "store-B")]
        await asyncio.sleep(0)  # both are waiting
        feed.publish(ParameterSet(known.version + 1, "store-A", ParameterValues(
            gift_card_offline_completion_allowed=False), NOW, "ops"))
        return tuple(await asyncio.gather(*watchers))

    store_a, store_b = shop.run(change_store_a_while_both_watch())

    assert store_b is None, "store B's watchers were not woken for A's override"
    assert store_a is not None and store_a.version == known.version + 1
    assert not store_a.gift_card_offline_completion_allowed


def test_revoking_a_till_refuses_its_credential_and_releases_its_locks_with_the_reason(
    shop: Shop,
) -> None:
    card = shop.run(shop.cards.issue_card(
        key=key("B-1", "IssueCard"), terminal_id="B-1", kind=CardKind.GIFT_CARD,
        initial_value=Money(5000, "EUR"), card_number="", transaction_id="")).card_number
    shop.run(shop.cards.lock_card(key=key("A-1", "LockCard"), terminal_id="A-1",
                                  card_number=card, transaction_id="S1"))
    assert shop.terminal("A-1").store_id == "store-A"
    revoke = key("admin:ops", "RevokeTerminal", "A-1")

    revoked = shop.run(shop.back_office.revoke_terminal(
        key=revoke, admin="ops", terminal_id="A-1", reason="till stolen"))
    retried = shop.run(shop.back_office.revoke_terminal(
        key=revoke, admin="ops", terminal_id="A-1", reason="till stolen"))

    assert [lock.card_number for lock in revoked.released_locks] == [card]
    assert retried == revoked
    assert revoked.terminal.terminal.revoked_at == NOW
    assert shop.run(shop.cards.get_card(caller="B-1", card_number=card)).lock is None
    entries = shop.run(shop.back_office.list_journal(card_number=card, after_entry_id=0,
                                                     limit=10)).items
    assert (entries[-1].kind, entries[-1].note) == (
        JournalEntryKind.FORCED_UNLOCK, "ops: terminal A-1 revoked: till stolen")
    with pytest.raises(Unauthenticated):
        shop.terminal("A-1")
    with pytest.raises(TerminalRevoked):
        shop.run(shop.back_office.revoke_terminal(
            key=key("admin:ops", "RevokeTerminal"), admin="ops", terminal_id="A-1",
            reason="again"))
    with pytest.raises(TerminalRevoked):
        shop.run(shop.back_office.set_terminal_store(
            key=key("admin:ops", "SetTerminalStore"), terminal_id="A-1", store_id="store-B"))
    assert shop.terminal("B-1").terminal_id == "B-1"


def test_hq_keeps_each_tills_newest_report_and_judges_its_link_from_it(shop: Shop) -> None:
    newer = make_report(reported=NOW, received=NOW, unsynced=3000).report
    older = make_report(reported=NOW - timedelta(minutes=1), received=NOW, unsynced=0).report

    shop.run(shop.reports.report(terminal_id="A-1", report=newer))
    shop.run(shop.reports.report(terminal_id="A-1", report=older))  # late: overtaken
    (listed, never) = shop.run(shop.back_office.list_terminals(after_terminal_id="",
                                                               limit=10)).items
    shop.now += timedelta(minutes=3)  # the till promised its next report within 2 minutes
    (silent, _) = shop.run(shop.back_office.list_terminals(after_terminal_id="", limit=10)).items

    assert listed.report is not None and listed.report.report == newer
    assert listed.link.state is LinkState.ONLINE
    assert listed.link.since == NOW - timedelta(seconds=5)
    assert never.link.state is None
    assert silent.link.state is LinkState.OFFLINE and silent.link.since == NOW
    assert silent.report is not None
    (held,) = silent.report.report.unsynced_amounts
    assert held.amount == Money(3000, "EUR")


def test_a_report_on_a_skewed_clock_is_moved_onto_hqs_clock() -> None:
    received = make_report(reported=NOW - timedelta(minutes=10), received=NOW, unsynced=0)

    link = link_now(received, NOW)

    assert link.state is LinkState.ONLINE
    assert link.since == NOW - timedelta(seconds=5)


def test_a_retried_change_or_revocation_gets_its_first_result_limits_and_report_included(
    shop: Shop,
) -> None:
    limits = OfflineRiskLimits(max_line_amount=Money(2500, "EUR"),
                               max_offline_duration=timedelta(hours=6))
    change = ParametersChange(gift_card_offline_limits=limits)
    update = key("admin:ops", "UpdateParameters", change)
    shop.run(shop.reports.report(
        terminal_id="B-1", report=make_report(reported=NOW, received=NOW, unsynced=700).report))
    revoke = key("admin:ops", "RevokeTerminal", "B-1")

    first = shop.run(shop.params.update(key=update, updated_by="ops", change=change,
                                        expected_version=0, store_id="store-B"))
    again = shop.run(shop.params.update(key=update, updated_by="ops", change=change,
                                        expected_version=0, store_id="store-B"))
    revoked = shop.run(shop.back_office.revoke_terminal(key=revoke, admin="ops",
                                                        terminal_id="B-1", reason="retired"))
    revoked_again = shop.run(shop.back_office.revoke_terminal(
        key=revoke, admin="ops", terminal_id="B-1", reason="retired"))

    assert again == first
    assert first.parameters.gift_card_offline_limits == limits
    assert revoked_again == revoked
    assert revoked.terminal.report is not None
    (held,) = revoked.terminal.report.report.unsynced_amounts
    assert held.amount == Money(700, "EUR")
