"""SQLite: an online Redeem chains its own journal entry (storage.card_repositories'
OnlineChain: the entry bound with its card's last one and its id, the card's new last entry
written in the UPDATE of its balance) instead of the journal's trigger. Whatever the group
commit does with it (other calls' entries in the same group, a unit that fails after
writing, held-back appends that fail, another HQ process writing between two groups), each
card's history walked through the chain is every journal entry of the card, in order."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import sqlite3
from collections.abc import Awaitable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from journal_chains import broken_histories, card_entries
from storage_samples import NOW, make_card

from storedvalue.hq.domain.cards import CardKind, luhn_check_digit
from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.money import Money
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.unit_of_work import Repositories, StoredResponse
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.hq.storage.group_commit import GroupCommitTransactions

TILL = "till-1"
_ids = itertools.count(1)


def card_number(n: int) -> str:
    body = f"7{n:014d}"
    return body + luhn_check_digit(body)


def key(operation: str) -> RequestKey:
    n = next(_ids)
    return RequestKey(TILL, f"r{n}", operation, hashlib.sha256(str(n).encode()).digest())


class Hq:
    """One HQ process's executor and card service on the database file."""

    def __init__(self, url: str, memos: int = 1000) -> None:
        self.storage = SqlStorage.from_url(url)
        self.transactions = GroupCommitTransactions(self.storage)
        serials = itertools.count(memos)  # remainder memos' numbers
        self.cards = CardService(self.transactions, clock=lambda: NOW,
                                 new_card_number=lambda: card_number(next(serials)))

    def close(self) -> None:
        self.transactions.close()
        self.storage.close()

    async def lock(self, number: str) -> tuple[str, str, int]:
        sale = f"sale-{next(_ids)}"
        locked = await self.cards.lock_card(key=key("LockCard"), terminal_id=TILL,
                                            card_number=number, transaction_id=sale)
        return number, sale, locked.lock.fencing_token

    def redeem(self, held: tuple[str, str, int], amount: int = 1) -> Awaitable[Any]:
        number, sale, token = held
        return self.cards.redeem(key=key("Redeem"), terminal_id=TILL, card_number=number,
                                 transaction_id=sale, line_id="1", fencing_token=token,
                                 amount=Money(amount, "EUR"))

    def add_value(self, number: str) -> Awaitable[Any]:
        return self.cards.add_value(key=key("AddValue"), terminal_id=TILL, card_number=number,
                                    amount=Money(5, "EUR"), transaction_id="")

    async def issue(self, n: int, kind: CardKind = CardKind.GIFT_CARD) -> str:
        await self.cards.issue_card(key=key("IssueCard"), terminal_id=TILL, kind=kind,
                                    initial_value=Money(10_000, "EUR"),
                                    card_number=card_number(n), transaction_id="")
        return card_number(n)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "hq.sqlite3"
    upgrade_to_head(f"sqlite:///{path}")
    return path


def history_pages(storage: SqlStorage, number: str) -> list[int]:
    ids: list[int] = []
    with storage.unit_of_work(write=False) as uow:
        while page := uow.journal.list_for_card(number, after_entry_id=ids[-1] if ids else 0,
                                                limit=3):
            ids += [entry.entry_id for entry in page]
    return ids


