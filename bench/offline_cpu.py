"""The till's own work per offline completion, in one process: the terminal library against a
real HQ process (started as the bench starts it), the link cut by the bench's relay, then
``complete_sale`` on the till already OFFLINE, as `offline_till.py` times it. Reports the CPU
time per completion (this process, and the calling thread), and with ``--statements`` the SQL
statements per completion, with ``--frames`` the WAL frames each one wrote.

Not a budget of bench/run.py: a tool for working on ``offline_complete_p99_ms``.

    python bench/offline_cpu.py [--sales 300] [--profile out.txt]

Under `valgrind --tool=callgrind` (instruction counts, noise-free) use
``--callgrind-control lib.so``, a shared library with cg_zero() and cg_dump() (see
hq_sync_cpu.py): the first 20 sales warm up, the dump holds the others alone. Divide its
total by the sales the line reports (threads included unless callgrind separates them).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from children import Children
from fleet import issue_gift_cards, register_tills, update_parameters
from hq_under_test import Deployment, HQUnderTest
from offline_sales import Link, open_terminal, sell_offline

from storedvalue.sqlite_wal import wal_frames
from storedvalue.terminal import ConnectivityState, TerminalConfig

WARMUP = 20
_LITERAL = re.compile(r"X?'[^']*'|\b\d+\b")
CONFIG = TerminalConfig(sync_automatically=False, probe_max_backoff_s=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sales", type=int, default=300)
    parser.add_argument("--profile", default="", help="write cProfile's top functions here")
    parser.add_argument("--profile-sort", default="cumulative", help="cumulative, tottime, ...")
    parser.add_argument("--callgrind-control", default="")
    parser.add_argument("--statements", action="store_true",
                        help="count the SQL statements per sale (a trace callback: not with "
                             "the CPU figures)")
    parser.add_argument("--frames", action="store_true",
                        help="count the WAL frames each sale wrote (reads the WAL index)")
    args = parser.parse_args()
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="storedvalue-offline-cpu-"))
    children = Children()
    try:
        with HQUnderTest(children, Deployment(None), workdir / "hq") as hq:
            version = update_parameters(hq.address, hq.admin_token, gift_card_offline=True)
            (till,) = register_tills(hq.address, hq.admin_token, 1)
            total = WARMUP + args.sales + 1
            cards = issue_gift_cards(hq.address, till, total)
            spec = {"terminal_id": till.terminal_id, "token": till.token,
                    "parameters_version": version}
            with Link(hq.address) as link, open_terminal(
                spec, link.address, workdir / "till", CONFIG
            ) as terminal:
                for index, card in enumerate(cards):
                    terminal.add_tender(transaction_id=f"offline-{index}", card_number=card)
                link.black_hole()
                sell_offline(terminal, "offline-0", cards[0])
                assert terminal.state is ConnectivityState.OFFLINE
                for index in range(1, WARMUP + 1):
                    sell_offline(terminal, f"offline-{index}", cards[index])
                measure(terminal, cards, args)
    finally:
        children.close()


def measure(terminal: object, cards: list[str], args: argparse.Namespace) -> None:
    from storedvalue.terminal import Terminal

    assert isinstance(terminal, Terminal)
    db = terminal._db
    statements: list[str] = []
    if args.statements:
        db._conn.set_trace_callback(statements.append)
    shm = Path(db._conn.execute("PRAGMA database_list").fetchone()[2] + "-shm")
    statements.clear()
    frames: list[int] = []
    profile = cProfile.Profile() if args.profile else None
    control = None
    if args.callgrind_control:
        import ctypes

        control = ctypes.CDLL(args.callgrind_control)
        control.cg_zero()
    first = WARMUP + 1
    sales = range(first, first + args.sales)
    durations = []
    threads_before = _thread_cpu()
    cpu_started, wall_started = time.process_time(), time.perf_counter()
    thread_cpu = 0.0
    for index in sales:
        if profile is not None:
            profile.enable()
        before = _wal_frames(shm) if args.frames else 0
        t0 = time.thread_time()
        durations.append(sell_offline(terminal, f"offline-{index}", cards[index]))
        thread_cpu += time.thread_time() - t0
        if args.frames:
            after = _wal_frames(shm)
            if after > before:  # else the WAL started over in this sale
                frames.append(after - before)
        if profile is not None:
            profile.disable()
    cpu = time.process_time() - cpu_started
    threads_after = _thread_cpu()
    wall = time.perf_counter() - wall_started
    if control is not None:
        control.cg_dump()
    db._conn.set_trace_callback(None)
    durations.sort()
    n = len(durations)
    counted: dict[str, int] = {}
    for statement in statements:
        key = _LITERAL.sub("?", " ".join(statement.split()))[:110]
        counted[key] = counted.get(key, 0) + 1
    print(json.dumps({
        "sales": n,
        "process_cpu_us_per_sale": round(cpu / n * 1e6, 1),
        "caller_thread_cpu_us_per_sale": round(thread_cpu / n * 1e6, 1),
        "wall_us_per_sale": round(wall / n * 1e6, 1),
        "p50_ms": round(durations[n // 2], 3), "p99_ms": round(durations[int(n * 0.99)], 3),
        "statements_per_sale": round(len(statements) / n, 2) if args.statements else None,
        "wal_frames_per_sale": round(sum(frames) / len(frames), 2) if frames else None,
        "pid": os.getpid(),
    }))
    for name, ticks in sorted(threads_after.items()):
        spent = ticks - threads_before.get(name, 0)
        if spent:
            print(f"thread {name}: {spent / os.sysconf('SC_CLK_TCK') / n * 1e6:.0f} us a sale")
    for key, count in sorted(counted.items(), key=lambda kv: -kv[1]):
        print(f"{count / n:6.2f}  {key}")
    if profile is not None:
        with open(args.profile, "w") as out:
            pstats.Stats(profile, stream=out).sort_stats(args.profile_sort).print_stats(60)


def _thread_cpu() -> dict[str, int]:
    """CPU ticks (user, system) of each thread of this process, by name and id."""
    spent = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
            spent[f"{name} ({task.name}) user"] = int(fields[11])
            spent[f"{name} ({task.name}) system"] = int(fields[12])
    return spent


def _wal_frames(shm: Path) -> int:
    """Frames in the WAL, from its index (read without closing a descriptor of it, which
    would drop the terminal's SQLite locks on it: storedvalue.sqlite_wal)."""
    state = wal_frames(shm)
    if state is None:
        raise SystemExit(f"{shm}: no readable WAL index")
    return state[0]


if __name__ == "__main__":
    main()
