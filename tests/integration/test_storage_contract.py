"""The storage contract (storedvalue.hq.services.unit_of_work), run against every backend:
the in-memory fake, a SQLite file, SQLite memory and PostgreSQL. Units of work, cards and
their locks, the journal, redemptions and the request log. Offline records, exceptions,
parameters and terminals: test_storage_contract_offline.py."""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from storage_samples import (
    NOW,
    at,
    card_number,
    make_card,
    make_entry,
    make_lock,
    make_redemption,
    read,
    write,
)

from storedvalue.hq.domain.cards import CardKind, CardStatus
from storedvalue.hq.domain.journal import JournalEntry, JournalEntryKind
from storedvalue.hq.domain.offline import ReversalOutcome
from storedvalue.hq.domain.offline_common import BalanceChange
from storedvalue.hq.domain.offline_locks import LockGrant
from storedvalue.hq.services.unit_of_work import (
    ConcurrentUpdate,
    Storage,
    StoredResponse,
    UnitOfWork,
)

# -- units of work --------------------------------------------------------------------------


def test_leaving_a_unit_of_work_without_commit_discards_its_writes(storage: Storage) -> None:
    with storage.unit_of_work(write=True) as uow:
        uow.cards.add([make_card(card_number(1))])
        uow.journal.append([make_entry(card_number(1), 5_000)])
        assert uow.cards.get(card_number(1)) is not None  # a unit of work sees its own writes

    assert read(storage, lambda uow: uow.cards.get(card_number(1))) is None
    assert read(storage, lambda uow: uow.journal.list_for_card(
        card_number(1), after_entry_id=0, limit=10)) == []


def test_an_error_inside_a_unit_of_work_rolls_it_back(storage: Storage) -> None:
    def failing_use_case() -> None:
        with storage.unit_of_work(write=True) as uow:
            uow.cards.add([make_card(card_number(1))])
            raise RuntimeError("the use case failed")

    with pytest.raises(RuntimeError):
        failing_use_case()

    assert read(storage, lambda uow: uow.cards.get(card_number(1))) is None


def test_committed_writes_are_seen_by_the_next_unit_of_work(storage: Storage) -> None:
    write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))

    assert read(storage, lambda uow: uow.cards.get(card_number(1))) == make_card(card_number(1))


def test_work_after_a_commit_is_discarded_unless_committed_again(storage: Storage) -> None:
    with storage.unit_of_work(write=True) as uow:
        uow.cards.add([make_card(card_number(1))])
        uow.commit()
        uow.cards.add([make_card(card_number(2))])

    assert read(storage, lambda uow: sorted(uow.cards.get_many_for_update(
        [card_number(1), card_number(2)]))) == [card_number(1)]


def test_a_racing_insert_of_the_same_card_loses_with_concurrent_update(
    storage: Storage,
) -> None:
    """Two units of work insert the same card number at once: one commits, the other gets
    ConcurrentUpdate. Which one depends on whose insert reaches the database first: SQLite's
    first writer holds the write lock, while on PostgreSQL writes are sent with the next
    read or the COMMIT (a unit's writes go in one round trip), so there the second writer,
    which commits at once, may be the one that wins."""
    outcome: list[BaseException | None] = []

    def second_writer() -> None:
        try:
            write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))
        except BaseException as error:
            outcome.append(error)
        else:
            outcome.append(None)

    first: BaseException | None = None
    with storage.unit_of_work(write=True) as uow:
        uow.cards.add([make_card(card_number(1))])
        racer = threading.Thread(target=second_writer)
        racer.start()
        racer.join(0.3)  # it waits for our row (PostgreSQL) or the write lock (SQLite, fake)
        try:
            uow.commit()
        except ConcurrentUpdate as lost:
            first = lost
    racer.join(30)

    assert len(outcome) == 1
    outcomes = [first, outcome[0]]
    assert outcomes.count(None) == 1
    assert any(isinstance(o, ConcurrentUpdate) for o in outcomes)
    assert read(storage, lambda uow: uow.cards.get(card_number(1))) is not None