def test_online_redeems_chain_their_entries_among_a_groups_other_entries_and_reruns(
    database: Path,
) -> None:
    hq = Hq(f"sqlite:///{database}")

    def fails_after_writing(uow: Repositories) -> None:
        uow.cards.add([make_card(card_number(900))])
        raise InvalidField("amount", "made up for the test")

    taken: list[str] = []

    def takes_a_request_id_taken(uow: Repositories) -> str:
        """As `once`: on its first run (appends held back) it appends a result under a
        request id already taken, which fails with the group's appends; then it looks."""
        if taken and uow.requests.get(TILL, "taken") is not None:
            return "replayed"
        taken.append("once")
        uow.requests.add(StoredResponse(caller=TILL, request_id="taken", operation="Test",
                                        fingerprint=b"f", result_json="{}", created_at=NOW))
        return "first"

    async def scenario() -> list[Any]:
        numbers = [await hq.issue(n) for n in range(1, 6)]
        memo = await hq.issue(6, CardKind.CREDIT_MEMO)
        await hq.transactions.write(takes_a_request_id_taken)
        taken.clear()
        outcomes: list[Any] = []
        for _round in range(3):
            held = await asyncio.gather(*(hq.lock(n) for n in numbers[:4]))
            memo_held = await hq.lock(memo) if _round == 0 else None
            before = hq.transactions.commits
            # One group: Redeems of four cards, value added to two of them (before and
            # after their Redeem: the one before is chained by the trigger, as the Redeem
            # after it then) and to another, a card issued, a unit failing after its
            # writes (the group starts over), and, once, held appends failing (it starts
            # over with appends written at once). Once, value is added to a card before
            # the group's first Redeem.
            outcomes += await asyncio.gather(
                *([hq.add_value(numbers[4])] if _round == 2 else []),
                hq.redeem(held[0]),
                hq.add_value(numbers[1]),
                hq.redeem(held[1]),
                hq.add_value(numbers[4]),
                hq.redeem(held[2]),
                hq.transactions.write(fails_after_writing),
                hq.add_value(numbers[2]),
                *([hq.redeem(memo_held, 2_500)] if memo_held else []),
                hq.issue(10 + _round),
                *([hq.transactions.write(takes_a_request_id_taken)] if _round == 1 else []),
                hq.redeem(held[3]),
                return_exceptions=True)
            assert hq.transactions.commits - before == 1
        return outcomes

    try:
        outcomes = asyncio.run(scenario())
        failures = [o for o in outcomes if isinstance(o, Exception)]
        assert len(failures) == 3 and all(isinstance(f, InvalidField) for f in failures)
        assert "replayed" in outcomes
        assert broken_histories(database) == {}
        for number in (card_number(n) for n in range(1, 7)):
            assert history_pages(hq.storage, number) == card_entries(database)[number]
    finally:
        hq.close()


def test_a_group_of_online_redeems_chains_itself_without_the_trigger(database: Path) -> None:
    hq = Hq(f"sqlite:///{database}")

    async def scenario() -> None:
        numbers = [await hq.issue(n) for n in range(1, 5)]
        with closing(sqlite3.connect(database)) as connection:  # from now on, Redeems only
            connection.execute("DROP TRIGGER journal_chain")
        for _round in range(3):
            held = await asyncio.gather(*(hq.lock(n) for n in numbers))
            await asyncio.gather(*(hq.redeem(h) for h in held))

    try:
        asyncio.run(scenario())
        assert broken_histories(database) == {}
        assert all(len(entries) == 4 for entries in card_entries(database).values())
    finally:
        hq.close()


def test_two_hq_processes_redeeming_on_one_file_in_turn_keep_every_chain(
    database: Path,
) -> None:
    # Each process numbers its entries from the journal's largest id read in its own
    # transaction: the other's entries since its last group are counted.
    url = f"sqlite:///{database}"
    first, second = Hq(url), Hq(url, 2000)

    async def scenario() -> None:
        numbers = [await first.issue(n) for n in range(1, 4)]
        for _round in range(4):
            for hq, other in ((first, second), (second, first)):
                held = await asyncio.gather(*(hq.lock(n) for n in numbers))
                await asyncio.gather(hq.redeem(held[0]), other.add_value(numbers[2]),
                                     hq.redeem(held[1]))
                await asyncio.gather(hq.redeem(held[2]), other.issue(20 + _round * 2
                                                                     + (hq is second)))

    try:
        asyncio.run(scenario())
        assert broken_histories(database) == {}
    finally:
        first.close()
        second.close()

