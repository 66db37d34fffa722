"""Each thread's CPU time of a process, from /proc (Linux): for bench/thread_cpu.py, which
reads HQ's threads from outside, and bench/hq_probe.py, which reads them from inside HQ (so
this module imports nothing of the bench's or HQ's)."""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int, names: dict[int, str]) -> dict[int, tuple[str, int, int]]:
    """Each thread of `pid`: its name (from `names`, else /proc), utime, stime (ticks)."""
    times: dict[int, tuple[str, int, int]] = {}
    for entry in os.listdir(f"/proc/{pid}/task"):
        tid = int(entry)
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii",
                      errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/comm", encoding="utf-8",
                      errors="replace") as comm:
                name = comm.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        name = "main (event loop)" if tid == pid else names.get(tid, name)
        times[tid] = (name, int(fields[11]), int(fields[12]))
    return times
