"""Online lock + redeem cycle against an echo baseline (DESIGN.md section 7: the cycle's call
rate must be at least 60% of a plain gRPC echo's, measured in the same run).

Both run in this process over a real loopback channel with the same client concurrency:
- baseline: a unary echo method on a grpc server with the same worker pool as HQ;
- cycle: LockCard then Redeem (2 calls) on HQ over a SQLite file (WAL, synchronous=FULL),
  each worker using its own cards, every call authenticated by a bearer token.

    python bench/online_cycle.py [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from bench_hq import prepare, serving

from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

BUDGET_RATIO = 0.60
_ECHO = "/bench.Echo/Echo"


def _run_for(seconds: float, clients: int, one_round: Callable[[int, int], int]) -> float:
    """Calls per second achieved by `clients` threads each looping `one_round(client, i)`
    (which returns how many calls it made) for `seconds`."""
    stop = time.perf_counter() + seconds
    counts = [0] * clients

    def worker(client: int) -> None:
        i = 0
        while time.perf_counter() < stop:
            counts[client] += one_round(client, i)
            i += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def echo_rate(seconds: float, clients: int) -> float:
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    echo = channel.unary_unary(_ECHO, request_serializer=None, response_deserializer=None)
    payload = ts.LockCardRequest(request_id=str(uuid.uuid4()), card_number="7" * 16,
                                 transaction_id="sale").SerializeToString()
    try:
        return _run_for(seconds, clients, lambda _c, _i: (echo(payload, timeout=5), 1)[1])
    finally:
        channel.close()
        server.stop(0).wait()


def cycle_rate(seconds: float, clients: int, tmp: Path) -> float:
    prepared = prepare(f"sqlite:///{tmp}/hq.sqlite3", card_count=clients * 16)
    try:
        with serving(prepared) as address:
            channel = grpc.insecure_channel(address)
            stub = ts_grpc.TerminalServiceStub(channel)
            metadata = (("authorization", f"Bearer {prepared.bearer_token}"),)
            amount = common_pb2.Money(amount_minor=1, currency_code="EUR")

            def one_round(client: int, i: int) -> int:
                card = prepared.cards[client * 16 + i % 16]
                sale = f"sale-{client}-{i}"
                lock = stub.LockCard(ts.LockCardRequest(
                    request_id=str(uuid.uuid4()), card_number=card, transaction_id=sale),
                    metadata=metadata, timeout=5).lock
                stub.Redeem(ts.RedeemRequest(
                    request_id=str(uuid.uuid4()), card_number=card, transaction_id=sale,
                    line_id="1", fencing_token=lock.fencing_token, amount=amount),
                    metadata=metadata, timeout=5)
                return 2

            try:
                return _run_for(seconds, clients, one_round)
            finally:
                channel.close()
    finally:
        prepared.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        echo = echo_rate(args.seconds, args.clients)
        cycle = cycle_rate(args.seconds, args.clients, Path(tmp))
    ratio = cycle / echo
    print(f"echo baseline      {echo:8.0f} calls/s")
    print(f"lock+redeem cycle  {cycle:8.0f} calls/s ({cycle / 2:.0f} cycles/s)")
    verdict = "ok" if ratio >= BUDGET_RATIO else "BELOW BUDGET"
    print(f"ratio              {ratio:8.2f}  (budget >= {BUDGET_RATIO:.2f}: {verdict})")


if __name__ == "__main__":
    main()