def test_concurrent_read_modify_write_under_row_locks_loses_no_update(storage: Storage) -> None:
    write(storage, lambda uow: uow.cards.add([make_card(card_number(1), balance=0)]))

    def add_one_cent() -> None:
        for _ in range(20):
            while True:
                try:
                    with storage.unit_of_work(write=True) as uow:
                        card = uow.cards.get_many_for_update([card_number(1)])[card_number(1)]
                        card.balance_minor += 1
                        uow.cards.save([card])
                        uow.commit()
                    break
                except ConcurrentUpdate:
                    continue

    workers = [threading.Thread(target=add_one_cent) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    card = read(storage, lambda uow: uow.cards.get(card_number(1)))
    assert card is not None
    assert card.balance_minor == 80


# -- cards and locks ------------------------------------------------------------------------


def test_a_card_round_trips_every_field_including_its_lock(storage: Storage) -> None:
    locked = make_card(
        card_number(1),
        balance=-1_234,  # offline overdrafts leave negative balances
        kind=CardKind.CREDIT_MEMO,
        status=CardStatus.FLAGGED,
        currency="SEK",
        remainder_of=card_number(7),
        lock=make_lock(card_number(1), terminal_id="till-9", transaction_id="t-77", token=42,
                       lease_ends=at(14_400.000001)),
        token=42,
    )
    write(storage, lambda uow: uow.cards.add([locked]))

    for loaded in (
        read(storage, lambda uow: uow.cards.get(card_number(1))),
        read(storage, lambda uow: uow.cards.get_for_update(card_number(1))),
    ):
        assert loaded == locked
        assert loaded is not None and loaded.lock is not None
        assert loaded.issued_at.utcoffset() == timedelta(0)
        assert loaded.lock.lease_expires_at.tzinfo is not None


def test_a_free_card_reads_back_with_no_lock(storage: Storage) -> None:
    write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))

    loaded = read(storage, lambda uow: uow.cards.get(card_number(1)))

    assert loaded is not None
    assert loaded.lock is None
    assert loaded.last_fencing_token == 0
    assert loaded.remainder_of_card_number == ""


def test_an_unknown_card_is_none(storage: Storage) -> None:
    assert read(storage, lambda uow: uow.cards.get(card_number(404))) is None
    assert read(storage, lambda uow: uow.cards.get_for_update(card_number(404))) is None


def test_times_in_other_zones_come_back_as_the_same_instant_in_utc(storage: Storage) -> None:
    paris = datetime(2025, 3, 1, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=1)))
    write(storage, lambda uow: uow.cards.add([replace(make_card(card_number(1)),
                                                      issued_at=paris)]))

    loaded = read(storage, lambda uow: uow.cards.get(card_number(1)))

    assert loaded is not None
    assert loaded.issued_at == NOW
    assert loaded.issued_at.tzinfo == UTC


def test_get_many_for_update_returns_known_cards_and_leaves_unknown_numbers_out(
    storage: Storage,
) -> None:
    # More cards than one IN-list chunk holds.
    cards = [make_card(card_number(n), balance=n) for n in range(1, 1_202)]
    write(storage, lambda uow: uow.cards.add(cards))
    wanted = [card_number(n) for n in range(1_201, 0, -2)] + [card_number(5_000), card_number(1)]

    found = write(storage, lambda uow: uow.cards.get_many_for_update(wanted))

    assert sorted(found) == sorted({card_number(n) for n in range(1, 1_202, 2)})
    assert all(found[number].balance_minor == int(number[-8:]) for number in found)
    assert write(storage, lambda uow: uow.cards.get_many_for_update([])) == {}


def test_adding_a_taken_card_number_raises_concurrent_update(storage: Storage) -> None:
    write(storage, lambda uow: uow.cards.add([make_card(card_number(1))]))

    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.cards.add([make_card(card_number(2)),
                                                  make_card(card_number(1))]))
    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.cards.add([make_card(card_number(3)),
                                                  make_card(card_number(3))]))
    assert read(storage, lambda uow: uow.cards.get(card_number(2))) is None


