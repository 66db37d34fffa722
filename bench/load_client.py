"""The load: one `grpc.aio` client process (default asyncio loop) driving either HQ or the
echo baseline with the same code. Each of ``concurrency`` workers is one till on its own
channel (its own connection), looping without pause:

- ``cycle``: LockCard then Redeem of 0.01 EUR on the worker's own card (two calls, each
  timed), as a till selling with a gift card online;
- ``echo``: one call to the echo server carrying a LockCardRequest of the same size, parsed
  back the same way;
- ``getcard``: GetCard of the worker's card (a till asking a balance).

After the channels are ready and ``warmup_s`` has passed, calls that complete within the
next ``measure_s`` seconds are counted and their latencies kept. Prints one JSON line:
calls, seconds, sorted latencies in microseconds, errors by status code, and ``completed``:
every call answered while the process ran, warm-up included (what the server's CPU time
over the whole run is divided by).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from children import answer
from echo_server import METHOD as ECHO_METHOD

from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

READY_TIMEOUT_S = 30.0


class Window:
    """Counts what completes between ``start`` and ``end`` (perf_counter seconds)."""

    def __init__(self, start: float, end: float) -> None:
        self.start = start
        self.end = end
        self.latencies_us: list[int] = []
        self.completed = 0
        self.errors: Counter[str] = Counter()
        self.first_error: str | None = None

    def record(self, began: float) -> None:
        ended = time.perf_counter()
        self.completed += 1
        if self.start <= ended <= self.end:
            self.latencies_us.append(round((ended - began) * 1e6))

    async def failed(self, error: grpc.aio.AioRpcError) -> None:
        if time.perf_counter() >= self.start:
            self.errors[error.code().name] += 1
            if self.first_error is None:
                self.first_error = f"{error.code().name}: {error.details()}"
        await asyncio.sleep(0.01)  # a failing server must not turn the loop into a spin


async def cycle_worker(channel: grpc.aio.Channel, till: dict[str, str], worker: int,
                       window: Window, timeout: float) -> None:
    stub = ts_grpc.TerminalServiceStub(channel)
    metadata = (("authorization", f"Bearer {till['token']}"),)
    card = till["card"]
    prefix = f"{uuid.uuid4().hex[:12]}-{worker}"
    amount = common_pb2.Money(amount_minor=1, currency_code="EUR")
    sale_number = 0
    while time.perf_counter() < window.end:
        sale_number += 1
        sale = f"{prefix}-{sale_number}"
        began = time.perf_counter()
        try:
            locked = await stub.LockCard(
                ts.LockCardRequest(request_id=f"{sale}-lock", card_number=card,
                                   transaction_id=sale),
                metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await window.failed(error)
            continue
        window.record(began)
        began = time.perf_counter()
        try:
            await stub.Redeem(
                ts.RedeemRequest(request_id=f"{sale}-redeem", card_number=card,
                                 transaction_id=sale, line_id="1",
                                 fencing_token=locked.lock.fencing_token, amount=amount),
                metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await window.failed(error)
            await _release(stub, metadata, card, sale, locked.lock.fencing_token, timeout)
            continue
        window.record(began)


async def _release(stub: ts_grpc.TerminalServiceAsyncStub, metadata: Any, card: str,
                   sale: str, token: int, timeout: float) -> None:
    """After a failed Redeem: free the card so the next sale can lock it."""
    try:
        await stub.UnlockCard(
            ts.UnlockCardRequest(request_id=f"{sale}-unlock", card_number=card,
                                 transaction_id=sale, fencing_token=token),
            metadata=metadata, timeout=timeout)
    except grpc.aio.AioRpcError:
        await asyncio.sleep(0.05)


async def echo_worker(channel: grpc.aio.Channel, till: dict[str, str], worker: int,
                      window: Window, timeout: float) -> None:
    echo = channel.unary_unary(ECHO_METHOD,
                               request_serializer=ts.LockCardRequest.SerializeToString,
                               response_deserializer=ts.LockCardRequest.FromString)
    prefix = f"{uuid.uuid4().hex[:12]}-{worker}"
    call_number = 0
    while time.perf_counter() < window.end:
        call_number += 1
        sale = f"{prefix}-{call_number}"
        began = time.perf_counter()
        try:
            await echo(ts.LockCardRequest(request_id=f"{sale}-lock", card_number=till["card"],
                                          transaction_id=sale), timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await window.failed(error)
            continue
        window.record(began)


async def getcard_worker(channel: grpc.aio.Channel, till: dict[str, str], _worker: int,
                         window: Window, timeout: float) -> None:
    stub = ts_grpc.TerminalServiceStub(channel)
    metadata = (("authorization", f"Bearer {till['token']}"),)
    request = ts.GetCardRequest(card_number=till["card"])
    while time.perf_counter() < window.end:
        began = time.perf_counter()
        try:
            await stub.GetCard(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            await window.failed(error)
            continue
        window.record(began)


W = TypeVar("W", bound="Window")

WORKERS = {"cycle": cycle_worker, "echo": echo_worker, "getcard": getcard_worker}


async def drive(spec: dict[str, Any], window_from: Callable[[float], W]) -> W:
    """Run the spec's workers over their own connections, ready first, into the window
    `window_from` makes of the moment they are (`time.perf_counter()`)."""
    worker = WORKERS[spec["mode"]]
    addresses: list[str] = spec["addresses"]
    tills: list[dict[str, str]] = spec["tills"]
    concurrency = int(spec["concurrency"])
    # A local subchannel pool: each worker gets its own connection, as each till has.
    channels = [grpc.aio.insecure_channel(addresses[i % len(addresses)],
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                for i in range(concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)),
                               READY_TIMEOUT_S)
        window = window_from(time.perf_counter())
        timeout = float(spec["call_timeout_s"])
        await asyncio.gather(*(worker(channels[i], tills[i % len(tills)], i, window, timeout)
                               for i in range(concurrency)))
    finally:
        await asyncio.gather(*(c.close(None) for c in channels))
    return window


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    warmup, measure = float(spec["warmup_s"]), float(spec["measure_s"])
    window = await drive(spec, lambda now: Window(now + warmup, now + warmup + measure))
    return {
        "calls": len(window.latencies_us),
        "seconds": window.end - window.start,
        "latencies_us": sorted(window.latencies_us),
        "errors": dict(window.errors),
        "first_error": window.first_error,
        "completed": window.completed,
    }


if __name__ == "__main__":
    answer(lambda spec: asyncio.run(run(spec)))
