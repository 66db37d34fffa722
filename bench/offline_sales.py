"""What the bench's till processes share: the breakable link of `storedvalue demo` and the
end-to-end tests (a loopback TCP relay, so a bench can cut a till's link), a terminal opened
ONLINE with the parameters that allow gift cards offline, and a one-line sale that must
complete offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from storedvalue.cli._link import Link
from storedvalue.terminal import ConnectivityState, Money, SaleLine, Terminal, TerminalConfig

PRICE = Money(100, "EUR")
READY_TIMEOUT_S = 30.0


def open_terminal(spec: dict[str, Any], address: str, data_dir: Path, config: TerminalConfig
                  ) -> Terminal:
    """The till of ``spec`` (terminal_id, token, parameters_version), once ONLINE with that
    parameters version applied."""
    terminal = Terminal(address=address, terminal_id=spec["terminal_id"],
                        credential=spec["token"], data_dir=data_dir, config=config)
    try:
        if not terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=READY_TIMEOUT_S):
            raise RuntimeError("the till never got ONLINE")
        if not terminal.wait_for_parameters(version=int(spec["parameters_version"]),
                                            timeout_s=READY_TIMEOUT_S):
            raise RuntimeError("the till never received the parameters allowing offline")
    except BaseException:
        terminal.close()
        raise
    return terminal


def sell_offline(terminal: Terminal, sale: str, card: str) -> float:
    """Complete a one-line sale that must complete offline; its duration in ms."""
    started = time.perf_counter()
    result = terminal.complete_sale(transaction_id=sale, lines=[SaleLine("1", card, PRICE)])
    elapsed = (time.perf_counter() - started) * 1000
    if not result.completed_offline:
        raise RuntimeError(f"{sale} completed online while the link was down")
    return elapsed


__all__ = ["PRICE", "Link", "open_terminal", "sell_offline"]
