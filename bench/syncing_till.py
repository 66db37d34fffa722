"""A till syncing its outbox: the public terminal library in its own process.

Not timed, filling the outbox as a till does: through a breakable TCP relay the till locks one
gift card per sale (``add_tender``, a few at a time), the relay black-holes the link, and
every sale completes offline (``complete_sale``, one durable commit each). Each offline line
is thus under the lock its till holds for that sale, as in a store.

Timed: a fresh Terminal on the same data directory, straight to HQ, ``sync_now()`` until the
outbox is empty and HQ's GetTerminalSyncStatus reports the till's highest contiguous sequence
number as the number of sales. The till's CPU time (all its threads) during ``sync_now()`` is
reported too, and HQ's (its processes, from /proc): with the till and HQ on one machine, what
the till spends is taken from HQ.

Baseline, same run: the same number of SyncOfflineBatch-sized requests (same batch size,
same transactions' content) sent one after another to the echo server: what the wire alone
costs for those bytes.

Spec: address, echo_address, admin_token, terminal_id, token, cards (one per sale),
data_dir, parameters_version, hq_pids.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from children import answer, progress
from echo_server import METHOD as ECHO_METHOD
from fleet import sync_status
from offline_sales import PRICE, Link, open_terminal, sell_offline

from storedvalue.terminal import HQUnavailable, TerminalConfig
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

LOCKING_CONFIG = TerminalConfig(sync_automatically=False, call_timeout_s=10.0)
"""Locking is not timed: a generous deadline, so that a slow LockCard is not taken for a lost
link."""
SYNC_CONFIG = TerminalConfig(sync_automatically=False)
"""Library defaults (call deadline, batch size), sync started by the bench to time it."""
LOCKING_THREADS = 4


def fill_outbox(spec: dict[str, Any], data_dir: Path) -> dict[str, float]:
    cards: list[str] = spec["cards"]
    with Link(spec["address"]) as link:
        started = time.monotonic()
        with open_terminal(spec, link.address, data_dir, LOCKING_CONFIG) as terminal:

            def lock(index: int) -> None:
                sale, card = f"offline-{index}", cards[index]
                try:
                    terminal.add_tender(transaction_id=sale, card_number=card)
                except HQUnavailable:  # the answer was lost: asking again confirms the lock
                    terminal.add_tender(transaction_id=sale, card_number=card)

            with ThreadPoolExecutor(LOCKING_THREADS) as pool:
                for done, _ in enumerate(pool.map(lock, range(len(cards))), start=1):
                    if done % 10_000 == 0:
                        progress(f"syncing till: {done} of {len(cards)} cards locked")
        locked = time.monotonic()
        # The tenders are on disk: a terminal with the default deadline completes the sales.
        with open_terminal(spec, link.address, data_dir, SYNC_CONFIG) as terminal:
            link.black_hole()
            for index, card in enumerate(cards):
                sell_offline(terminal, f"offline-{index}", card)
            outbox = len(terminal.outbox())
    if outbox != len(cards):
        raise RuntimeError(f"the outbox holds {outbox} sales, not {len(cards)}")
    return {"locking_s": locked - started, "completing_s": time.monotonic() - locked}


def timed_sync(spec: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    size = len(spec["cards"])
    with open_terminal(spec, spec["address"], data_dir, SYNC_CONFIG) as terminal:
        limits = terminal.sync_limits
        batch = min(SYNC_CONFIG.sync_batch_size,
                    limits.max_transactions_per_batch if limits else SYNC_CONFIG.sync_batch_size)
        hq_pids = [int(pid) for pid in spec.get("hq_pids", [])]
        hq_started = sum(map(process_cpu_s, hq_pids))
        started, cpu_started = time.perf_counter(), time.process_time()
        summary = terminal.sync_now()
        cpu = time.process_time() - cpu_started
        hq_cpu = sum(map(process_cpu_s, hq_pids)) - hq_started
        highest = sync_status(spec["address"], spec["admin_token"], spec["terminal_id"])
        elapsed = time.perf_counter() - started
        left = len(terminal.outbox())
    if summary.error is not None or left or highest != size:
        raise RuntimeError(f"sync incomplete: {summary}; outbox left {left}, HQ has 1..{highest}")
    return {"seconds": elapsed, "till_cpu_s": cpu, "hq_cpu_s": hq_cpu, "batch": batch,
            "applied": summary.applied,
            "applied_with_exception": summary.applied_with_exception,
            "rejected": summary.rejected, "already_applied": summary.already_applied}


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user and system, all threads) of a process on this machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def echo_floor(spec: dict[str, Any], batch: int) -> float:
    """Seconds to send the same transactions, batched the same way, to the echo server."""
    now = datetime.now(UTC)
    transactions = [
        offline_pb2.OfflineTransaction(
            transaction_id=f"offline-{index}", sequence_number=index + 1,
            parameters_version=int(spec["parameters_version"]),
            redeem_lines=[offline_pb2.OfflineRedeemLine(
                line_id="1", card_number=card, card_kind=common_pb2.CARD_KIND_GIFT_CARD,
                amount=common_pb2.Money(amount_minor=PRICE.amount_minor,
                                        currency_code=PRICE.currency_code),
                fencing_token=index + 1)])
        for index, card in enumerate(spec["cards"])
    ]
    for transaction in transactions:
        transaction.completed_at.FromDatetime(now)
    requests = [ts.SyncOfflineBatchRequest(request_id=f"echo-{start}",
                                           transactions=transactions[start:start + batch])
                for start in range(0, len(transactions), batch)]
    with grpc.insecure_channel(spec["echo_address"]) as channel:
        echo = channel.unary_unary(ECHO_METHOD,
                                   request_serializer=ts.SyncOfflineBatchRequest.SerializeToString,
                                   response_deserializer=ts.SyncOfflineBatchRequest.FromString)
        echo(requests[0], timeout=30)  # connected and warm
        started = time.perf_counter()
        for request in requests:
            echo(request, timeout=30)
        return time.perf_counter() - started


def main(spec: dict[str, Any]) -> dict[str, Any]:
    data_dir = Path(spec["data_dir"])
    size = len(spec["cards"])
    progress(f"syncing till: filling the outbox with {size} offline sales")
    fill = fill_outbox(spec, data_dir)
    progress(f"syncing till: outbox filled ({fill['locking_s']:.0f} s locking, "
             f"{fill['completing_s']:.0f} s completing offline); syncing")
    sync = timed_sync(spec, data_dir)
    return {**sync, **fill, "echo_seconds": echo_floor(spec, int(sync["batch"]))}


if __name__ == "__main__":
    answer(main)