def test_saving_cards_writes_back_status_balance_fencing_counter_and_lock(
    storage: Storage,
) -> None:
    first = make_card(card_number(1), lock=make_lock(card_number(1), token=3))
    second = make_card(card_number(2))
    write(storage, lambda uow: uow.cards.add([first, second]))
    new_lock = make_lock(card_number(2), terminal_id="till-2", transaction_id="t-2", token=8)

    with storage.unit_of_work(write=True) as uow:
        loaded = uow.cards.get_many_for_update([card_number(1), card_number(2)])
        one, two = loaded[card_number(1)], loaded[card_number(2)]
        one.lock, one.balance_minor, one.status = None, 0, CardStatus.REDEEMED
        two.lock, two.last_fencing_token, two.balance_minor = new_lock, 8, -1
        uow.cards.save([one, two])
        uow.commit()

    assert read(storage, lambda uow: uow.cards.get(card_number(1))) == replace(
        first, lock=None, balance_minor=0, status=CardStatus.REDEEMED)
    assert read(storage, lambda uow: uow.cards.get(card_number(2))) == replace(
        second, lock=new_lock, last_fencing_token=8, balance_minor=-1)


def test_the_lock_history_finds_a_terminals_locks_by_sale_and_notes_its_own_releases(
    storage: Storage,
) -> None:
    mine = [LockGrant.of(make_lock(card_number(n), transaction_id=f"txn-{n % 2}", token=n))
            for n in (1, 2, 3)]
    theirs = LockGrant.of(make_lock(card_number(1), terminal_id="till-2", transaction_id="txn-1",
                                    token=4))
    write(storage, lambda uow: uow.lock_history.add([*mine, theirs]))
    write(storage, lambda uow: uow.lock_history.mark_released_by_holder([
        make_lock(card_number(3), transaction_id="txn-1", token=3),
        # Found by sale, card and token: the same card and token under another sale or
        # terminal is not this lock; an unknown lock is ignored.
        make_lock(card_number(1), transaction_id="txn-0", token=1),
        make_lock(card_number(2), terminal_id="till-2", transaction_id="txn-0", token=2),
        make_lock(card_number(9), token=9),
    ], at(30)))

    found = read(storage, lambda uow: uow.lock_history.for_sales("till-1", ["txn-1", "txn-7"]))

    by_token = {grant.fencing_token: grant for grant in found}
    assert sorted(by_token) == [1, 3]  # txn-1's, this terminal's only
    assert by_token[1] == mine[0]
    assert by_token[3] == mine[2].released_by_holder(at(30))
    assert read(storage, lambda uow: uow.lock_history.for_sales("till-1", ["txn-0"])) == [
        mine[1]]
    assert read(storage, lambda uow: uow.lock_history.for_sales("till-2", ["txn-1"])) == [
        theirs]
    assert read(storage, lambda uow: uow.lock_history.for_sales("till-1", [])) == []


def test_a_lock_recorded_twice_for_its_sale_raises_concurrent_update(
    storage: Storage,
) -> None:
    grant = LockGrant.of(make_lock(card_number(1), token=5))
    write(storage, lambda uow: uow.lock_history.add([grant]))
    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.lock_history.add([replace(grant, acquired_at=at(9))]))
    assert read(storage, lambda uow: uow.lock_history.for_sales("till-1", ["txn-1"])) == [
        grant]


def test_locks_are_listed_in_card_number_order_after_the_given_number(
    storage: Storage,
) -> None:
    cards = [make_card(card_number(n), lock=make_lock(card_number(n), token=n))
             for n in (5, 3, 1, 4)] + [make_card(card_number(2))]
    write(storage, lambda uow: uow.cards.add(cards))

    def page(after: str, limit: int) -> list[str]:
        return [lock.card_number for lock in read(storage, lambda uow: uow.cards.list_locks(
            now=NOW, terminal_id=None, include_expired=True, after_card_number=after,
            limit=limit))]

    assert page("", 2) == [card_number(1), card_number(3)]
    assert page(card_number(3), 2) == [card_number(4), card_number(5)]
    assert page(card_number(5), 2) == []
    locks = read(storage, lambda uow: uow.cards.list_locks(
        now=NOW, terminal_id=None, include_expired=True, after_card_number="", limit=1))
    assert locks == [make_lock(card_number(1), token=1)]


