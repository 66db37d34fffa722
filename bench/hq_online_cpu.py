"""HQ's CPU per online call in the LockCard + Redeem cycle, in one process (no gRPC
transport, no client): what HQ's own code does for each call, from the call gate
(authentication, the unary wrapper, reading the request) through the servicer, the services
and the group-commit executor on a SQLite file, to the serialized response, timed with
process CPU time and the event loop thread's CPU time.

Not a budget of bench/run.py: a tool for working on `online_cycle_vs_echo`. Like the
bench's load client, `--concurrency` workers each run sales on a card of their own: LockCard,
then Redeem of 0.01 EUR under the lock.

    python bench/hq_online_cpu.py [--cycles 4000] [--concurrency 16] [--profile out.txt]
                                  [--warmup 400] [--wal-frames] [--loop uvloop|asyncio]

`--warmup` cycles run first, unmeasured: with a large one the measured calls find the tables
as large as a long bench run leaves them (each cycle adds two request-log rows, a journal
entry, a lock). With `--wal-frames` the checkpoints are off (the WAL only grows) and the line
also tells the WAL frames (pages) the measured calls wrote, a call and a commit.

Under `valgrind --tool=callgrind` (instruction counts, noise-free) use small sizes and
`--warmup 50`; the figures printed are then meaningless, the instruction counts are not.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from storedvalue.hq.config import EVENT_LOOPS, HQConfig
from storedvalue.hq.domain.cards import CardKind
from storedvalue.hq.domain.money import Money
from storedvalue.hq.event_loops import loop_factory
from storedvalue.hq.grpc_api.calls import CallGate, MethodTable
from storedvalue.hq.grpc_api.method_handlers import add_servicer
from storedvalue.hq.grpc_api.terminal_servicer import TerminalServicer
from storedvalue.hq.server import TERMINAL_SERVICE, TERMINAL_SERVICE_DESCRIPTOR, open_transactions
from storedvalue.hq.services.auth import Authenticator, Role
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.idempotency import RequestKey
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersFeed, ParametersService
from storedvalue.hq.services.terminal_reports import TerminalReportService
from storedvalue.hq.services.throttle import UnknownCardThrottle
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts


class _Details:
    """What gRPC hands the interceptor: the method and the call's metadata."""

    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Context:
    """The servicer context of one call: its request, read once."""

    __slots__ = ("_request",)

    def __init__(self, request: Any) -> None:
        self._request = request

    async def read(self) -> Any:
        return self._request

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        raise RuntimeError(f"{code}: {details}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=400, help="cycles before measuring")
    parser.add_argument("--profile", default="", help="cProfile output (text) to this file")
    parser.add_argument("--callgrind-control", default="",
                        help="a shared library with cg_zero() and cg_dump() (callgrind's "
                             "ZERO_STATS and DUMP_STATS): the dump then holds the measured "
                             "cycles alone")
    parser.add_argument("--wal-frames", action="store_true",
                        help="checkpoints off; report the WAL frames written a call")
    parser.add_argument("--loop", choices=EVENT_LOOPS, default=HQConfig().event_loop,
                        help="the event loop, as `serve --event-loop` (default: serve's, "
                             "%(default)s; the standard loop's wake-ups cost ~67K "
                             "instructions more a commit)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        run(Path(work), args.cycles, args.concurrency, args.warmup, args.profile,
            args.callgrind_control, wal_frames=args.wal_frames, event_loop=args.loop)


def run(work: Path, cycles: int, concurrency: int, warmup: int, profile: str,
        callgrind_control: str = "", *, wal_frames: bool = False,
        event_loop: str = "uvloop") -> None:
    wal = work / "hq.sqlite3-wal"
    if wal_frames:
        from storedvalue.hq.storage.checkpoints import WalCheckpointer
        WalCheckpointer._check = lambda self: None  # type: ignore[method-assign]
    storage = SqlStorage.from_url(f"sqlite:///{work / 'hq.sqlite3'}")
    upgrade_to_head(storage.engine)
    with storage.engine.connect() as connection:
        page_size = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())

    def frames() -> int:  # a WAL without checkpoints: its 32-byte header, then the frames
        return (wal.stat().st_size - 32) // (page_size + 24) if wal.exists() else 0

    config = HQConfig()
    transactions = open_transactions(storage, config)
    runner = asyncio.Runner(loop_factory=loop_factory(event_loop))
    ids = itertools.count()

    def key(caller: str, operation: str) -> RequestKey:
        n = next(ids)
        return RequestKey(caller, f"setup-{n}", operation,
                          hashlib.sha256(str(n).encode()).digest())

    # Wired as server.HQApplication wires them.
    feed = ParametersFeed(max_watchers=config.max_watchers)
    parameters = ParametersService(transactions, feed=feed)
    authenticator = Authenticator(transactions, admin_token_hashes={})
    throttle = UnknownCardThrottle(limit=config.unknown_card_limit)
    cards = CardService(transactions, parameters_feed=feed, throttle=throttle)
    gate = CallGate(authenticator, roles={TERMINAL_SERVICE: Role.TERMINAL},
                    call_deadline_seconds=config.call_deadline_seconds)
    methods = MethodTable()
    add_servicer(methods, TerminalServicer(
        cards=cards,
        offline=OfflineService(transactions, limits=config.sync_limits, throttle=throttle),
        parameters=parameters, reports=TerminalReportService(transactions),
    ), TERMINAL_SERVICE_DESCRIPTOR)

    back_office = BackOfficeService(transactions)
    runner.run(parameters.ensure_initialized())
    credential = runner.run(back_office.register_terminal(
        key=key("admin:bench", "RegisterTerminal"), terminal_id="till-1", display_name=""))
    metadata = (("authorization", f"Bearer {credential.bearer_token}"),)

    async def issue() -> str:
        card = await cards.issue_card(
            key=key("till-1", "IssueCard"), terminal_id="till-1", kind=CardKind.GIFT_CARD,
            initial_value=Money(10_000_000, "EUR"), card_number="", transaction_id="")
        return card.card_number

    numbers = [runner.run(issue()) for _ in range(concurrency)]

    async def continuation(details: Any) -> Any:
        return methods.service(details)

    lock_details = _Details(f"/{TERMINAL_SERVICE}/LockCard", metadata)
    redeem_details = _Details(f"/{TERMINAL_SERVICE}/Redeem", metadata)

    async def call(details: _Details, payload: bytes) -> bytes:
        # What grpc.aio does for a call, HQ's side: the interceptor, then the handler in
        # the same task, the request decoded and the response encoded.
        handler: Any = await gate.intercept_service(continuation, cast(Any, details))
        request = handler.request_deserializer(payload)
        response = await handler.stream_unary(None, _Context(request))
        serializer = handler.response_serializer  # None: the handler answers with bytes
        encoded: bytes = response if serializer is None else serializer(response)
        return encoded

    amount = common_pb2.Money(amount_minor=1, currency_code="EUR")

    async def worker(index: int, card: str, count: int, tag: str) -> None:
        for sale_number in range(count):
            sale = f"{tag}-{index}-{sale_number}"
            locked = ts.LockCardResponse.FromString(await asyncio.create_task(call(
                lock_details, ts.LockCardRequest(
                    request_id=f"{sale}-lock", card_number=card, transaction_id=sale
                ).SerializeToString())))
            await asyncio.create_task(call(redeem_details, ts.RedeemRequest(
                request_id=f"{sale}-redeem", card_number=card, transaction_id=sale,
                line_id="1", fencing_token=locked.lock.fencing_token, amount=amount,
            ).SerializeToString()))

    async def load(total: int, tag: str) -> None:
        each = max(1, total // concurrency)
        await asyncio.gather(*(worker(i, numbers[i], each, tag)
                               for i in range(concurrency)))

    runner.run(load(warmup, "warmup"))
    commits = transactions.commits if hasattr(transactions, "commits") else 0
    profiler = None
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    frames_before = frames()
    control = None
    if callgrind_control:
        import ctypes
        control = ctypes.CDLL(callgrind_control)
        control.cg_zero()
    cpu, wall, loop = time.process_time(), time.perf_counter(), time.thread_time()
    runner.run(load(cycles, "measured"))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    loop = time.thread_time() - loop
    if control is not None:
        control.cg_dump()
    if profiler is not None:
        import pstats
        profiler.disable()
        with open(profile, "w") as out:
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(80)
    written = frames() - frames_before
    calls = 2 * (cycles // concurrency) * concurrency
    groups = (transactions.commits if hasattr(transactions, "commits") else 0) - commits
    print(f"{calls} calls at concurrency {concurrency}: {cpu * 1e6 / calls:.1f} us CPU/call, "
          f"{loop * 1e6 / calls:.1f} us of it on the event loop's thread, "
          f"{wall * 1e6 / calls:.1f} us wall/call; {calls / max(groups, 1):.1f} calls/commit"
          + (f"; {written / calls:.2f} WAL frames/call, {written / max(groups, 1):.1f}/commit"
             if wal_frames else ""))
    transactions.close()
    runner.close()
    storage.close()


if __name__ == "__main__":
    main()
