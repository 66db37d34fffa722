"""Fixtures for the terminal library's tests: a fake HQ on a real port, terminals on real
SQLite files, and a condition-polling helper with a deadline."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storedvalue.terminal import ConnectivityState, Money, SaleLine, Terminal, TerminalConfig

from .fake_hq import FakeHQ, luhn_check_digit

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

_numbers = itertools.count(1)


def card_number() -> str:
    """A fresh Luhn-valid 16-digit card number."""
    body = f"6{next(_numbers):014d}"
    return body + luhn_check_digit(body)


def wait_until(condition: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
    """Poll ``condition`` until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.005)


@pytest.fixture
def hq() -> Iterator[FakeHQ]:
    server = FakeHQ()
    server.add_terminal("T1", "token-t1")
    server.add_terminal("T2", "token-t2")
    yield server
    server.stop()


TerminalFactory = Callable[..., Terminal]


@pytest.fixture
def make_terminal(hq: FakeHQ, tmp_path: Path) -> Iterator[TerminalFactory]:
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
            credential=f"token-{terminal_id.lower()}",
            data_dir=data_dir or tmp_path / terminal_id,
            config=config,
        )
        opened.append(terminal)
        return terminal

    yield make
    for terminal in opened:
        terminal.close()


def sell_offline(hq: FakeHQ, terminal: Terminal, count: int, *, amount: int = 100) -> list[str]:
    """Lock ``count`` fresh cards online, cut the link, complete one sale per card offline,
    then restore the link and wait until the terminal is ONLINE again. Returns the cards."""
    numbers = []
    for index in range(count):
        number = card_number()
        hq.add_card(number, balance=1000)
        terminal.add_tender(transaction_id=f"sale-{index}", card_number=number)
        numbers.append(number)
    hq.link.up = False
    for index, number in enumerate(numbers):
        result = terminal.complete_sale(
            transaction_id=f"sale-{index}", lines=[SaleLine("L1", number, Money(amount, "EUR"))]
        )
        assert result.completed_offline
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    return numbers
