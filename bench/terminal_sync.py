"""Outbox to HQ: how fast a terminal syncs its offline transactions (issue 5; DESIGN.md
section 7: 100,000 at 20,000/s or more, cost linear in size: 10x the transactions in at most
11x the time).

For each size, in one run on one machine:

- the terminal's outbox (its SQLite file) is filled through the library's own Outbox, one
  durable commit per offline transaction as a till would write them (not timed);
- a real Terminal syncs it with ``sync_now()`` to a real HQ in this process, over a loopback
  gRPC channel, on a SQLite file (WAL, synchronous=FULL). Timed until the outbox is empty and
  HQ's GetTerminalSyncStatus says the highest contiguous sequence is N;
- baseline: HQ's OfflineService applies the very same transactions (converted from the same
  messages beforehand) to a second, identically prepared SQLite file, in batches of the size
  the terminal sends: the apply path alone, without gRPC, servicer or outbox. The ratio shows
  what the wire and the outbox cost.

    python bench/terminal_sync.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
from bench_hq import (
    ADMIN_TOKEN,
    TERMINAL_ID,
    PreparedHQ,
    filesystem_of,
    prepare,
    record_sale_locks,
    serving,
)

from storedvalue.hq.grpc_api.convert import offline_transaction_from_proto
from storedvalue.hq.services.offline import OfflineService
from storedvalue.terminal import CardKind, ConnectivityState, Money, Terminal, TerminalConfig
from storedvalue.terminal._convert import offline_sale_to_bytes
from storedvalue.terminal._database import Database
from storedvalue.terminal._hq_records import OfflineLine, OfflineSale
from storedvalue.terminal._outbox import Outbox
from storedvalue.v1 import back_office_service_pb2, back_office_service_pb2_grpc
from storedvalue.v1 import offline_pb2 as opb

CARDS = 2_000
BUDGET_PER_SECOND = 20_000
BUDGET_GROWTH_PER_10X = 11.0
CONFIG = TerminalConfig(sync_automatically=False)
"""Library defaults (batches of 500, HQ allows 1,000), manual sync so that the bench times it."""


def offline_transactions(prepared: PreparedHQ, size: int) -> list[OfflineSale]:
    """What a till completing ``size`` one-line gift card sales offline puts in its outbox
    (sequence numbers 1..size, as the outbox assigns them on an empty terminal)."""
    completed_at = datetime.now(UTC)
    cards = prepared.cards
    tokens = record_sale_locks(prepared.storage, [
        (cards[seq % len(cards)], f"offline-{seq}") for seq in range(1, size + 1)])
    return [
        OfflineSale(
            transaction_id=f"offline-{seq}",
            completed_at=completed_at,
            parameters_version=prepared.parameters_version,
            redeem_lines=(
                OfflineLine(
                    line_id="1",
                    card_number=cards[seq % len(cards)],
                    card_kind=CardKind.GIFT_CARD,
                    amount=Money(100, "EUR"),
                    fencing_token=tokens[seq - 1],  # the till's lock for this sale
                    online_redeem_attempted=False,
                ),
            ),
        )
        for seq in range(1, size + 1)
    ]


def fill_outbox(data_dir: Path, transactions: list[OfflineSale]) -> float:
    """Append through the library's Outbox, one durable commit each; returns appends/s."""
    database = Database(data_dir, TERMINAL_ID)
    try:
        outbox = Outbox(database)
        started = time.perf_counter()
        for transaction in transactions:
            outbox.append(transaction)
        elapsed = time.perf_counter() - started
        assert outbox.last_sequence_number() == len(transactions)
    finally:
        database.close()
    return len(transactions) / elapsed


