"""The outbox is durable: an offline sale returned to the cashier is never lost, whatever
kills the process, and sequence numbers never repeat or skip."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from storedvalue.terminal import (
    ConnectivityState,
    DataDirectoryInUse,
    LineState,
    Money,
    SaleAlreadyCompleted,
    SaleLine,
    Terminal,
    TerminalError,
)
from storedvalue.terminal._database import DATABASE_FILE

from .conftest import MANUAL_SYNC, StoreHQ, TerminalFactory, eur, sell_offline

SELLER = Path(__file__).with_name("offline_seller.py")
CARDS_PER_ROUND = 30


def run_seller_and_kill(
    hq: StoreHQ, data_dir: Path, prefix: str, kill_after: int, issued: list[str]
) -> list[str]:
    """Start a till process, let it sell offline, SIGKILL it once it reported ``kill_after``
    completed sales. Returns the lines it printed for completed sales; the cards it was
    given are added to ``issued``."""
    cards = [hq.add_card(balance=1000) for _ in range(CARDS_PER_ROUND)]
    issued.extend(cards)
    hq.link.up = True
    seller = subprocess.Popen(
        [sys.executable, str(SELLER), hq.address, hq.tokens["T1"], str(data_dir), prefix,
         *cards],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert seller.stdin is not None
    assert seller.stdout is not None
    try:
        assert seller.stdout.readline().strip() == "LOCKED"
        hq.link.up = False
        seller.stdin.write("GO\n")
        seller.stdin.flush()
        reported: list[str] = []
        while len(reported) < kill_after:
            line = seller.stdout.readline().strip()
            assert line and line != "DONE", f"seller ended early: {line!r}"
            reported.append(line)
        os.kill(seller.pid, signal.SIGKILL)
        seller.wait(timeout=30)
        # Whatever it printed between our last read and the kill was also returned to it.
        reported += [line for line in seller.stdout.read().split("\n") if line and line != "DONE"]
    finally:
        if seller.poll() is None:
            seller.kill()
            seller.wait(timeout=30)
        seller.stdin.close()
        seller.stdout.close()
    assert seller.returncode == -signal.SIGKILL
    return reported


@pytest.mark.slow
def test_offline_sales_survive_sigkill_with_contiguous_sequence_numbers(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "till"
    chooser = random.Random(5)
    completed: dict[str, int] = {}
    cards: list[str] = []
    for round_number in range(5):
        kill_after = chooser.randint(1, CARDS_PER_ROUND - 5)
        for line in run_seller_and_kill(hq, data_dir, f"r{round_number}", kill_after, cards):
            transaction_id, printed_sequence = line.split()
            completed[transaction_id] = int(printed_sequence)
    hq.link.up = False
    terminal = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    entries = terminal.outbox()
    in_outbox = {entry.transaction_id: entry.sequence_number for entry in entries}
    sequences = [entry.sequence_number for entry in entries]
    assert sequences == list(range(1, len(entries) + 1)), "no gap, no duplicate"
    assert len(in_outbox) == len(entries), "no transaction stored twice"
    for transaction_id, sequence in completed.items():
        assert in_outbox.get(transaction_id) == sequence, f"{transaction_id} lost"
    hq.link.up = True
    assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=5)
    summary = terminal.sync_now()
    assert (summary.remaining, summary.error) == (0, None)
    assert hq.synced_through("T1") == len(sequences)
    debited = [card for card in map(hq.card, cards) if card.balance != 1000]
    assert len(debited) == len(entries)
    assert all(card.balance == 900 for card in debited)


def test_sequence_numbers_continue_after_the_outbox_was_synced_and_the_till_restarted(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "till"
    first = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    sell_offline(hq, first, 2)
    assert first.sync_now().remaining == 0
    first.close()
    again = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    number = hq.add_card(balance=1000)
    again.add_tender(transaction_id="later", card_number=number)
    hq.link.up = False
    again.abandon_sale(transaction_id="later")
    assert [entry.sequence_number for entry in again.outbox()] == [3]


def test_an_outbox_queued_by_the_previous_version_syncs_with_every_line_answered(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "till"
    first = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    cards = sell_offline(hq, first, 3)
    first.close()
    # Rewind the file to the previous version's: its outbox rows do not say what HQ owes.
    with contextlib.closing(sqlite3.connect(data_dir / DATABASE_FILE)) as old, old:
        old.execute("ALTER TABLE outbox DROP COLUMN answers_owed")
        old.execute("PRAGMA user_version = 2")
    again = make_terminal(config=MANUAL_SYNC, data_dir=data_dir)
    later = hq.add_card(balance=1000)  # and one sale queued by this version, in the same batch
    again.add_tender(transaction_id="later", card_number=later)
    hq.link.up = False
    assert again.complete_sale(transaction_id="later",
                               lines=[SaleLine("L1", later, eur(100))]).completed_offline
    hq.link.up = True
    assert again.wait_for_state(ConnectivityState.ONLINE, timeout_s=10)

    summary = again.sync_now()

    assert (summary.applied, summary.remaining, hq.synced_through()) == (4, 0, 4)
    for transaction_id in ("sale-0", "sale-1", "sale-2", "later"):
        sale = again.sale(transaction_id=transaction_id)
        assert sale is not None and sale.synced
        assert [(line.state, line.balance_after) for line in sale.lines] == [
            (LineState.APPLIED_AT_SYNC, eur(900))]
    assert [hq.card(number).balance for number in [*cards, later]] == [900] * 4
    assert again.sync_now().sent == 0


def test_a_data_directory_is_used_by_one_terminal_process_at_a_time(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    make_terminal(data_dir=tmp_path / "till")
    with pytest.raises(DataDirectoryInUse):
        Terminal(
            address=hq.address,
            terminal_id="T1",
            credential=hq.tokens["T1"],
            data_dir=tmp_path / "till",
            config=MANUAL_SYNC,
        )


def test_a_sale_completed_offline_is_completed_once_and_its_retry_gets_the_same_result(
    hq: StoreHQ, make_terminal: TerminalFactory
) -> None:
    terminal = make_terminal(config=MANUAL_SYNC)
    number = hq.add_card(balance=1000)
    terminal.add_tender(transaction_id="sale-0", card_number=number)
    hq.link.up = False
    line = SaleLine("L1", number, Money(100, "EUR"))
    first = terminal.complete_sale(transaction_id="sale-0", lines=[line])

    assert terminal.complete_sale(transaction_id="sale-0", lines=[line]) == first
    other = SaleLine("L2", number, Money(100, "EUR"))
    with pytest.raises(SaleAlreadyCompleted) as refused:
        terminal.complete_sale(transaction_id="sale-0", lines=[other])
    assert refused.value.result == first
    with pytest.raises(SaleAlreadyCompleted):
        terminal.abandon_sale(transaction_id="sale-0")
    assert len(terminal.outbox()) == 1


def test_data_directory_of_another_terminal_is_refused_and_left_closed(
    hq: StoreHQ, make_terminal: TerminalFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "till"
    make_terminal("T1", config=MANUAL_SYNC, data_dir=data_dir).close()

    def open_files() -> list[str]:
        fds = Path("/proc/self/fd")
        names = []
        for fd in fds.iterdir():
            try:
                names.append(os.readlink(fd))
            except OSError:
                continue  # the directory listing's own fd, gone already
        return [name for name in names if name.startswith(str(data_dir))]

    before = open_files()
    with pytest.raises(TerminalError) as refused:
        make_terminal("T2", config=MANUAL_SYNC, data_dir=data_dir)

    assert refused.value.reason == "DATA_DIRECTORY_MISMATCH"
    assert open_files() == before
    # The directory lock went with the failed attempt: the owner opens it again at once.
    make_terminal("T1", config=MANUAL_SYNC, data_dir=data_dir).close()
