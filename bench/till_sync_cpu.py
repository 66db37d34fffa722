"""The till's CPU per offline transaction at sync, in one process: the terminal library's
sync agent (reading the outbox, building the requests, reading HQ's answers, recording them
in the till's SQLite) against HQ's answers replayed, so that HQ's own work is not counted.

Not a budget of bench/run.py: a tool for working on the till's side of issue 10.

    python bench/till_sync_cpu.py prepare WORKDIR [--transactions 2000] [--uuid-ids]
    python bench/till_sync_cpu.py replay WORKDIR [--callgrind-control lib.so]

``prepare`` fills a till's outbox through the real HQ (in this process, tests/in_process_hq.py:
one gift card locked online per sale, every sale completed offline), keeps a copy of the
till's data directory, then syncs it for real and keeps HQ's serialized answers. ``replay``
opens a till on a fresh copy of the kept directory (a fresh HQ in this process answers its
handshake and status report) and times ``sync_now()`` with each SyncOfflineBatch answered
from the kept answers (their bytes, as gRPC gives them: the library reads them itself). Under
``valgrind --tool=callgrind --instr-atstart=no`` pass ``--callgrind-control`` (a library with
cg_zero() and cg_dump()): the dump holds ``sync_now()`` alone; divide by the transactions.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pickle
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from in_process_hq import HQDesk, InProcessHQ, Link, hq_config

from storedvalue.terminal import Money, SaleLine, Terminal, TerminalConfig
from storedvalue.terminal._hq_client import HQClient

CONFIG = TerminalConfig(sync_automatically=False, watch_parameters=False, call_timeout_s=10.0)
_REQUEST_ID = 38  # tag, length and a UUID's 36 characters


def prepare(work: Path, size: int, uuid_ids: bool = False) -> None:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    link = Link()
    hq_dir = work / "hq"
    hq_dir.mkdir()
    with InProcessHQ(hq_config(hq_dir), link=link) as server:
        desk = HQDesk(server.address)
        token = desk.register("T1")
        desk.set_parameters(gift_card=True, credit_memo=True)
        cards = [desk.add_card(balance=1000) for _ in range(size)]
        sale_ids = ([str(uuid.uuid4()) for _ in range(size)] if uuid_ids
                    else [f"sale-{index}" for index in range(size)])
        till_dir = work / "till"
        with Terminal(address=server.address, terminal_id="T1", credential=token,
                      data_dir=till_dir, config=CONFIG) as terminal:
            for index, card in enumerate(cards):
                terminal.add_tender(transaction_id=sale_ids[index], card_number=card)
            link.up = False
            for index, card in enumerate(cards):
                result = terminal.complete_sale(
                    transaction_id=sale_ids[index],
                    lines=[SaleLine("L1", card, Money(100, "EUR"))])
                assert result.completed_offline
        shutil.copytree(till_dir, work / "till-kept")
        link.up = True
        answers: dict[bytes, bytes] = {}
        with Terminal(address=server.address, terminal_id="T1", credential=token,
                      data_dir=till_dir, config=CONFIG) as terminal:
            hq: HQClient = terminal._hq
            call = hq._call

            def keeping(rpc: Any, request: Any, **kw: Any) -> Any:
                response = call(rpc, request, **kw)
                if isinstance(request, bytes):
                    answers[request[_REQUEST_ID:]] = (
                        response if isinstance(response, bytes) else response.SerializeToString())
                return response

            hq._call = keeping  # type: ignore[method-assign]
            assert terminal.wait_for_state(terminal.state.__class__.ONLINE, timeout_s=10)
            summary = terminal.sync_now()
            assert summary.error is None and summary.sent == size, summary
        desk.close()
    (work / "answers.pickle").write_bytes(pickle.dumps(answers))
    print(f"prepared {size} transactions in {len(answers)} batches")


def replay(work: Path, control: str, repeat: int = 1) -> None:
    for _ in range(repeat):
        replay_once(work, control)


def replay_once(work: Path, control: str) -> None:
    answers: dict[bytes, bytes] = pickle.loads((work / "answers.pickle").read_bytes())  # noqa: S301
    till_dir = work / "till-replay"
    shutil.rmtree(till_dir, ignore_errors=True)
    shutil.copytree(work / "till-kept", till_dir)
    hq_dir = work / "hq-replay"
    shutil.rmtree(hq_dir, ignore_errors=True)
    hq_dir.mkdir()
    cg = ctypes.CDLL(control) if control else None
    with InProcessHQ(hq_config(hq_dir)) as server:
        desk = HQDesk(server.address)
        token = desk.register("T1")
        with Terminal(address=server.address, terminal_id="T1", credential=token,
                      data_dir=till_dir, config=CONFIG) as terminal:
            hq: HQClient = terminal._hq
            call = hq._call

            def answering(rpc: Any, request: Any, **kw: Any) -> Any:
                if isinstance(request, bytes):
                    return answers[request[_REQUEST_ID:]]  # gRPC gives the library bytes
                return call(rpc, request, **kw)

            hq._call = answering  # type: ignore[method-assign]
            assert terminal.wait_for_state(terminal.state.__class__.ONLINE, timeout_s=10)
            size = len(terminal.outbox())
            if cg is not None:
                cg.cg_zero()
            started, cpu, times = time.perf_counter(), time.process_time(), os.times()
            summary = terminal.sync_now()
            cpu = time.process_time() - cpu
            user, system = os.times().user - times.user, os.times().system - times.system
            elapsed = time.perf_counter() - started
            if cg is not None:
                cg.cg_dump()
            assert summary.error is None and summary.sent == size, summary
            assert not terminal.outbox()
        desk.close()
    print(f"replayed {size} transactions: {elapsed:.3f} s, "
          f"till CPU {cpu / size * 1e6:.1f} us/tx (user {user / size * 1e6:.1f}, "
          f"system {system / size * 1e6:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("phase", choices=["prepare", "replay"])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--transactions", type=int, default=2000)
    parser.add_argument("--callgrind-control", default="")
    parser.add_argument("--repeat", type=int, default=1, help="replay this many times")
    parser.add_argument("--uuid-ids", action="store_true",
                        help="prepare: sales with UUIDs for ids (payloads of 128 bytes or more)")
    args = parser.parse_args()
    if args.phase == "prepare":
        prepare(args.workdir, args.transactions, args.uuid_ids)
    else:
        replay(args.workdir, args.callgrind_control, args.repeat)


if __name__ == "__main__":
    main()
