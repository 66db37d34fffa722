"""HQ parameters on the terminal: on disk, refreshed on connection, followed while online."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from storedvalue.terminal import (
    ConnectivityState,
    Money,
    OfflineNotAllowed,
    Parameters,
    SaleLine,
)

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory


def test_parameter_change_reaches_a_connected_terminal_within_a_second(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal()
    seen: list[Parameters] = []
    terminal.on_parameters_change(seen.append)
    started = time.monotonic()
    version = hq.set_parameters(gift_card=False, credit_memo=True)
    assert terminal.wait_for_parameters(version=version, timeout_s=1.0)
    assert time.monotonic() - started < 1.0
    assert not terminal.parameters.gift_card_offline_completion_allowed
    assert [p.version for p in seen] == [version]


def test_parameters_survive_a_restart_while_hq_is_unreachable(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    version = hq.set_parameters(gift_card=True, credit_memo=False)
    first = make_terminal(config=MANUAL_SYNC, data_dir=tmp_path / "till")
    assert first.parameters.version == version
    first.close()
    hq.link.up = False
    again = make_terminal(config=MANUAL_SYNC, data_dir=tmp_path / "till")
    assert again.state is ConnectivityState.OFFLINE
    assert again.parameters.version == version
    assert again.parameters.gift_card_offline_completion_allowed
    assert not again.parameters.credit_memo_offline_completion_allowed
    assert again.sync_limits is not None


def test_offline_decision_uses_the_parameters_received_last(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    number = hq.add_card(balance=1000)
    terminal = make_terminal(config=MANUAL_SYNC)
    terminal.add_tender(transaction_id="sale-1", card_number=number)
    version = hq.set_parameters(gift_card=False, credit_memo=False)
    assert terminal.wait_for_parameters(version=version, timeout_s=1.0)
    hq.link.up = False
    with pytest.raises(OfflineNotAllowed):
        terminal.complete_sale(
            transaction_id="sale-1", lines=[SaleLine("A", number, Money(10, "EUR"))]
        )