def test_a_terminals_locks_are_listed_in_card_number_order_whatever_order_it_took_them(
    storage: Storage,
) -> None:
    # The lock index is in the order locks were taken (migration 0007): the list sorts.
    taken = [5, 2, 4, 1, 3]  # card numbers' order when the till took their locks
    cards = [make_card(card_number(n), lock=replace(
        make_lock(card_number(n), token=n), acquired_at=NOW - timedelta(seconds=10 - turn)))
        for turn, n in enumerate(taken)]
    cards.append(make_card(card_number(6), lock=make_lock(card_number(6), terminal_id="till-2")))
    write(storage, lambda uow: uow.cards.add(cards))

    def page(after: str, limit: int) -> list[str]:
        return [lock.card_number for lock in read(storage, lambda uow: uow.cards.list_locks(
            now=NOW, terminal_id="till-1", include_expired=False, after_card_number=after,
            limit=limit))]

    assert page("", 2) == [card_number(1), card_number(2)]
    assert page(card_number(2), 2) == [card_number(3), card_number(4)]
    assert page(card_number(4), 2) == [card_number(5)]


def test_locks_are_filtered_by_terminal_and_ended_leases_are_hidden_unless_asked(
    storage: Storage,
) -> None:
    cards = [
        make_card(card_number(1), lock=make_lock(card_number(1), terminal_id="till-1")),
        make_card(card_number(2), lock=make_lock(card_number(2), terminal_id="till-2")),
        make_card(card_number(3), lock=make_lock(card_number(3), terminal_id="till-1",
                                                 lease_ends=NOW)),  # ends now: not live
    ]
    write(storage, lambda uow: uow.cards.add(cards))

    def numbers(terminal_id: str | None, include_expired: bool) -> list[str]:
        return [lock.card_number for lock in read(storage, lambda uow: uow.cards.list_locks(
            now=NOW, terminal_id=terminal_id, include_expired=include_expired,
            after_card_number="", limit=10))]

    assert numbers(None, include_expired=False) == [card_number(1), card_number(2)]
    assert numbers(None, include_expired=True) == [card_number(n) for n in (1, 2, 3)]
    assert numbers("till-1", include_expired=True) == [card_number(1), card_number(3)]
    assert numbers("till-1", include_expired=False) == [card_number(1)]
    assert numbers("till-3", include_expired=True) == []


# -- journal, redemptions, request log ------------------------------------------------------


def test_journal_entries_come_back_oldest_first_with_increasing_entry_ids(
    storage: Storage,
) -> None:
    entries = [
        make_entry(card_number(1), 5_000, balance_after=5_000, kind=JournalEntryKind.ISSUE),
        make_entry(card_number(2), 100, balance_after=100, kind=JournalEntryKind.ISSUE),
        make_entry(card_number(1), -7_000, balance_after=-2_000, line_id="line-1"),
        make_entry(card_number(1), 0, balance_after=-2_000, kind=JournalEntryKind.FORCED_UNLOCK,
                   note="admin:alice: till stolen"),
    ]
    write(storage, lambda uow: uow.cards.add([make_card(card_number(n)) for n in (1, 2)]))
    write(storage, lambda uow: uow.journal.append(entries[:2]))
    write(storage, lambda uow: uow.journal.append(entries[2:]))

    listed = read(storage, lambda uow: uow.journal.list_for_card(
        card_number(1), after_entry_id=0, limit=10))

    assert [replace(e, entry_id=0) for e in listed] == [entries[0], entries[2], entries[3]]
    ids = [e.entry_id for e in listed]
    assert ids == sorted(ids) and len(set(ids)) == 3 and ids[0] > 0


def test_journal_pages_continue_after_the_last_entry_id(storage: Storage) -> None:
    write(storage, lambda uow: uow.cards.add([make_card(card_number(n)) for n in (1, 2)]))
    write(storage, lambda uow: uow.journal.append(
        [make_entry(card_number(1 + n % 2), -n) for n in range(1, 8)]))

    first = read(storage, lambda uow: uow.journal.list_for_card(
        card_number(2), after_entry_id=0, limit=2))
    rest = read(storage, lambda uow: uow.journal.list_for_card(
        card_number(2), after_entry_id=first[-1].entry_id, limit=10))

    assert [e.amount_minor for e in first + rest] == [-1, -3, -5, -7]
    assert read(storage, lambda uow: uow.journal.list_for_card(
        card_number(404), after_entry_id=0, limit=10)) == []


