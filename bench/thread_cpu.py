"""Where HQ's CPU goes per online call, thread by thread, beside the echo server's.

Not a budget of bench/run.py: a tool for working on `online_cycle_vs_echo`. It starts one
`storedvalue serve` and one echo server as bench/run.py does, runs the LockCard + Redeem
cycle and the echo load against them in turns (echo, HQ, echo, HQ, ...; concurrency 16 by
default) and prints, for each run, each thread's user and system CPU per call (from
/proc/PID/task/TID/stat, summed over threads of one name):

    python bench/thread_cpu.py [--rounds 2] [--measure 4] [--concurrency 16]
                               [--py-spy PATH] [--perf]

Python threads have no names of their own in /proc (every one reads "python"); with
`--py-spy` (py-spy's path) HQ's threads are named as Python named them: the event loop
(the main thread), hq-sqlite-writer, the readers, the checkpointer, grpc's poller. With
`--perf`, `perf stat` also counts each thread's system calls and context switches over the
run (fdatasync per call is one over the calls a commit holds; pwrite64 is two per WAL
frame written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace

from children import progress
from hq_under_test import Deployment
from online import echo_servers, funded_tills
from proc_threads import CLOCK_TICKS, thread_times
from session import Session, Settings

SYSCALLS = ("fdatasync", "pwrite64", "futex", "flock", "fcntl", "write", "read",
            "epoll_wait", "epoll_pwait", "sendmsg", "recvmsg")
def python_thread_names(py_spy: str, pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, from `py-spy dump --json`."""
    dump = subprocess.run([py_spy, "dump", "--json", "--pid", str(pid)], capture_output=True,
                          text=True, check=True, timeout=60).stdout
    return {int(thread["os_thread_id"]): str(thread["thread_name"])
            for thread in json.loads(dump)
            if thread.get("os_thread_id") and thread.get("thread_name")}


@contextlib.contextmanager
def perf_counts(pid: int, enabled: bool) -> Iterator[dict[int, dict[str, int]]]:
    """While the block runs, `perf stat` counts each thread's system calls and context
    switches; the dict yielded is filled (thread id -> event -> count) when it ends."""
    counts: dict[int, dict[str, int]] = {}
    if not enabled:
        yield counts
        return
    events = ",".join([*(f"syscalls:sys_enter_{name}" for name in SYSCALLS),
                       "context-switches"])
    with tempfile.NamedTemporaryFile("r", suffix=".csv") as out:
        perf = subprocess.Popen(["perf", "stat", "--per-thread", "-x", ",", "-o", out.name,
                                 "-e", events, "-p", str(pid)], stderr=subprocess.DEVNULL)
        try:
            yield counts
        finally:
            perf.send_signal(signal.SIGINT)
            perf.wait(timeout=30)
            for line in out.read().splitlines():
                parts = line.split(",")
                if len(parts) < 4 or not parts[1].isdigit():
                    continue
                tid = int(parts[0].rsplit("-", 1)[1])
                event = parts[3].removeprefix("syscalls:sys_enter_")
                counts.setdefault(tid, {})[event] = int(parts[1])


def measure(session: Session, mode: str, addresses: list[str], tills: list[dict[str, str]],
            pid: int, names: dict[int, str], concurrency: int, perf: bool) -> None:
    settings = session.settings
    before = thread_times(pid, names)
    with perf_counts(pid, perf) as counts:
        child = session.children.start_client("load_client", {
            "mode": mode, "addresses": addresses, "tills": tills,
            "concurrency": concurrency, "warmup_s": settings.warmup_s,
            "measure_s": settings.measure_s, "call_timeout_s": 5.0,
        }, name=f"load client ({mode})")
        try:
            result = child.receive(timeout=settings.warmup_s + settings.measure_s + 65)
        finally:
            session.children.stop(child)
    after = thread_times(pid, names)
    calls = int(result["completed"])
    per_name: dict[str, list[float]] = {}
    for tid, (name, user, system) in after.items():
        _name, user_before, system_before = before.get(tid, (name, 0, 0))
        row = per_name.setdefault(name, [0.0, 0.0])
        row[0] += (user - user_before) / CLOCK_TICKS / calls * 1e6
        row[1] += (system - system_before) / CLOCK_TICKS / calls * 1e6
    total = sum(sum(row) for row in per_name.values())
    rate = result["calls"] / result["seconds"]
    print(f"{mode}: {calls} calls, {rate:.0f} calls/s, {total:.0f} us CPU a call")
    for name, (user_us, system_us) in sorted(per_name.items(),
                                             key=lambda item: -sum(item[1])):
        if user_us + system_us >= 0.5:
            print(f"  {name:32s} user {user_us:5.0f}  system {system_us:5.0f} us a call")
    by_name: dict[str, dict[str, int]] = {}
    for tid, events in counts.items():
        name = after.get(tid, before.get(tid, (str(tid), 0, 0)))[0]
        for event, count in events.items():
            by_name.setdefault(name, {})
            by_name[name][event] = by_name[name].get(event, 0) + count
    for name, events in sorted(by_name.items()):
        shown = {event: round(count / calls, 2) for event, count in events.items()
                 if count / calls >= 0.01}
        if shown:
            print(f"  {name:32s} a call: {shown}")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--measure", type=float, default=4.0, help="seconds counted a run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--py-spy", default="", help="py-spy's path: names HQ's threads")
    parser.add_argument("--perf", action="store_true",
                        help="count system calls and context switches (perf stat)")
    args = parser.parse_args()
    settings = replace(Settings.for_run(True), measure_s=args.measure, warmup_s=1.0)
    session = Session(settings, Deployment(None, 1))
    try:
        with session.hq("online") as hq, echo_servers(session, 1) as echo:
            tills = funded_tills(hq, args.concurrency)
            hq_pid = hq.pids()[0]
            names = python_thread_names(args.py_spy, hq_pid) if args.py_spy else {}
            for round_number in range(args.rounds):
                progress(f"round {round_number + 1}")
                measure(session, "echo", echo, tills, echo.pids[0], {}, args.concurrency,
                        args.perf)
                measure(session, "cycle", hq.addresses, tills, hq_pid, names,
                        args.concurrency, args.perf)
    finally:
        session.close()


if __name__ == "__main__":
    main()
