"""A till selling offline: the public terminal library in its own process, reaching the HQ
process through a breakable TCP relay (so the bench can cut the link).

1. Already offline: the till locks one gift card per sale while the link is up, the relay
   black-holes the link, one sale takes the terminal OFFLINE, then ``complete_sale`` is timed
   for every other sale (one line each, each durable in the outbox before it returns).
   Baseline, interleaved with those sales: one durable SQLite commit (WAL, synchronous=FULL,
   BEGIN IMMEDIATE, one small insert) in the same directory, the floor of any offline sale.
2. First sale after the drop, ``trials`` times: the link passes, the till gets ONLINE and
   locks a card, the relay black-holes the link, ``complete_sale`` is timed: its Redeem
   waits out the call deadline, then the sale completes offline.

Spec: address, terminal_id, token, cards (sales + 1 + trials), data_dir, sales, trials,
parameters_version (one that allows gift cards offline). Replies with the durations in ms.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from children import answer, progress
from offline_sales import Link, open_terminal, sell_offline

from storedvalue.terminal import ConnectivityState, HQUnavailable, Terminal, TerminalConfig

CONFIG = TerminalConfig(sync_automatically=False, probe_max_backoff_s=0.5)
"""The library's default call deadline (the one the budget is about); the outbox stays put
during the run; probes at most 0.5 s apart so that each trial reconnects quickly."""
RECONNECT_S = 15.0


class DurableCommit:
    """The baseline: one small row, one durable commit, on the terminal's filesystem."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE sale (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        self._payload = bytes(120)  # about one offline transaction

    def timed_ms(self) -> float:
        started = time.perf_counter()
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("INSERT INTO sale (payload) VALUES (?)", (self._payload,))
        self._db.execute("COMMIT")
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self._db.close()


def already_offline(terminal: Terminal, link: Link, cards: list[str],
                    baseline: DurableCommit) -> tuple[list[float], list[float]]:
    for index, card in enumerate(cards):
        terminal.add_tender(transaction_id=f"offline-{index}", card_number=card)
    link.black_hole()
    sell_offline(terminal, "offline-0", cards[0])  # waits out the deadline: now OFFLINE
    if terminal.state is not ConnectivityState.OFFLINE:
        raise RuntimeError("the terminal did not switch to OFFLINE")
    sales: list[float] = []
    commits: list[float] = []
    for index in range(1, len(cards)):
        sales.append(sell_offline(terminal, f"offline-{index}", cards[index]))
        commits.append(baseline.timed_ms())
    return sales, commits


def reconnect_and_lock(terminal: Terminal, link: Link, sale: str, card: str) -> None:
    link.pass_through()
    deadline = time.monotonic() + RECONNECT_S
    while time.monotonic() < deadline:
        if not terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=RECONNECT_S):
            break
        try:
            terminal.add_tender(transaction_id=sale, card_number=card)
            return
        except HQUnavailable:
            continue  # the redialled channel was not ready yet: the probe brings it back
    raise RuntimeError(f"the till did not get back online within {RECONNECT_S} s")


def first_after_drop(terminal: Terminal, link: Link, cards: list[str]) -> list[float]:
    durations = []
    for index, card in enumerate(cards):
        sale = f"drop-{index}"
        reconnect_and_lock(terminal, link, sale, card)
        link.black_hole()
        durations.append(sell_offline(terminal, sale, card))
    return durations


def main(spec: dict[str, Any]) -> dict[str, Any]:
    root = Path(spec["data_dir"])
    root.mkdir(parents=True, exist_ok=True)
    sales, trials = int(spec["sales"]), int(spec["trials"])
    cards: list[str] = spec["cards"]
    baseline = DurableCommit(root / "baseline.sqlite3")
    try:
        with Link(spec["address"]) as link, open_terminal(
            spec, link.address, root / "till", CONFIG
        ) as terminal:
            progress(f"offline till: {sales} sales on a till already offline")
            offline_ms, commit_ms = already_offline(terminal, link, cards[:sales + 1], baseline)
            progress(f"offline till: {trials} link drops")
            drop_ms = first_after_drop(terminal, link, cards[sales + 1:sales + 1 + trials])
            outbox = len(terminal.outbox())
    finally:
        baseline.close()
    if outbox != sales + 1 + trials:
        raise RuntimeError(f"the outbox holds {outbox} sales, not {sales + 1 + trials}")
    return {"offline_ms": offline_ms, "commit_ms": commit_ms, "drop_ms": drop_ms,
            "deadline_ms": CONFIG.call_timeout_s * 1000}


if __name__ == "__main__":
    answer(main)