def test_a_cards_history_pages_in_order_among_many_interleaved_entries(
    storage: Storage,
) -> None:
    # Entries of five cards, interleaved at random across units of work, several of a card
    # in one unit: each card's history, page after page, is its entries in the order they
    # were appended, and a cursor may be any id (another card's, or none of them).
    shuffled = random.Random(8)
    write(storage, lambda uow: uow.cards.add([make_card(card_number(n)) for n in range(5)]))
    appended: dict[str, list[int]] = {card_number(n): [] for n in range(5)}
    amount = 0

    def append(entries: list[JournalEntry]) -> None:
        write(storage, lambda uow: uow.journal.append(entries))

    def page(number: str, after: int, limit: int) -> list[JournalEntry]:
        return read(storage, lambda uow: uow.journal.list_for_card(
            number, after_entry_id=after, limit=limit))

    for _unit in range(12):
        entries = []
        for _entry in range(shuffled.randint(1, 9)):
            amount += 1
            number = card_number(shuffled.randrange(5))
            appended[number].append(amount)
            entries.append(make_entry(number, amount, line_id=f"line-{amount}"))
        append(entries)

    every_id = []
    for number, amounts in appended.items():
        history: list[JournalEntry] = []
        while found := page(number, history[-1].entry_id if history else 0, 3):
            assert len(found) <= 3
            history += found
        assert [entry.amount_minor for entry in history] == amounts
        assert all(entry.card_number == number for entry in history)
        every_id += [entry.entry_id for entry in history]
        # From a cursor between two of its entries (not one of its ids): the later ones.
        middle = history[len(history) // 2].entry_id
        assert [e.entry_id for e in page(number, middle - 1, 100)] == [
            e.entry_id for e in history if e.entry_id > middle - 1]
    assert len(set(every_id)) == amount


def test_redemptions_round_trip_and_unknown_keys_are_absent(storage: Storage) -> None:
    applied = [
        make_redemption("till-1", "t-1", "line-1", remainder=card_number(9)),
        make_redemption("till-1", "t-1", "line-2"),
        make_redemption("till-2", "t-1", "line-1"),
    ]
    write(storage, lambda uow: uow.redemptions.add(applied))
    keys = [("till-1", "t-1", "line-1"), ("till-2", "t-1", "line-1"),
            ("till-1", "t-1", "line-3"), ("till-3", "t-1", "line-1")]

    found = read(storage, lambda uow: uow.redemptions.get_many(keys))

    assert found == {applied[0].key: applied[0], applied[2].key: applied[2]}
    assert read(storage, lambda uow: uow.redemptions.get_many([])) == {}


def test_a_reversed_line_and_a_tombstone_round_trip_and_marking_keeps_the_rest(
    storage: Storage,
) -> None:
    debited = make_redemption("till-1", "t-1", "line-1", remainder=card_number(9))
    tombstone = replace(make_redemption("till-1", "t-1", "line-2"),
                        reversal=ReversalOutcome.NEVER_APPLIED, reversed_at=NOW)
    untouched = make_redemption("till-1", "t-1", "line-3")
    write(storage, lambda uow: uow.redemptions.add([debited, tombstone, untouched]))
    reversed_line = replace(debited, reversal=ReversalOutcome.REVERSED,
                            reversed_at=NOW + timedelta(seconds=5))

    write(storage, lambda uow: uow.redemptions.mark_reversed([reversed_line]))

    found = read(storage, lambda uow: uow.redemptions.get_many(
        [debited.key, tombstone.key, untouched.key]))
    assert found == {debited.key: reversed_line, tombstone.key: tombstone,
                     untouched.key: untouched}


def test_a_card_is_read_for_update_with_its_line_stored_or_not(storage: Storage) -> None:
    card = make_card(card_number(1), balance=3_750, token=4,
                     lock=make_lock(card_number(1), transaction_id="t-1", token=4))
    reversed_line = replace(make_redemption("till-1", "t-1", "line-1", remainder=card_number(9)),
                            reversal=ReversalOutcome.REVERSED, reversed_at=NOW)
    write(storage, lambda uow: uow.cards.add([card]))
    write(storage, lambda uow: uow.redemptions.add([reversed_line]))

    def both(number: str, line: tuple[str, str, str]) -> object:
        return read(storage, lambda uow: uow.cards.get_for_update_with_line(number, line))

    assert both(card.card_number, reversed_line.key) == (card, reversed_line)
    assert both(card.card_number, ("till-1", "t-1", "line-2")) == (card, None)
    assert both(card.card_number, ("till-2", "t-1", "line-1")) == (card, None)
    assert both(card_number(404), reversed_line.key) == (None, None)


def test_a_line_redeemed_twice_raises_concurrent_update(storage: Storage) -> None:
    write(storage, lambda uow: uow.redemptions.add([make_redemption("till-1", "t-1", "l-1")]))

    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.redemptions.add(
            [make_redemption("till-1", "t-1", "l-2"), make_redemption("till-1", "t-1", "l-1")]))


