"""The ONLINE/OFFLINE state machine: fail once, stop waiting; a probe brings it back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from storedvalue.terminal import (
    ConnectivityChange,
    ConnectivityState,
    HQUnavailable,
    Money,
    SaleLine,
)

from .conftest import FAST, MANUAL_SYNC, StoreHQ, TerminalFactory, card_number, wait_until


def test_failed_call_switches_offline_at_once_and_tells_the_screen(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=100)
    terminal = make_terminal(config=MANUAL_SYNC)
    changes: list[ConnectivityChange] = []
    terminal.on_connectivity_change(changes.append)
    hq.link.up = False
    with pytest.raises(HQUnavailable) as failed:
        terminal.balance(card_number=number)
    assert failed.value.request_sent
    assert terminal.state is ConnectivityState.OFFLINE
    assert [(c.previous, c.state) for c in changes] == [
        (ConnectivityState.ONLINE, ConnectivityState.OFFLINE)
    ]


def test_calls_while_offline_fail_fast_without_touching_the_network(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=100)
    terminal = make_terminal(config=MANUAL_SYNC)
    hq.link.up = False
    with pytest.raises(HQUnavailable):
        terminal.balance(card_number=number)
    hq.stop()  # nothing listens any more: a call that tried would fail slowly or differently
    started = time.monotonic()
    for _ in range(100):
        with pytest.raises(HQUnavailable) as failed:
            terminal.add_tender(transaction_id="sale-1", card_number=number)
        assert not failed.value.request_sent
    assert time.monotonic() - started < 0.5


def test_probe_brings_the_terminal_back_online_and_the_agent_syncs(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=FAST)
    seen: list[ConnectivityState] = []
    back_online = threading.Event()

    def record(change: ConnectivityChange) -> None:
        seen.append(change.state)
        if change.state is ConnectivityState.ONLINE:
            back_online.set()

    terminal.on_connectivity_change(record)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    hq.link.up = False
    terminal.complete_sale(
        transaction_id="sale-1", lines=[SaleLine("A", number, Money(250, "EUR"))]
    )
    hq.link.up = True
    assert back_online.wait(5)
    wait_until(lambda: hq.card(number).balance == 750)
    wait_until(lambda: terminal.outbox() == ())
    assert seen == [ConnectivityState.OFFLINE, ConnectivityState.ONLINE]


def test_terminal_reconnects_after_hq_restarts_on_the_same_port(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=FAST)
    hq.stop()
    with pytest.raises(HQUnavailable):
        terminal.balance(card_number=number)
    assert terminal.state is ConnectivityState.OFFLINE
    hq.start()
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)
    assert terminal.balance(card_number=number).balance == Money(1000, "EUR")


def test_terminal_started_while_hq_is_down_starts_offline_then_connects(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    hq.link.up = False
    terminal = make_terminal(config=FAST)
    assert terminal.state is ConnectivityState.OFFLINE
    assert terminal.parameters.version == 0, "never reached HQ: nothing allowed offline"
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    # Parameters are fetched right after the switch, by the thread that saw HQ again.
    assert terminal.wait_for_parameters(version=hq.parameters_version, timeout_s=5)


def test_close_stops_every_background_thread(hq: StoreHQ, make_terminal: TerminalFactory) -> None:
    before = {thread.name for thread in threading.enumerate()}
    terminal = make_terminal(config=FAST)
    hq.link.up = False
    with pytest.raises(HQUnavailable):
        terminal.balance(card_number=card_number())
    terminal.close()
    terminal.close()
    leftover = {
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith("storedvalue-terminal")
    }
    assert leftover <= before
