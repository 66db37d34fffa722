"""How fast HQ applies offline transactions (issue 4; DESIGN.md section 7: sync at 20,000/s or
more, cost linear in size).

Measures, in one run on one machine, offline transactions applied per second through the
offline service on a SQLite file (WAL, synchronous=FULL), in batches of 1,000 as the
terminals send them, at 1,000, 10,000 and 100,000 transactions. The baseline, measured in
the same run, is raw sqlite3 writing the same number of journal-sized rows in the same number
of commits: the floor any durable apply path stands on. Prints rates, the ratio to the
baseline and the linearity (time at 10x the size over 10x the time).

    python bench/hq_offline_apply.py [--sizes 1000,10000,100000] [--url sqlite:///...]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench_hq import record_sale_locks

from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import OfflineRedeemLine, OfflineTransaction
from storedvalue.hq.domain.parameters import ParametersChange
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.storage import SqlStorage, upgrade_to_head

BATCH = 1_000
CARDS = 2_000
BUDGET_PER_SECOND = 20_000


def _key(op: str, n: int) -> RequestKey:
    return RequestKey("admin:bench", f"{op}-{n}", op, hashlib.sha256(f"{op}{n}".encode()).digest())


def apply_rate(url: str, size: int) -> float:
    upgrade_to_head(url)
    storage = SqlStorage.from_url(url)
    try:
        params = ParametersService(storage)
        params.ensure_initialized()
        version = params.update(key=_key("UpdateParameters", 0), updated_by="bench",
                                change=ParametersChange(True, True), expected_version=0).version
        BackOfficeService(storage).register_terminal(
            key=_key("RegisterTerminal", 0), terminal_id="bench-till", display_name="")
        cards = CardService(storage)
        numbers = [
            cards.issue_card(key=_key("IssueCard", i), terminal_id="bench-till",
                             kind=CardKind.GIFT_CARD, initial_value=Money(10**9, "EUR"),
                             card_number="", transaction_id=f"issue-{i}").card_number
            for i in range(CARDS)
        ]
        now = datetime.now(UTC)
        # The till held each card's lock for its sale (HQ's lock history says so).
        tokens = record_sale_locks(storage, [(numbers[seq % CARDS], f"offline-{seq}")
                                             for seq in range(1, size + 1)])
        transactions = [
            OfflineTransaction(
                transaction_id=f"offline-{seq}", sequence_number=seq, completed_at=now,
                parameters_version=version,
                redeem_lines=(OfflineRedeemLine("1", numbers[seq % CARDS], CardKind.GIFT_CARD,
                                                Money(100, "EUR"), tokens[seq - 1]),),
                fingerprint=hashlib.sha256(str(seq).encode()).digest(),
            )
            for seq in range(1, size + 1)
        ]
        offline = OfflineService(storage)
        started = time.perf_counter()
        for start in range(0, size, BATCH):
            outcome = offline.sync(terminal_id="bench-till",
                                   transactions=transactions[start:start + BATCH])
            assert len(outcome.results) == len(transactions[start:start + BATCH])
        elapsed = time.perf_counter() - started
        assert outcome.status.highest_contiguous_sequence == size
        return size / elapsed
    finally:
        storage.close()


def baseline_rate(path: Path, size: int) -> float:
    """Raw sqlite3, same durability: `size` journal-like rows in size/BATCH commits."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE j (id INTEGER PRIMARY KEY, card TEXT, kind TEXT, amount INTEGER,"
               " balance INTEGER, terminal TEXT, txn TEXT, line TEXT, at INTEGER)")
    started = time.perf_counter()
    for start in range(0, size, BATCH):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO j (card, kind, amount, balance, terminal, txn, line, at) "
            "VALUES (?, 'REDEEM', -100, 0, 'bench-till', ?, '1', 0)",
            ((f"{n % CARDS:016d}", f"offline-{n}") for n in range(start, min(start + BATCH, size))),
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return size / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'size':>8} {'applied/s':>10} {'baseline/s':>11} {'ratio':>6} {'budget':>7}")
    times: dict[int, float] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rate = apply_rate(f"sqlite:///{tmp}/hq.sqlite3", size)
            base = baseline_rate(Path(tmp) / "baseline.sqlite3", size)
        times[size] = size / rate
        verdict = "ok" if rate >= BUDGET_PER_SECOND else "BELOW"
        print(f"{size:>8} {rate:>10.0f} {base:>11.0f} {rate / base:>6.2f} {verdict:>7}",
              flush=True)
    for small, large in itertools.pairwise(sizes):
        scale = large / small
        growth = times[large] / times[small]
        verdict = "linear" if growth <= scale * 1.1 else "WORSE THAN LINEAR"
        print(f"time x{growth:.2f} for size x{scale:.0f} ({verdict}; budget x{scale * 1.1:.0f})")


if __name__ == "__main__":
    main()
