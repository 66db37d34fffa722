"""HQ's online rate second by second, beside what HQ did in each second.

Not a budget of bench/run.py: a tool for finding why `online_cycle_vs_echo` moves from one
round to the next. It starts one `storedvalue serve` as bench/run.py does (fresh SQLite
database, tills registered and funded through the wire) but through bench/hq_probe.py, which
records in HQ's process the garbage collector's collections, the writer's commits (group
sizes, seconds) and the WAL checkpoints, and each thread's CPU, second by second. Then one
load client (bench/timeline_load.py: bench/load_client.py's LockCard + Redeem workers)
runs for `--seconds` without a break, and one line per second is printed:

    python bench/hq_timeline.py [--seconds 60] [--concurrency 16] [--echo 10] [--keep DIR]

    s  calls/s  cpu_ms loop writer ckpt  us/call  gc0 gc1 gc2 gc_ms  groups units ckpt_ms
   12     3120     980  700    150   40      314   ...

`us/call` is HQ's CPU (every thread) over the calls answered that second; `gcN` counts the
collections of generation N, `gc_ms` their total pause (the loop stops for them);
`groups`/`units` the commits and the calls they held, `frames` the WAL frames they wrote,
`commit_ms` the writer thread's time in them (the fsync; `max_ms` the longest); `ckpt_ms`
the checkpoint thread's time in `PRAGMA wal_checkpoint` (+ the writer's own). Every
ten seconds a summary line. With `--echo S`, the same client first runs S seconds against
the echo server (its per-second rate and CPU): whether the client itself holds the rate
steady. HQ_PROBE_COLLECT_EVERY=S in the environment makes HQ run a full collection of the
garbage collector every S seconds (timed in `gc2_ms`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from typing import Any

from children import BENCH_DIR, progress
from hq_under_test import Deployment, HQUnderTest
from online import cpu_seconds, echo_servers, funded_tills
from session import Session, Settings

GC_COLUMNS = 3


def sample_cpu(pid: int, samples: dict[int, float], stop: threading.Event) -> None:
    """Every second (monotonic whole seconds): the CPU seconds `pid` has used."""
    while not stop.is_set():
        now = time.monotonic()
        used = cpu_seconds([pid])
        if used is not None:
            samples[int(now)] = used
        stop.wait(1.0 - (time.monotonic() % 1.0))


def run_client(session: Session, mode: str, addresses: list[str],
               tills: list[dict[str, str]], concurrency: int, seconds: float
               ) -> dict[str, Any]:
    child = session.children.start_client("timeline_load", {
        "mode": mode, "addresses": addresses, "tills": tills, "concurrency": concurrency,
        "seconds": seconds, "call_timeout_s": 5.0}, name=f"timeline load ({mode})")
    try:
        return child.receive(timeout=seconds + 90)
    finally:
        session.children.stop(child)


def echo_timeline(session: Session, tills: list[dict[str, str]], concurrency: int,
                  seconds: float) -> None:
    with echo_servers(session, 1) as echo:
        samples: dict[int, float] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=sample_cpu, args=(echo.pids[0], samples, stop),
                                   daemon=True)
        sampler.start()
        try:
            result = run_client(session, "echo", echo, tills, concurrency, seconds)
        finally:
            stop.set()
            sampler.join()
    per_second = {int(second): calls for second, calls in result["per_second"].items()}
    print("echo server, same client:")
    print(f"{'s':>4} {'calls/s':>8} {'cpu_ms':>7} {'us/call':>8}")
    seconds_seen = sorted(per_second)
    first = seconds_seen[0]
    for second in seconds_seen[1:-1]:  # whole seconds only
        calls = per_second[second]
        cpu_ms = None
        if second in samples and second + 1 in samples:
            cpu_ms = (samples[second + 1] - samples[second]) * 1e3
        us = "" if cpu_ms is None else f"{cpu_ms * 1e3 / calls:8.0f}"
        print(f"{second - first:4d} {calls:8d} {'' if cpu_ms is None else round(cpu_ms):>7} {us}")
    sys.stdout.flush()


def hq_timeline(probe_lines: list[dict[str, Any]], per_second: dict[int, int]) -> None:
    print(f"{'s':>4} {'calls/s':>8} {'cpu_ms':>7} {'loop':>5} {'writer':>6} {'ckpt':>5} "
          f"{'us/call':>8} {'gc0':>4} {'gc1':>4} {'gc2':>4} {'gc_ms':>7} {'gc2_ms':>7} "
          f"{'groups':>6} {'units':>6} {'frames':>6} {'commit_ms':>9} {'max_ms':>6} {'ckpt_ms':>8}")
    window: list[tuple[int, float, float, float]] = []
    first = None
    for line in probe_lines:
        # The probe's line covers the second before `monotonic`; the client's counts are
        # by whole monotonic seconds: take the one the interval mostly covers.
        second = int(line["monotonic"] - 0.5) if line["monotonic"] % 1 < 0.5 else \
            int(line["monotonic"]) - 1
        calls = per_second.get(second, 0)
        if calls == 0:
            continue
        if first is None:
            first = second
        cpu = line["cpu"]
        cpu_ms = sum(cpu.values()) * 1e3
        gen = [0] * GC_COLUMNS
        gc_ms = 0.0
        gc2_ms = 0.0
        for generation, ms, _collected in line["gc"]:
            gen[generation] += 1
            gc_ms += ms
            if generation == 2:
                gc2_ms += ms
        ckpt_ms = sum(c[1] for c in line["checkpoints"]) + sum(line["writer_checkpoint_ms"])
        print(f"{second - first:4d} {calls:8d} {cpu_ms:7.0f} {cpu.get('loop', 0) * 1e3:5.0f} "
              f"{cpu.get('hq-sqlite-writer', 0) * 1e3:6.0f} "
              f"{cpu.get('hq-sqlite-checkpoints', 0) * 1e3:5.0f} "
              f"{cpu_ms * 1e3 / calls:8.0f} {gen[0]:4d} {gen[1]:4d} {gen[2]:4d} "
              f"{gc_ms:7.1f} {gc2_ms:7.1f} {line['commits']:6d} {line['units']:6d} "
              f"{line['frames']:6d} {line['commit_ms']:9.1f} {line['commit_max_ms']:6.1f} "
              f"{ckpt_ms:8.1f}")
        window.append((calls, cpu_ms, gc_ms, ckpt_ms))
        if len(window) == 10:
            calls_sum = sum(w[0] for w in window)
            print(f"  ten seconds: {calls_sum / 10:.0f} calls/s, "
                  f"{sum(w[1] for w in window) * 1e3 / calls_sum:.0f} us CPU a call, "
                  f"gc {sum(w[2] for w in window) / 10:.1f} ms/s, "
                  f"checkpoints {sum(w[3] for w in window) / 10:.1f} ms/s")
            window.clear()
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--echo", type=float, default=0.0,
                        help="seconds of the same client against the echo server first")
    parser.add_argument("--keep", default="", help="copy the probe's lines to this file")
    args = parser.parse_args()
    session = Session(Settings.for_run(True), Deployment(None, 1))
    probe_path = session.workdir / "probe.jsonl"
    launcher = [sys.executable, str(BENCH_DIR / "hq_probe.py"), str(probe_path)]
    try:
        with HQUnderTest(session.children, session.deployment, session.workdir / "timeline",
                         launcher) as hq:
            tills = funded_tills(hq, args.concurrency)
            if args.echo:
                progress(f"echo server, {args.echo:.0f} s")
                echo_timeline(session, tills, args.concurrency, args.echo)
            progress(f"HQ, {args.seconds:.0f} s of LockCard + Redeem, "
                     f"concurrency {args.concurrency}; load {os.getloadavg()}")
            result = run_client(session, "cycle", hq.addresses, tills, args.concurrency,
                                args.seconds)
            time.sleep(1.2)  # the probe's line for the last second
        progress(f"done; load {os.getloadavg()}")
        if result["errors"]:
            print(f"errors: {result['errors']} (first: {result['first_error']})")
        lines = [json.loads(text) for text in probe_path.read_text().splitlines()]
        if args.keep:
            shutil.copy(probe_path, args.keep)
        per_second = {int(second): calls for second, calls in result["per_second"].items()}
        print(f"HQ (probed), concurrency {args.concurrency}, {result['completed']} calls:")
        hq_timeline(lines, per_second)
    finally:
        session.close()


if __name__ == "__main__":
    main()
