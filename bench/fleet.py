"""Setting up the HQ under test through the wire, as a back office and its tills would:
tills registered with RegisterTerminal (admin credential), gift cards issued with IssueCard
(a till's credential), offline completion allowed with UpdateParameters. Nothing here is
timed; calls run a few at a time from the harness process.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from children import progress

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

T = TypeVar("T")
CALL_TIMEOUT_S = 30.0
SETUP_CONCURRENCY = 16
CARD_VALUE_MINOR = 10**12
"""Each bench card holds 10 billion euros: no cycle ever runs it dry."""


@dataclass(frozen=True)
class Till:
    terminal_id: str
    token: str


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _bounded(calls: Sequence[Callable[[], Awaitable[T]]], what: str,
                   concurrency: int = SETUP_CONCURRENCY) -> list[T]:
    """Run the calls at most ``concurrency`` at a time, in order of results."""
    results: list[T | None] = [None] * len(calls)
    counter = itertools.count()
    started = time.monotonic()
    reported = started

    async def worker() -> None:
        nonlocal reported
        while (index := next(counter)) < len(calls):
            results[index] = await calls[index]()
            now = time.monotonic()
            if now - reported > 10:
                reported = now
                progress(f"{what}: {index + 1} of {len(calls)}")

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(calls)))))
    if len(calls) > 100:
        progress(f"{what}: {len(calls)} in {time.monotonic() - started:.1f} s")
    return [result for result in results if result is not None]


def register_tills(address: str, admin_token: str, count: int, prefix: str = "till"
                   ) -> list[Till]:
    """``count`` new tills, each with its own credential."""
    run = secrets.token_hex(3)

    async def main() -> list[Till]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = bo_grpc.BackOfficeServiceStub(channel)

            def register(index: int) -> Callable[[], Awaitable[Till]]:
                async def call() -> Till:
                    terminal_id = f"{prefix}-{run}-{index}"
                    response = await stub.RegisterTerminal(
                        bo.RegisterTerminalRequest(request_id=str(uuid.uuid4()),
                                                   terminal_id=terminal_id),
                        metadata=bearer(admin_token), timeout=CALL_TIMEOUT_S)
                    return Till(terminal_id, response.credential.bearer_token)
                return call

            return await _bounded([register(i) for i in range(count)], "tills registered")

    return asyncio.run(main())


def issue_gift_cards(address: str, till: Till, count: int) -> list[str]:
    """``count`` gift cards issued by ``till``; HQ picks the numbers."""

    async def main() -> list[str]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ts_grpc.TerminalServiceStub(channel)

            async def issue() -> str:
                response = await stub.IssueCard(
                    ts.IssueCardRequest(
                        request_id=str(uuid.uuid4()), kind=common_pb2.CARD_KIND_GIFT_CARD,
                        initial_value=common_pb2.Money(amount_minor=CARD_VALUE_MINOR,
                                                       currency_code="EUR")),
                    metadata=bearer(till.token), timeout=CALL_TIMEOUT_S)
                return str(response.card.card_number)

            return await _bounded([issue] * count, "cards issued")

    return asyncio.run(main())


def update_parameters(address: str, admin_token: str, *, gift_card_offline: bool = True,
                      credit_memo_offline: bool | None = None) -> int:
    """One parameters change; returns the new version."""
    with grpc.insecure_channel(address) as channel:
        stub = bo_grpc.BackOfficeServiceStub(channel)
        request = bo.UpdateParametersRequest(
            request_id=str(uuid.uuid4()), gift_card_offline_completion_allowed=gift_card_offline)
        if credit_memo_offline is not None:
            request.credit_memo_offline_completion_allowed = credit_memo_offline
        response = stub.UpdateParameters(request, metadata=bearer(admin_token),
                                         timeout=CALL_TIMEOUT_S)
    return int(response.parameters.version)


def get_parameters_round_trips(address: str, till: Till, count: int) -> list[float]:
    """Seconds per GetParameters call, one after another: the least a push can take."""
    with grpc.insecure_channel(address) as channel:
        stub = ts_grpc.TerminalServiceStub(channel)
        stub.GetParameters(ts.GetParametersRequest(), metadata=bearer(till.token),
                           timeout=CALL_TIMEOUT_S)
        durations = []
        for _ in range(count):
            started = time.perf_counter()
            stub.GetParameters(ts.GetParametersRequest(), metadata=bearer(till.token),
                               timeout=CALL_TIMEOUT_S)
            durations.append(time.perf_counter() - started)
    return durations


def sync_status(address: str, admin_token: str, terminal_id: str) -> int:
    """HQ's highest contiguous offline sequence number received from the till."""
    with grpc.insecure_channel(address) as channel:
        stub = bo_grpc.BackOfficeServiceStub(channel)
        response = stub.GetTerminalSyncStatus(
            bo.GetTerminalSyncStatusRequest(terminal_id=terminal_id),
            metadata=bearer(admin_token), timeout=CALL_TIMEOUT_S)
    return int(response.sync_status.highest_contiguous_sequence)