def highest_contiguous_sequence(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = back_office_service_pb2_grpc.BackOfficeServiceStub(channel)
        response = stub.GetTerminalSyncStatus(
            back_office_service_pb2.GetTerminalSyncStatusRequest(terminal_id=TERMINAL_ID),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
            timeout=10,
        )
    return int(response.sync_status.highest_contiguous_sequence)


def time_sync(prepared: PreparedHQ, data_dir: Path, size: int) -> tuple[float, int]:
    """Seconds from ``sync_now()`` until the outbox is empty and HQ has 1..size, and the
    terminal's batch size."""
    with serving(prepared) as address, Terminal(
        address=address, terminal_id=TERMINAL_ID, credential=prepared.bearer_token,
        data_dir=data_dir, config=CONFIG,
    ) as terminal:
        assert terminal.wait_for_state(ConnectivityState.ONLINE, timeout_s=10), "HQ unreachable"
        limits = terminal.sync_limits
        batch = min(CONFIG.sync_batch_size, limits.max_transactions_per_batch if limits else 0)
        started = time.perf_counter()
        summary = terminal.sync_now()
        highest = highest_contiguous_sequence(address)
        elapsed = time.perf_counter() - started
        assert summary.error is None, summary.error
        assert (summary.applied, summary.remaining) == (size, 0), summary
        assert highest == size, highest
        assert terminal.outbox() == ()
    return elapsed, batch


def time_apply_alone(prepared: PreparedHQ, transactions: list[OfflineSale], batch: int
                     ) -> float:
    """Seconds for HQ's OfflineService to apply the same transactions, no wire, no outbox."""
    domain = [
        offline_transaction_from_proto(
            opb.OfflineTransaction.FromString(offline_sale_to_bytes(transaction, seq))
        )
        for seq, transaction in enumerate(transactions, start=1)
    ]
    service = OfflineService(prepared.storage)
    started = time.perf_counter()
    outcome = None
    for start in range(0, len(domain), batch):
        outcome = service.sync(terminal_id=TERMINAL_ID, transactions=domain[start:start + batch])
    elapsed = time.perf_counter() - started
    assert outcome is not None
    assert outcome.status.highest_contiguous_sequence == len(domain)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    wire_s: dict[int, float] = {}
    alone_s: dict[int, float] = {}
    print(f"{'size':>8} {'synced/s':>9} {'apply alone/s':>14} {'ratio':>6} "
          f"{'budget/s':>9} {'verdict':>8}   (outbox filled at, appends/s)", flush=True)
    for size in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
            root = Path(tmp)
            wire_hq = prepare(f"sqlite:///{root / 'hq.sqlite3'}", card_count=CARDS)
            alone_hq = prepare(f"sqlite:///{root / 'hq-alone.sqlite3'}", card_count=CARDS)
            try:
                transactions = offline_transactions(wire_hq, size)
                record_sale_locks(alone_hq.storage, [  # the same locks, the same tokens
                    (t.redeem_lines[0].card_number, t.transaction_id) for t in transactions])
                fill_rate = fill_outbox(root / "till", transactions)
                wire_s[size], batch = time_sync(wire_hq, root / "till", size)
                alone_s[size] = time_apply_alone(alone_hq, transactions, batch)
            finally:
                wire_hq.close()
                alone_hq.close()
            if size == sizes[0]:
                print(f"# data on {filesystem_of(root)}; terminal batches of {batch}", flush=True)
        rate, alone = size / wire_s[size], size / alone_s[size]
        verdict = "ok" if rate >= BUDGET_PER_SECOND else "BELOW"
        print(f"{size:>8} {rate:>9.0f} {alone:>14.0f} {rate / alone:>6.2f} "
              f"{BUDGET_PER_SECOND:>9} {verdict:>8}   ({fill_rate:.0f})", flush=True)
    for small, large in itertools.pairwise(sizes):
        scale = large / small
        budget = BUDGET_GROWTH_PER_10X * scale / 10
        growth = wire_s[large] / wire_s[small]
        alone_growth = alone_s[large] / alone_s[small]
        verdict = "ok" if growth <= budget else "WORSE THAN LINEAR"
        print(f"size x{scale:.0f}: sync time x{growth:.2f} (apply alone x{alone_growth:.2f}); "
              f"budget x{budget:.1f}: {verdict}")


if __name__ == "__main__":
    main()
