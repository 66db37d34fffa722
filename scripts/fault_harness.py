"""Fault harness: sales through a real `storedvalue serve` (SQLite) and a real POS process
(tests/e2e/pos_app.py, the terminal library embedded), while HQ and the POS are SIGKILLed at
random moments: while the card is added, during complete_sale (online Redeems, or the sale
completing offline while HQ is down), and while the till syncs its outbox after HQ comes back.
A killed HQ is restarted on the same database and port; a killed POS is restarted on the same
data directory and finishes its open sale as the README says (complete_sale again, same
lines), as a till would.

At the end, with the outbox drained, every card's balance must be its initial value minus
the lines of the sales the till reports completed (online or offline): each sale debited
exactly once, none lost, abandoned ones nothing; and every card's history, the chain the
back office pages from the card's last journal entry, must be exactly its journal entries,
adding up to its balance. Exit status 1 when a balance or a history is wrong or a sale stays
stuck.

    .venv/bin/python scripts/fault_harness.py --seed 5 --sales 40   # about a minute

Found with it: a POS that added a card again after a Redeem whose answer was lost
(tests/terminal/test_recovery.py, 2026-12-05). Not run by CI (random kills, minutes); the
deterministic cases are in tests/e2e/test_hq_killed_*.py and tests/terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
Line = tuple[str, str, int, str]
"""A sale line as the POS takes it: line id, card number, amount in minor units, currency."""
sys.path.insert(0, str(ROOT / "tests"))

import grpc  # noqa: E402
from e2e.harness import BackOffice, HQProcess, Till, new_id  # noqa: E402
from journal_chains import broken_histories  # noqa: E402

from storedvalue.v1 import back_office_service_pb2 as bo  # noqa: E402

POS_APP = ROOT / "tests" / "e2e" / "pos_app.py"
INITIAL_BALANCE = 10_000_000
FINISHED = ("COMPLETED_ONLINE", "COMPLETED_OFFLINE", "ABANDONED")
ATTEMPTS = 60
"""Tries to finish one sale before it is abandoned (a till retrying through faults)."""


class Pos:
    """The POS process, one JSON command per line."""

    def __init__(self, address: str, token: str, data_dir: Path, errors: IO[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(POS_APP), address, "till-f", token, str(data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "tests")},
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in, self._out = self.process.stdin, self.process.stdout
        if not json.loads(self._out.readline() or "{}").get("ready"):
            raise RuntimeError("the POS did not start")

    def command(self, **command: Any) -> dict[str, Any]:
        self._in.write(json.dumps(command) + "\n")
        self._in.flush()
        line = self._out.readline()
        if not line:
            raise EOFError("the POS died")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        with contextlib.suppress(BrokenPipeError):  # what it was sent before it died
            self._in.close()
        self._out.close()


class Store:
    """HQ, the till's POS and the chaos between them."""

    def __init__(self, home: Path, rnd: random.Random) -> None:
        self.rnd = rnd
        self.hq = HQProcess(home)
        self.hq.start()
        self.channel = grpc.insecure_channel(self.hq.address)
        self.back_office = BackOffice(self.channel)
        self.till = self.back_office.register_till("till-f")
        self.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), gift_card_offline_completion_allowed=True))
        self.cards = [self.till.issue_gift_card(INITIAL_BALANCE).card_number for _ in range(6)]
        self.data_dir = home / "till"
        self.errors = (home / "pos.err").open("a", encoding="utf-8")
        self.pos = self._start_pos()
        self.lock = threading.Lock()
        self.kills = {"hq": 0, "pos": 0}
        self.killers: list[threading.Thread] = []

    def _start_pos(self) -> Pos:
        return Pos(self.hq.address, self.till.token, self.data_dir, self.errors)

    def kill_later(self, target: str, delay: float) -> threading.Thread:
        def kill() -> None:
            time.sleep(delay)  # a random moment of whatever runs now, not a wait for it
            with self.lock:
                process = self.hq.process if target == "hq" else self.pos.process
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    self.kills[target] += 1

        thread = threading.Thread(target=kill)
        thread.start()
        self.killers.append(thread)
        return thread

    def hq_up(self) -> None:
        with self.lock:
            assert self.hq.process is not None
            if self.hq.process.poll() is not None:
                self.hq.start()

    def ask(self, **command: Any) -> dict[str, Any]:
        """A command to the POS; restarted on its data directory if it was killed."""
        while True:
            try:
                return self.pos.command(**command)
            except (EOFError, BrokenPipeError):
                self.pos.close()
                self.pos = self._start_pos()

    def sell(self, sale: str, lines: list[Line], kill_in_complete: str | None) -> str:
        """Drive one sale to an end through faults; its final status at the till."""
        for _ in range(ATTEMPTS):
            view = self.ask(op="sale", sale=sale)["sale"]
            if view is not None and view["status"] in FINISHED:
                return str(view["status"])
            if all(self.ask(op="add_tender", sale=sale, card=card)["ok"]
                   for _, card, _, _ in lines):
                if kill_in_complete is not None:
                    self.kill_later(kill_in_complete, self.rnd.uniform(0, 0.03))
                    kill_in_complete = None
                answer = self.ask(op="complete_sale", sale=sale, lines=lines)
                if answer["ok"]:
                    return ("COMPLETED_OFFLINE" if answer["completed_offline"]
                            else "COMPLETED_ONLINE")
                print(f"  {sale}: {answer}", flush=True)
            self.hq_up()
            time.sleep(0.05)  # the till's backoff: HQ restarting, a lock being released
        self.ask(op="abandon_sale", sale=sale)
        return "ABANDONED"

    def drain_outbox(self, timeout: float) -> int:
        for killer in self.killers:  # the last kills land first, then HQ is up for good
            killer.join()
        self.hq_up()
        self.ask(op="wait_online", timeout_s=timeout)
        deadline = time.monotonic() + timeout
        while (left := int(self.ask(op="state")["outbox"])) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def balances(self) -> dict[str, int]:
        with grpc.insecure_channel(self.hq.address) as channel:
            till = Till(channel, self.till.terminal_id, self.till.token)
            return {card: till.get_card(card).balance.amount_minor for card in self.cards}

    def close(self) -> None:
        self.pos.close()
        self.errors.close()
        self.channel.close()
        self.hq.stop()


