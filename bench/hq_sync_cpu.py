"""HQ's CPU per offline transaction at sync, in one process (no gRPC transport, no till):
the servicer's own work for SyncOfflineBatch (decoding the request, the unit of work on a
SQLite file with group commit, the response) timed with process CPU time.

Not a budget of bench/run.py: a tool for working on HQ's side of issue 10. The
transactions look like the bench's syncing till's: one gift card line per sale, under the
lock the till holds for that sale, each completed at its own time, with the till's unsynced
total and last contact.

    python bench/hq_sync_cpu.py [--transactions 20000] [--batch 500] [--profile out.txt]
                                [--random-order]

With `--wal-frames` the checkpoints are off (the WAL only grows) and the line also tells
the WAL frames (pages) written a transaction, all B-trees together (`dbstat` tells them
apart). With `--random-order` the till's sales visit the cards in a shuffled order
(seeded: the same every run) rather than the order they were issued in, as a store's
customers do: each sale's card then lies at a random place of every per-card B-tree.

Under `valgrind --tool=callgrind` (instruction counts, noise-free) use
`--transactions 2000 --callgrind-control lib.so`, a shared library with cg_zero() and
cg_dump() (callgrind's ZERO_STATS and DUMP_STATS; with `--instr-atstart=no`, cg_zero also
START_INSTRUMENTATION, and the setup runs at native speed): the first batch warms up, and
the dump holds the other batches alone. Divide its total by the transactions the line
reports.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import inspect
import itertools
import random
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from storedvalue.hq.config import HQConfig
from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.domain.offline import OfflineTransaction
from storedvalue.hq.domain.parameters import ParametersChange
from storedvalue.hq.grpc_api.call_context import fingerprint
from storedvalue.hq.grpc_api.convert import offline as convert
from storedvalue.hq.server import open_transactions
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

TILL = "till-1"


def decode(transactions: Any, serialized: bytes | None
           ) -> tuple[Sequence[OfflineTransaction], dict[str, Any]]:
    """As the servicer decodes a batch (one by one before there was a batch decoder: this
    tool also measures earlier commits), with the further arguments of the service's sync
    (the common case's columns since there are)."""
    columns = getattr(convert, "offline_batch_from_proto", None)
    if columns is not None:
        transactions, sales = columns(transactions, serialized)
        return transactions, {"sales": sales}
    return _decode(transactions, serialized), {}


def _decode(transactions: Any, serialized: bytes | None) -> list[OfflineTransaction]:
    batch = getattr(convert, "offline_transactions_from_proto", None)
    if batch is None:
        return [convert.offline_transaction_from_proto(txn) for txn in transactions]
    if serialized is not None:
        return list(batch(transactions, serialized))
    return list(batch(transactions))


def encode(results: Any, status: Any) -> bytes:
    """As the servicer encodes its answer (earlier commits built the message)."""
    wire = getattr(convert, "sync_response_wire", None)
    if wire is not None:
        return bytes(wire(results, status))
    response = ts.SyncOfflineBatchResponse(sync_status=convert.sync_status_to_proto(status))
    add = response.results.add
    for result in results:
        convert.fill_offline_result(add(), result)  # type: ignore[attr-defined]
    return response.SerializeToString()


# Whether the servicer serializes a batch request once for its fingerprint and its
# transactions' (earlier commits serialized each transaction again).
SHARES_SERIALIZATION = "serialized" in inspect.signature(fingerprint).parameters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--profile", default="")
    parser.add_argument("--general", action="store_true",
                        help="every batch through the general planner (no common path)")
    parser.add_argument("--wal-frames", action="store_true",
                        help="checkpoints off; report the WAL frames written a transaction")
    parser.add_argument("--random-order", action="store_true",
                        help="the sales visit the cards in a shuffled order (seeded), not the "
                             "order they were issued in")
    parser.add_argument("--callgrind-control", default="",
                        help="a shared library with cg_zero() and cg_dump(): the first batch "
                             "is then a warm-up, and the dump holds the others alone")
    args = parser.parse_args()
    try:  # as `storedvalue serve` sets it (earlier commits left Python's default)
        from storedvalue.hq.process import tune_garbage_collector
        tune_garbage_collector()
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as work:
        run(Path(work), args.transactions, args.batch, args.profile, general=args.general,
            callgrind_control=args.callgrind_control, random_order=args.random_order,
            wal_frames=args.wal_frames)


def run(work: Path, size: int, batch: int, profile: str, *, general: bool,
        callgrind_control: str = "", random_order: bool = False,
        wal_frames: bool = False) -> None:
    database = work / "hq.sqlite3"
    wal = work / "hq.sqlite3-wal"
    if wal_frames:
        from storedvalue.hq.storage.checkpoints import WalCheckpointer
        WalCheckpointer._check = lambda self: None  # type: ignore[method-assign]

    def frames() -> int:  # a WAL without checkpoints: its 32-byte header, then the frames
        return (wal.stat().st_size - 32) // (page_size + 24) if wal.exists() else 0

    storage = SqlStorage.from_url(f"sqlite:///{database}")
    upgrade_to_head(storage.engine)
    with storage.engine.connect() as connection:
        page_size = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())
    transactions = open_transactions(storage, HQConfig())
    runner = asyncio.Runner()
    ids = itertools.count()

    def key(caller: str, operation: str) -> RequestKey:
        n = next(ids)
        return RequestKey(caller, f"r{n}", operation, hashlib.sha256(str(n).encode()).digest())

    cards = CardService(transactions)
    offline = (OfflineService(transactions, common_path=False) if general
               else OfflineService(transactions))
    params = ParametersService(transactions)
    back_office = BackOfficeService(transactions)
    runner.run(params.ensure_initialized())
    version = runner.run(params.update(
        key=key("admin:t", "UpdateParameters"), updated_by="t",
        change=ParametersChange(True, False), expected_version=0)).version
    runner.run(back_office.register_terminal(
        key=key("admin:t", "RegisterTerminal"), terminal_id=TILL, display_name=""))

    async def prepare() -> list[tuple[str, int]]:
        async def one(i: int) -> tuple[str, int]:
            number = (await cards.issue_card(
                key=key(TILL, "IssueCard"), terminal_id=TILL, kind=CardKind.GIFT_CARD,
                initial_value=Money(10_000, "EUR"), card_number="", transaction_id="")
            ).card_number
            token = (await cards.lock_card(
                key=key(TILL, "LockCard"), terminal_id=TILL, card_number=number,
                transaction_id=f"offline-{i}")).lock.fencing_token
            return number, token
        found: list[tuple[str, int]] = []
        for start in range(0, size, 200):
            found += await asyncio.gather(*(one(i) for i in range(start, min(size, start + 200))))
        return found

    started = time.monotonic()
    locked = runner.run(prepare())
    print(f"prepared {size} locked cards in {time.monotonic() - started:.1f} s")
    now = datetime.now(UTC)
    reached = now - timedelta(minutes=10)
    # A till stamps each sale with its own clock as it completes (to the microsecond): no
    # two completion times of a batch are equal, as at the bench's syncing till (one sale
    # every few milliseconds), all since its last contact with HQ, the same for all of them.
    step = timedelta(microseconds=13_457)
    first = now - size * step
    messages = []
    # Card i is locked for sale offline-i: the sales (their ids with their cards) are
    # shuffled, numbered and timed in their new order.
    sales = list(enumerate(locked))
    if random_order:
        random.Random(20_000).shuffle(sales)
    for index, (sale, (number, token)) in enumerate(sales):
        message = offline_pb2.OfflineTransaction(
            transaction_id=f"offline-{sale}", sequence_number=index + 1,
            parameters_version=version,
            redeem_lines=[offline_pb2.OfflineRedeemLine(
                line_id="1", card_number=number, card_kind=common_pb2.CARD_KIND_GIFT_CARD,
                amount=common_pb2.Money(amount_minor=100, currency_code="EUR"),
                fencing_token=token)],
            unsynced_amounts=[offline_pb2.UnsyncedAmount(
                card_kind=common_pb2.CARD_KIND_GIFT_CARD,
                amount=common_pb2.Money(amount_minor=100 * (index + 1), currency_code="EUR"),
                line_count=index + 1)])
        message.completed_at.FromDatetime(first + index * step)
        message.last_reached_hq_at.FromDatetime(reached)
        messages.append(message)
    payloads = [
        ts.SyncOfflineBatchRequest(request_id=f"sync-{start}",
                                   transactions=messages[start:start + batch]).SerializeToString()
        for start in range(0, size, batch)
    ]

    # The messages and cards are in the payloads now: kept alive, a 20,000-transaction run's
    # garbage collections traversed them all (64 against 48 us a transaction, in-process),
    # which a server, holding one batch at a time, never pays.
    del messages, locked, sales
    answers: list[bytes] = []

    async def serve_one(payload: bytes) -> bytes:
        # What the servicer does for SyncOfflineBatch (auth and the transport aside).
        request = ts.SyncOfflineBatchRequest.FromString(payload)
        serialized = None
        if SHARES_SERIALIZATION:
            serialized = request.SerializeToString(deterministic=True)
            digest = fingerprint(request, None, serialized)
        else:
            digest = fingerprint(request)
        transactions, further = decode(request.transactions, serialized)
        outcome = await offline.sync(
            key=RequestKey(TILL, request.request_id, "SyncOfflineBatch", digest),
            terminal_id=TILL, transactions=transactions, **further)
        answer = encode(outcome.results, outcome.status)
        answers.append(answer)  # its outcomes counted after the measurement
        return answer

    async def sync_all() -> None:
        for payload in payloads:
            await serve_one(payload)

    control = None
    if callgrind_control:
        import ctypes
        control = ctypes.CDLL(callgrind_control)
        runner.run(serve_one(payloads.pop(0)))  # warm-up: caches, first statements
        size -= batch
        answers.clear()
        control.cg_zero()
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    before = frames()
    cpu, wall, loop = time.process_time(), time.perf_counter(), time.thread_time()
    runner.run(sync_all())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    written = frames() - before
    loop = time.thread_time() - loop
    if control is not None:
        control.cg_dump()
    if profiler is not None:
        import pstats
        profiler.disable()
        with open(profile, "w") as out:
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
    outcomes: dict[str, int] = {}
    for answer in answers:
        for result in ts.SyncOfflineBatchResponse.FromString(answer).results:
            name = offline_pb2.OfflineOutcome.Name(result.outcome).removeprefix("OFFLINE_OUTCOME_")
            outcomes[name] = outcomes.get(name, 0) + 1
    print(f"{size} transactions in batches of {batch}: {cpu * 1e6 / size:.1f} us CPU/tx, "
          f"{wall * 1e6 / size:.1f} us wall/tx ({size / wall:,.0f} tx/s), of the CPU "
          f"{loop * 1e6 / size:.1f} us on the event loop's thread; outcomes {outcomes}"
          + (f"; {written / size:.3f} WAL frames/tx" if wal_frames else ""))
    transactions.close()
    runner.close()
    storage.close()


if __name__ == "__main__":
    main()
