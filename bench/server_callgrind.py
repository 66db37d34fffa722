"""Instructions a server process executes per call, counted by valgrind's callgrind while a
client in another process drives it: HQ (`storedvalue serve` on a fresh SQLite file) in
LockCard + Redeem cycles, or the echo baseline (bench/echo_server.py), as bench/run.py's
load client drives them.

Not a budget of bench/run.py: a tool for working on `online_cycle_vs_echo`. On a shared VM
the ratio and the CPU seconds per call move by 20-30% from run to run; instruction counts of
the same code and the same load repeat within a few percent (thread interleaving changes the
group-commit sizes a little), so they show whether a change to the serving path helps.
System calls (the fsync) are not counted: they cost CPU, but not the GIL.

    python bench/server_callgrind.py [--server hq|echo|both] [--cycles 150]
                                     [--concurrency 16] [--keep DIR]

The server starts under valgrind with instrumentation off (a minute or two for the
imports); warm-up calls run, then instrumentation is switched on for the measured calls
alone (`callgrind_control -i on`, then `-d`). Prints one JSON line per server:
instructions per call over all its threads,.
`--keep DIR` keeps the dumps for `callgrind_annotate`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from echo_server import METHOD as ECHO_METHOD
from fleet import issue_gift_cards, register_tills

from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

BENCH = Path(__file__).resolve().parent
START_TIMEOUT_S = 600.0
_LISTENING = re.compile(r"listening on (\[[^\]]+\]|[\w.\-]+):(\d+)")
_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


class Server:
    """A server process under callgrind, instrumentation off until `instrument`."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        self.admin_token = "cg-admin-" + secrets.token_urlsafe(12)
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={work / 'callgrind.out.%p'}"]
        log = open(work / f"{kind}.log", "wb")  # noqa: SIM115 (closed with the process)
        if kind == "hq":
            env = {name: value for name, value in os.environ.items()
                   if not name.startswith("STOREDVALUE_")}
            env.update(XDG_DATA_HOME=str(work / "data"), STOREDVALUE_ADMIN_TOKEN=self.admin_token)
            self.process = subprocess.Popen(
                [*valgrind, sys.executable, "-m", "storedvalue.cli", "serve",
                 "--listen", "127.0.0.1:0"],
                stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        else:
            self.process = subprocess.Popen(
                [*valgrind, sys.executable, str(BENCH / "echo_server.py")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
            assert self.process.stdin is not None
            self.process.stdin.write("{}\n")
            self.process.stdin.flush()
        self.address = self._wait_address()

    def _wait_address(self) -> str:
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.kind} exited: see {self.work / (self.kind + '.log')}")
            if self.kind == "echo":
                return f"127.0.0.1:{json.loads(line)['port']}"
            found = _LISTENING.search(line)
            if found:
                return f"{found.group(1)}:{found.group(2)}"
        raise RuntimeError(f"{self.kind} did not start within {START_TIMEOUT_S} s")

    def instrument(self) -> None:
        _control("-i", "on", str(self.process.pid))

    def instructions(self) -> int:
        """Dump the counts since `instrument` and return their total."""
        before = set(self.work.glob("callgrind.out.*"))
        _control("-d", str(self.process.pid))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dumps = set(self.work.glob("callgrind.out.*")) - before
            for dump in dumps:
                found = _TOTALS.search(dump.read_text(errors="replace"))
                if found:
                    return int(found.group(1))
            time.sleep(0.2)
        raise RuntimeError("callgrind wrote no dump")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


async def _drive(kind: str, address: str, tills: list[dict[str, str]], cycles: int,
                 tag: str) -> int:
    """`cycles` sales (HQ: LockCard + Redeem; echo: two echo calls) on each till's own
    connection, all tills at once; returns the calls made."""
    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in tills]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        amount = common_pb2.Money(amount_minor=1, currency_code="EUR")

        async def till_sales(channel: grpc.aio.Channel, till: dict[str, str]) -> None:
            prefix = f"{tag}-{uuid.uuid4().hex[:8]}"
            if kind == "echo":
                echo = channel.unary_unary(
                    ECHO_METHOD, request_serializer=ts.LockCardRequest.SerializeToString,
                    response_deserializer=ts.LockCardRequest.FromString)
                for sale in range(2 * cycles):
                    await echo(ts.LockCardRequest(request_id=f"{prefix}-{sale}-lock",
                                                  card_number=till["card"],
                                                  transaction_id=f"{prefix}-{sale}"),
                               timeout=60)
                return
            stub = ts_grpc.TerminalServiceStub(channel)
            metadata = (("authorization", f"Bearer {till['token']}"),)
            for sale in range(cycles):
                name = f"{prefix}-{sale}"
                locked = await stub.LockCard(ts.LockCardRequest(
                    request_id=f"{name}-lock", card_number=till["card"], transaction_id=name),
                    metadata=metadata, timeout=60)
                await stub.Redeem(ts.RedeemRequest(
                    request_id=f"{name}-redeem", card_number=till["card"],
                    transaction_id=name, line_id="1",
                    fencing_token=locked.lock.fencing_token, amount=amount),
                    metadata=metadata, timeout=60)

        await asyncio.gather(*(till_sales(channel, till)
                               for channel, till in zip(channels, tills, strict=True)))
    finally:
        await asyncio.gather(*(channel.close(None) for channel in channels))
    return 2 * cycles * len(tills)


def measure(kind: str, cycles: int, concurrency: int, warmup: int, keep: Path | None
            ) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"sv-callgrind-{kind}-"))
    started = time.monotonic()
    server = Server(kind, work)
    try:
        print(f"[{kind}] serving on {server.address} after {time.monotonic() - started:.0f} s",
              file=sys.stderr)
        if kind == "hq":
            till_list = register_tills(server.address, server.admin_token, concurrency)
            tills = [{"token": till.token, "card": issue_gift_cards(server.address, till, 1)[0]}
                     for till in till_list]
        else:
            tills = [{"token": "", "card": f"{n:016d}"} for n in range(concurrency)]
        asyncio.run(_drive(kind, server.address, tills, warmup, "warmup"))
        server.instrument()
        calls = asyncio.run(_drive(kind, server.address, tills, cycles, "measured"))
        instructions = server.instructions()
        print(f"[{kind}] {calls} calls measured after {time.monotonic() - started:.0f} s",
              file=sys.stderr)
    finally:
        server.stop()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for dump in work.glob("callgrind.out.*"):
                shutil.copy(dump, keep / f"{kind}.{dump.name}")
        shutil.rmtree(work, ignore_errors=True)
    return {"server": kind, "calls": calls, "concurrency": concurrency,
            "instructions_per_call": round(instructions / calls)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--server", choices=("hq", "echo", "both"), default="both")
    parser.add_argument("--cycles", type=int, default=150, help="measured sales per till")
    parser.add_argument("--warmup", type=int, default=10, help="sales per till before")
    parser.add_argument("--concurrency", type=int, default=16, help="tills, each on its own "
                        "connection")
    parser.add_argument("--keep", type=Path, help="copy the callgrind dumps here")
    args = parser.parse_args()
    kinds = ["echo", "hq"] if args.server == "both" else [args.server]
    for kind in kinds:
        print(json.dumps(measure(kind, args.cycles, args.concurrency, args.warmup, args.keep)),
              flush=True)


if __name__ == "__main__":
    main()