def run(seed: int, sales: int, home: Path) -> bool:
    rnd = random.Random(seed)  # noqa: S311 (chaos, repeatable by its seed)
    store = Store(home, rnd)
    expected = dict.fromkeys(store.cards, 0)
    stuck = []
    try:
        for number in range(sales):
            sale = f"S{number}"
            lines: list[Line] = [
                (str(i + 1), card, rnd.randint(1, 5_000), "EUR")
                for i, card in enumerate(rnd.sample(store.cards, rnd.choice([1, 1, 2])))]
            roll = rnd.random()
            in_complete = "hq" if roll < 0.2 else "pos" if roll < 0.3 else None
            killer = (store.kill_later("hq", rnd.uniform(0, 0.25)) if 0.3 <= roll < 0.45
                      else store.kill_later("pos", rnd.uniform(0, 0.25)) if 0.45 <= roll < 0.6
                      else None)
            status = store.sell(sale, lines, in_complete)
            if killer is not None:
                killer.join()
            if store.hq.process is not None and store.hq.process.poll() is not None \
                    and rnd.random() < 0.5:
                store.hq_up()  # and kill it again while the till syncs what it sold offline
                store.kill_later("hq", rnd.uniform(0, 0.4))
            view = store.ask(op="sale", sale=sale)["sale"]
            final = view["status"] if view else "NONE"
            print(f"{sale} {status} {final} {lines}", flush=True)
            if final in ("COMPLETED_ONLINE", "COMPLETED_OFFLINE"):
                for _, card, amount, _ in lines:
                    expected[card] += amount
            elif final != "ABANDONED":
                stuck.append((sale, final))
        left = store.drain_outbox(timeout=60)
        balances = store.balances()
    finally:
        store.close()
    wrong = {card: (balance, INITIAL_BALANCE - expected[card])
             for card, balance in balances.items() if balance != INITIAL_BALANCE - expected[card]}
    broken = broken_histories(store.hq.database)
    print(f"kills {store.kills}; outbox left {left}; stuck {stuck}; "
          f"balances that differ (found, expected) {wrong}; histories broken {broken}")
    return not wrong and not stuck and left == 0 and not broken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=random.randrange(1_000_000))  # noqa: S311
    parser.add_argument("--sales", type=int, default=40)
    args = parser.parse_args()
    print(f"seed {args.seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="storedvalue-faults-") as home:
        return 0 if run(args.seed, args.sales, Path(home)) else 1


if __name__ == "__main__":
    sys.exit(main())