def test_a_stored_response_round_trips_and_its_request_id_cannot_be_taken_again(
    storage: Storage,
) -> None:
    response = StoredResponse(
        caller="till-1", request_id="req-1", operation="Redeem",
        fingerprint=b"\x00\xffdigest", result_json='{"balance":{"amount_minor":-5}}',
        created_at=NOW,
    )
    write(storage, lambda uow: uow.requests.add(response))
    # The same request id from another caller is another request.
    write(storage, lambda uow: uow.requests.add(replace(response, caller="admin:alice")))

    assert read(storage, lambda uow: uow.requests.get("till-1", "req-1")) == response
    assert read(storage, lambda uow: uow.requests.get("till-1", "req-2")) is None
    with pytest.raises(ConcurrentUpdate):
        write(storage, lambda uow: uow.requests.add(replace(response, operation="LockCard")))


def test_balances_are_read_for_a_terminal_by_card_number_with_unknown_cards_left_out(
    storage: Storage,
) -> None:
    # A gift card's balance (-1 for a credit memo), the lock's sale when the terminal asking
    # holds it; unknown numbers (sorting between the known ones) absent, the rest each
    # under its own number whether all or only some are found.
    a, b, c, d, unknown = (card_number(n) for n in (5, 1, 9, 3, 7))
    write(storage, lambda uow: uow.cards.add([
        make_card(a, balance=100, lock=make_lock(a, transaction_id="sale-a", token=4)),
        make_card(b, balance=200, currency="USD"),
        make_card(c, balance=300, kind=CardKind.CREDIT_MEMO),
        make_card(d, balance=400, lock=make_lock(d, terminal_id="till-2",
                                                 transaction_id="sale-d", token=6)),
    ]))
    expected = {
        a: ("EUR", 100, "sale-a", 4),
        b: ("USD", 200, None, None),
        c: ("EUR", -1, None, None),
        d: ("EUR", 400, None, 6),
    }

    def balances(numbers: list[str]) -> dict[str, tuple[object, ...]]:
        found = write(storage, lambda uow: uow.cards.balances_for_update(numbers, "till-1"))
        return {number: tuple(balance) for number, balance in found.items()}

    assert balances([a, b, c, d]) == expected
    assert balances([d, unknown, c, b, a, a]) == expected
    assert balances([unknown, b]) == {b: expected[b]}


def test_new_balances_are_set_and_released_locks_cleared_for_many_cards(
    storage: Storage,
) -> None:
    # 123 cards: on SQLite, UPDATEs of 100 and of 10 rows, then the 3 left one by one; the
    # cards whose lock is released and those that keep theirs in two such runs.
    numbers = [card_number(n) for n in range(123)]
    locks = {number: make_lock(number, transaction_id=f"sale-{n}", token=n + 1)
             for n, number in enumerate(numbers)}
    write(storage, lambda uow: uow.cards.add(
        [make_card(number, balance=5_000, lock=locks[number]) for number in numbers]))
    changes = [BalanceChange(number, 5_000 - n, n % 5 != 0) for n, number in enumerate(numbers)]

    def debit(uow: UnitOfWork) -> None:
        assert len(uow.cards.balances_for_update(numbers, "till-1")) == len(numbers)
        uow.cards.set_balances(changes)

    write(storage, debit)

    cards = read(storage, lambda uow: [uow.cards.get(number) for number in numbers])
    assert [(card.balance_minor, card.lock) for card in cards if card is not None] == [
        (change.balance_minor, None if change.release_lock else locks[change.card_number])
        for change in changes]
