"""The storage contract, continued (see test_storage_contract.py): offline records and
sequence numbers, offline exceptions, parameter versions and terminals, on every backend."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from storage_samples import (
    NOW,
    at,
    card_number,
    make_card,
    make_exception,
    make_parameters,
    make_record,
    make_report,
    make_terminal,
    make_transaction,
    read,
    write,
)

from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.moments import micros_from_epoch
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import OfflineException, OfflineRecord, Redemption
from storedvalue.hq.domain.offline_common import CommonDebit, CommonDebits, CommonSales
from storedvalue.hq.domain.parameters import OfflineRiskLimits
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Storage, UnitOfWork
from storedvalue.hq.storage.offline_results import applied

# -- offline records ------------------------------------------------------------------------


def test_offline_records_round_trip_with_their_result(storage: Storage) -> None:
    records = [make_record("till-1", f"t-{n}", n) for n in range(1, 4)]
    write(storage, lambda uow: uow.offline.add([*records, make_record("till-2", "t-1", 1)]))

    found = read(storage, lambda uow: uow.offline.get_many("till-1", ["t-1", "t-3", "t-404"]))

    assert found == {"t-1": records[0], "t-3": records[2]}
    assert found["t-1"].result.line_results[0].balance_after is not None
    assert read(storage, lambda uow: uow.offline.get_many("till-3", ["t-1"])) == {}
    assert read(storage, lambda uow: uow.offline.get_many("till-1", [])) == {}


def test_many_offline_records_are_found_across_chunks(storage: Storage) -> None:
    records = [make_record("till-1", f"t-{n:05d}", n) for n in range(1, 1_302)]
    write(storage, lambda uow: uow.offline.add(records))

    found = read(storage, lambda uow: uow.offline.get_many(
        "till-1", [r.transaction_id for r in records]))
    owners = read(storage, lambda uow: uow.offline.sequence_owners("till-1", range(1, 1_400)))

    assert len(found) == 1_301
    assert owners == {n: f"t-{n:05d}" for n in range(1, 1_302)}


def test_sequence_owners_tell_which_transaction_holds_each_number(storage: Storage) -> None:
    write(storage, lambda uow: uow.offline.add(
        [make_record("till-1", "t-a", 1), make_record("till-1", "t-b", 2),
         make_record("till-2", "t-c", 3)]))

    owners = read(storage, lambda uow: uow.offline.sequence_owners("till-1", [1, 2, 3, 4]))

    assert owners == {1: "t-a", 2: "t-b"}


def test_sequences_above_the_mark_are_listed_in_ascending_order(storage: Storage) -> None:
    write(storage, lambda uow: uow.offline.add(
        [make_record("till-1", f"t-{n}", n) for n in (9, 2, 7, 3, 1)]
        + [make_record("till-2", "t-8", 8)]))

    assert read(storage, lambda uow: uow.offline.sequences_above("till-1", 2)) == [3, 7, 9]
    assert read(storage, lambda uow: uow.offline.sequences_above("till-1", 0)) == [1, 2, 3, 7, 9]
    assert read(storage, lambda uow: uow.offline.sequences_above("till-1", 9)) == []


def test_a_taken_transaction_id_or_sequence_number_raises_concurrent_update(
    storage: Storage,
) -> None:
    write(storage, lambda uow: uow.offline.add([make_record("till-1", "t-1", 1)]))

    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.offline.add([make_record("till-1", "t-1", 2)]))
    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.offline.add([make_record("till-1", "t-2", 1)]))
    write(storage, lambda uow: uow.offline.add([make_record("till-2", "t-1", 1)]))


# -- offline exceptions ---------------------------------------------------------------------


def test_an_offline_exception_round_trips_with_the_transaction_kept_for_review(
    storage: Storage,
) -> None:
    kept = make_exception("exc_1", with_amount=False, number="",
                          transaction=make_transaction("t-1", 4))
    overdraft = make_exception("exc_2")
    write(storage, lambda uow: uow.exceptions.add([kept, overdraft]))

    assert read(storage, lambda uow: uow.exceptions.get_for_update("exc_1")) == kept
    assert read(storage, lambda uow: uow.exceptions.get_for_update("exc_2")) == overdraft
    assert read(storage, lambda uow: uow.exceptions.get_for_update("exc_404")) is None


def test_saving_an_exception_records_its_resolution(storage: Storage) -> None:
    write(storage, lambda uow: uow.exceptions.add([make_exception("exc_1")]))

    with storage.unit_of_work(write=True) as uow:
        resolved = uow.exceptions.get_for_update("exc_1")
        assert resolved is not None and resolved.is_open
        resolved.resolved_at = at(86_400)
        resolved.resolved_by = "admin:alice"
        resolved.resolution = "customer paid the difference"
        uow.exceptions.save(resolved)
        uow.commit()
    loaded = read(storage, lambda uow: uow.exceptions.get_for_update("exc_1"))

    assert loaded == resolved
    assert loaded is not None and not loaded.is_open
    assert loaded.resolved_at == at(86_400)


def test_count_open_for_card_counts_only_that_cards_unresolved_exceptions(
    storage: Storage,
) -> None:
    resolved = replace(make_exception("exc_3"), resolved_at=NOW, resolved_by="admin:bob",
                       resolution="written off")
    write(storage, lambda uow: uow.exceptions.add([
        make_exception("exc_1"), make_exception("exc_2"), resolved,
        make_exception("exc_4", number=card_number(2)),
    ]))

    assert read(storage, lambda uow: uow.exceptions.count_open_for_card(card_number(1))) == 2
    assert read(storage, lambda uow: uow.exceptions.count_open_for_card(card_number(2))) == 1
    assert read(storage, lambda uow: uow.exceptions.count_open_for_card(card_number(3))) == 0


def test_exceptions_are_listed_oldest_first_after_a_position(storage: Storage) -> None:
    ids = [f"exc_{n:02d}_{chr(ord('z') - n)}" for n in range(7)]  # ids not in insertion order
    write(storage, lambda uow: uow.exceptions.add([make_exception(i) for i in ids[:3]]))
    write(storage, lambda uow: uow.exceptions.add([make_exception(i) for i in ids[3:]]))

    def after(position: int) -> list[tuple[int, OfflineException]]:
        return read(storage, lambda uow: uow.exceptions.list(
            include_resolved=True, terminal_id=None, card_number=None, after_position=position,
            limit=3))

    listed: list[str] = []
    position = 0
    for _ in range(10):
        found = after(position)
        if not found:
            break
        listed += [exc.exception_id for _, exc in found]
        positions = [p for p, _ in found]
        assert positions == sorted(positions) and positions[0] > position
        position = positions[-1]

    assert listed == ids
    assert len(read(storage, lambda uow: uow.exceptions.list(
        include_resolved=True, terminal_id=None, card_number=None, after_position=0,
        limit=7))) == 7


def test_exceptions_are_filtered_by_state_terminal_and_card(storage: Storage) -> None:
    write(storage, lambda uow: uow.exceptions.add([
        make_exception("exc_1"),
        replace(make_exception("exc_2"), resolved_at=NOW, resolved_by="admin:a", resolution="ok"),
        make_exception("exc_3", terminal_id="till-2"),
        make_exception("exc_4", number=card_number(2)),
    ]))

    def ids(include_resolved: bool, terminal_id: str | None, number: str | None) -> list[str]:
        found = read(storage, lambda uow: uow.exceptions.list(
            include_resolved=include_resolved, terminal_id=terminal_id, card_number=number,
            after_position=0, limit=50))
        return [exc.exception_id for _, exc in found]

    assert ids(False, None, None) == ["exc_1", "exc_3", "exc_4"]
    assert ids(True, None, None) == ["exc_1", "exc_2", "exc_3", "exc_4"]
    assert ids(True, "till-1", None) == ["exc_1", "exc_2", "exc_4"]
    assert ids(False, "till-1", card_number(1)) == ["exc_1"]
    assert ids(True, "till-3", None) == []


def test_a_taken_exception_id_raises_concurrent_update(storage: Storage) -> None:
    write(storage, lambda uow: uow.exceptions.add([make_exception("exc_1")]))

    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.exceptions.add([make_exception("exc_1")]))


# -- parameters -----------------------------------------------------------------------------


def test_an_empty_database_has_no_parameters_yet(storage: Storage) -> None:
    assert read(storage, lambda uow: uow.parameters.latest("")) is None
    assert read(storage, lambda uow: uow.parameters.latest_version()) == 0
    assert read(storage, lambda uow: uow.parameters.list(
        store_id=None, before_version=0, limit=5)) == []


def test_parameter_sets_round_trip_with_their_limits_and_unset_values(
    storage: Storage,
) -> None:
    limits = OfflineRiskLimits(max_line_amount=Money(5000, "EUR"),
                               max_offline_duration=timedelta(hours=8))
    made = [make_parameters(1, lease=timedelta(hours=1, seconds=7)),
            make_parameters(2, store_id="store-9", gift=False, limits=limits),
            make_parameters(3, gift=False, memo=True, limits=limits)]
    for parameter_set in made:
        write(storage, lambda uow, p=parameter_set: uow.parameters.add(p))  # type: ignore[misc]

    assert read(storage, lambda uow: uow.parameters.latest("")) == made[2]
    assert read(storage, lambda uow: uow.parameters.latest("store-9")) == made[1]
    assert read(storage, lambda uow: uow.parameters.latest("store-1")) is None
    assert read(storage, lambda uow: uow.parameters.latest_version()) == 3


def test_a_scope_as_of_a_version_is_its_newest_set_at_or_before_it(storage: Storage) -> None:
    for version, store in ((1, ""), (2, "store-9"), (3, "store-1"), (4, ""), (5, "store-9")):
        write(storage, lambda uow, v=version, s=store: uow.parameters.add(  # type: ignore[misc]
            make_parameters(v, store_id=s)))

    def as_of(store: str, version: int) -> int | None:
        found = read(storage, lambda uow: uow.parameters.as_of(store, version))
        return None if found is None else found.version

    assert [as_of("", v) for v in (1, 3, 4, 9)] == [1, 1, 4, 4]
    assert [as_of("store-9", v) for v in (1, 2, 4, 5)] == [None, 2, 2, 5]
    assert [s.version for s in read(storage, lambda uow: uow.parameters.latest_overrides())
            ] == [3, 5]


def test_parameter_changes_are_listed_newest_first_below_a_version(storage: Storage) -> None:
    for version in range(1, 6):
        store = "store-9" if version % 2 == 0 else ""
        write(storage, lambda uow, v=version, s=store: uow.parameters.add(  # type: ignore[misc]
            make_parameters(v, store_id=s)))

    def listed(store: str | None, before: int, limit: int) -> list[int]:
        return [p.version for p in read(storage, lambda uow: uow.parameters.list(
            store_id=store, before_version=before, limit=limit))]

    assert listed(None, 0, 2) == [5, 4]
    assert listed(None, 4, 2) == [3, 2]
    assert listed("", 0, 5) == [5, 3, 1]
    assert listed("store-9", 0, 5) == [4, 2]
    assert listed(None, 1, 5) == []


def test_a_taken_parameters_version_raises_concurrent_update(storage: Storage) -> None:
    write(storage, lambda uow: uow.parameters.add(make_parameters(1)))

    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.parameters.add(make_parameters(1, store_id="store-9")))


# -- terminals ------------------------------------------------------------------------------


def test_a_terminal_round_trips_and_is_found_by_its_token_hash(storage: Storage) -> None:
    terminal = make_terminal("till-1")
    write(storage, lambda uow: uow.terminals.add(terminal))

    assert read(storage, lambda uow: uow.terminals.get("till-1")) == terminal
    assert read(storage, lambda uow: uow.terminals.get_for_update("till-1")) == terminal
    assert read(storage, lambda uow: uow.terminals.get_by_token_hash(
        terminal.token_hash)) == terminal
    assert read(storage, lambda uow: uow.terminals.get("till-404")) is None
    assert read(storage, lambda uow: uow.terminals.get_by_token_hash("0" * 64)) is None


def test_saving_a_terminal_writes_its_credential_store_revocation_and_sequence_marks(
    storage: Storage,
) -> None:
    write(storage, lambda uow: uow.terminals.add(make_terminal("till-1")))
    changed = replace(make_terminal("till-1", token_hash="f" * 64), display_name="Till one",
                      credential_issued_at=at(60), highest_contiguous_sequence=7,
                      highest_sequence_seen=12, last_synced_at=at(90), store_id="store-9",
                      revoked_at=at(95), revoked_by="admin:alice", revocation_reason="stolen")

    write(storage, lambda uow: uow.terminals.save(changed))

    assert read(storage, lambda uow: uow.terminals.get("till-1")) == changed
    assert read(storage, lambda uow: uow.terminals.get_by_token_hash("f" * 64)) == changed
    assert read(storage, lambda uow: uow.terminals.get_by_token_hash(
        make_terminal("till-1").token_hash)) is None


def test_a_taken_terminal_id_or_token_hash_raises_concurrent_update(storage: Storage) -> None:
    write(storage, lambda uow: uow.terminals.add(make_terminal("till-1")))
    write(storage, lambda uow: uow.terminals.add(make_terminal("till-2")))

    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.terminals.add(make_terminal("till-1", token_hash="e" * 64)))
    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.terminals.add(
            make_terminal("till-3", token_hash=make_terminal("till-1").token_hash)))
    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.terminals.save(
            replace(make_terminal("till-2"), token_hash=make_terminal("till-1").token_hash)))


def test_terminals_are_listed_in_id_order_after_the_given_id(storage: Storage) -> None:
    for terminal_id in ("till-3", "till-1", "store2-till-1", "till-2"):
        write(storage, lambda uow, t=terminal_id: uow.terminals.add(  # type: ignore[misc]
            make_terminal(t)))

    def listed(after: str, limit: int) -> list[str]:
        return [t.terminal_id for t in read(storage, lambda uow: uow.terminals.list(
            after_terminal_id=after, limit=limit))]

    assert listed("", 2) == ["store2-till-1", "till-1"]
    assert listed("till-1", 5) == ["till-2", "till-3"]
    assert listed("till-3", 5) == []


# -- terminal reports -----------------------------------------------------------------------


def test_a_terminal_report_round_trips_and_an_older_one_does_not_replace_it(
    storage: Storage,
) -> None:
    newer = make_report(reported=at(50), received=at(51), unsynced=3000)
    older = make_report(reported=at(40), received=at(52), unsynced=9000)

    kept = [write(storage, lambda uow, r=report: uow.reports.save(  # type: ignore[misc]
        "till-1", r)) for report in (newer, older)]

    assert kept == [True, False]
    assert read(storage, lambda uow: uow.reports.get_many(["till-1", "till-2"])) == {
        "till-1": newer}
    newest = make_report(reported=at(60), received=at(61), unsynced=0)
    assert write(storage, lambda uow: uow.reports.save("till-1", newest))
    assert read(storage, lambda uow: uow.reports.get_many(["till-1"])) == {"till-1": newest}


def as_columns(debits: list[CommonDebit]) -> CommonDebits:
    """The debits as the common path's columns (what the storage writes from); the sales'
    parameter versions and fencing tokens, which no write reads, are 0."""
    sales = CommonSales(
        transaction_ids=[d.transaction_id for d in debits],
        sequence_numbers=[d.sequence_number for d in debits],
        completed_micros=[d.occurred_at_micros for d in debits],
        parameters_versions=[0] * len(debits),
        fingerprints=[d.fingerprint for d in debits],
        line_ids=[d.line_id for d in debits],
        card_numbers=[d.card_number for d in debits],
        amounts_minor=[d.amount_minor for d in debits],
        currencies=[d.currency for d in debits],
        fencing_tokens=[0] * len(debits),
    )
    return CommonDebits(sales, [d.balance_after_minor for d in debits])


def test_many_offline_debits_are_stored_as_written(storage: Storage) -> None:
    # 237 debits: on SQLite, INSERTs of 100 and of 10 rows, then the 7 left one by one.
    debits = [
        CommonDebit(f"t-{n:05d}", n, bytes([n % 256]) * 32, f"line {n % 3}",
                    card_number(n % 50), 100 + n, "EUR", 10_000 - n, micros_from_epoch(at(n)))
        for n in range(1, 238)
    ]
    later = at(1_000)

    write(storage, lambda uow: uow.cards.add([make_card(card_number(n)) for n in range(50)]))

    def add(uow: UnitOfWork) -> None:
        columns = as_columns(debits)
        uow.journal.append_offline_debits("till-1", columns, later)
        uow.redemptions.add_offline_debits("till-1", columns, later)
        uow.offline.add_offline_debits("till-1", columns, later)

    write(storage, add)

    ids = [d.transaction_id for d in debits]
    records = read(storage, lambda uow: uow.offline.get_many("till-1", ids))
    assert records == {d.transaction_id: OfflineRecord(
        "till-1", d.transaction_id, d.sequence_number, d.fingerprint,
        applied(d.transaction_id, d.sequence_number, d.line_id,
                Money(d.balance_after_minor, "EUR")), later)
        for d in debits}
    lines = read(storage, lambda uow: uow.redemptions.get_many(
        [("till-1", d.transaction_id, d.line_id) for d in debits]))
    assert sorted(lines.values(), key=lambda r: r.transaction_id) == [Redemption(
        "till-1", d.transaction_id, d.line_id, d.card_number, d.amount_minor, "EUR", "",
        True, later) for d in debits]

    def journal(uow: UnitOfWork) -> list[JournalEntry]:
        return [entry for n in range(50) for entry in uow.journal.list_for_card(
            card_number(n), after_entry_id=0, limit=100)]

    entries = read(storage, journal)
    assert sorted((e.transaction_id, e.card_number, e.amount_minor, e.balance_after_minor,
                   e.occurred_at, e.recorded_at, e.line_id, e.offline, e.kind)
                  for e in entries) == [
        (d.transaction_id, d.card_number, -d.amount_minor, d.balance_after_minor,
         at(int(d.transaction_id[2:])), later, d.line_id, True, JournalEntryKind.REDEEM)
        for d in debits]
