"""Fixtures for the terminal library's tests: the real HQ in this process (a temporary SQLite
file, port 0) behind a link the tests break, terminals on real SQLite files, and a
condition-polling helper with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from in_process_hq import CardAtHQ, HQDesk, InProcessHQ, Link, hq_config, new_card_number

from storedvalue.terminal import ConnectivityState, Money, SaleLine, Terminal, TerminalConfig
from storedvalue.v1 import common_pb2

FAST = TerminalConfig(
    call_timeout_s=0.5,
    probe_initial_backoff_s=0.02,
    probe_max_backoff_s=0.2,
    sync_initial_backoff_s=0.01,
    sync_max_backoff_s=0.05,
)
"""Short backoffs so that tests observe reconnection quickly."""

MANUAL_SYNC = TerminalConfig(
    call_timeout_s=0.5,
    probe_initial_backoff_s=0.02,
    probe_max_backoff_s=0.2,
    sync_initial_backoff_s=0.01,
    sync_max_backoff_s=0.05,
    sync_automatically=False,
)

TERMINALS = ("T1", "T2")


def card_number() -> str:
    """A fresh Luhn-valid 16-digit card number."""
    return new_card_number()


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 10.0) -> None:
    """Poll ``condition`` until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.005)


@dataclass
class StoreHQ:
    """The HQ the terminals talk to, through ``link``; ``desk`` reaches it directly."""

    server: InProcessHQ
    link: Link
    desk: HQDesk
    tokens: dict[str, str]
    parameters_version: int
    """The version in force when the test starts (both card kinds allowed offline)."""

    @property
    def address(self) -> str:
        return self.server.address

    def add_card(self, number: str | None = None, *, balance: int, currency: str = "EUR",
                 kind: common_pb2.CardKind.ValueType = common_pb2.CARD_KIND_GIFT_CARD) -> str:
        return self.desk.add_card(number, balance=balance, currency=currency, kind=kind)

    def card(self, number: str) -> CardAtHQ:
        return self.desk.card(number)

    def set_parameters(self, *, gift_card: bool, credit_memo: bool) -> int:
        return self.desk.set_parameters(gift_card=gift_card, credit_memo=credit_memo)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def restart(self, **config_changes: Any) -> None:
        """Stop, change the configuration, serve again (same database, same port)."""
        self.server.stop()
        self.server.reconfigure(**config_changes)
        self.server.start()

    def sent_offline(self, transaction_id: str) -> list[Any]:
        """Every delivery of this offline transaction that reached HQ, as sent."""
        return [
            txn
            for request in self.link.requests("SyncOfflineBatch")
            for txn in request.transactions
            if txn.transaction_id == transaction_id
        ]

    def batch_sizes(self) -> list[int]:
        return [len(request.transactions) for request in self.link.requests("SyncOfflineBatch")]

    def synced_through(self, terminal_id: str = "T1") -> int:
        """The highest N such that HQ has every offline transaction 1..N of the terminal."""
        return int(self.desk.sync_status(terminal_id).highest_contiguous_sequence)


@pytest.fixture
def hq(tmp_path: Path) -> Iterator[StoreHQ]:
    link = Link()
    with InProcessHQ(hq_config(tmp_path), link=link) as server:
        desk = HQDesk(server.address)
        try:
            tokens = {terminal_id: desk.register(terminal_id) for terminal_id in TERMINALS}
            version = desk.set_parameters(gift_card=True, credit_memo=True)
            yield StoreHQ(server, link, desk, tokens, version)
        finally:
            desk.close()


TerminalFactory = Callable[..., Terminal]


@pytest.fixture
def make_terminal(hq: StoreHQ, tmp_path: Path) -> Iterator[TerminalFactory]:
    opened: list[Terminal] = []

    def make(
        terminal_id: str = "T1",
        *,
        config: TerminalConfig = FAST,
        data_dir: Path | None = None,
        address: str | None = None,
    ) -> Terminal:
        terminal = Terminal(
            address=address or hq.address,
            terminal_id=terminal_id,
            credential=hq.tokens.get(terminal_id, "not-a-registered-token"),
            data_dir=data_dir or tmp_path / terminal_id,
            config=config,
        )
        opened.append(terminal)
        return terminal

    yield make
    for terminal in opened:
        terminal.close()


def eur(cents: int) -> Money:
    return Money(cents, "EUR")


def sell_offline(hq: StoreHQ, terminal: Terminal, count: int, *, amount: int = 100) -> list[str]:
    """Lock ``count`` fresh cards online, cut the link, complete one sale per card offline,
    then restore the link and wait until the terminal is ONLINE again. Returns the cards."""
    numbers = []
    for index in range(count):
        number = hq.add_card(balance=1000)
        terminal.add_tender(transaction_id=f"sale-{index}", card_number=number)
        numbers.append(number)
    hq.link.up = False
    for index, number in enumerate(numbers):
        result = terminal.complete_sale(
            transaction_id=f"sale-{index}", lines=[SaleLine("L1", number, eur(amount))]
        )
        assert result.completed_offline
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    return numbers
