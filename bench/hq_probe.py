"""`storedvalue serve` with probes, for bench/hq_timeline.py (not a budget, not for users).

    python bench/hq_probe.py OUT.jsonl serve --listen 127.0.0.1:0 ...

Runs the CLI's `main` as `python -m storedvalue.cli` would, after installing, in this
process only:

- a `gc.callbacks` timer: each collection of the cyclic garbage collector (generation,
  duration, objects collected);
- around HQ's SQLite executor (storage.group_commit): each commit done on the writer thread
  (units in the group, seconds), each checkpoint of the checkpointer thread
  (storage.checkpoints: mode, seconds, WAL frames, frames copied) and each of the writer's
  own (`_finish_checkpoint`);

and a thread that appends one JSON line a second to OUT.jsonl: those events' counts and
durations over the second, the garbage collector's generation counts and tracked objects,
and each thread's CPU time (from /proc, named as Python names them). The probes cost a few
microseconds an event; the reporting thread wakes once a second.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from proc_threads import CLOCK_TICKS, thread_times


class Events:
    """What happened since the last report (appended from any thread, under the GIL)."""

    def __init__(self) -> None:
        self.gc: list[tuple[int, float, int]] = []  # generation, seconds, collected
        self.commits: list[tuple[int, float, int]] = []  # units, seconds, WAL frames
        self.checkpoints: list[tuple[str, float, int, int]] = []  # mode, s, frames, copied
        self.writer_checkpoints: list[float] = []

    def take(self) -> Events:
        taken = Events()
        taken.gc, self.gc = self.gc, []
        taken.commits, self.commits = self.commits, []
        taken.checkpoints, self.checkpoints = self.checkpoints, []
        taken.writer_checkpoints, self.writer_checkpoints = self.writer_checkpoints, []
        return taken


EVENTS = Events()
_gc_started = [0.0]
_wal_index: list[Any] = []  # the WAL index file of HQ's database, once the checkpointer opens
_last_frame = [0]


def _frames_written() -> int:
    """WAL frames written since the last call (the WAL index's last frame; after a restart
    of the WAL, counted from its start)."""
    if not _wal_index:
        return 0
    from storedvalue.sqlite_wal import wal_frames

    state = wal_frames(_wal_index[0])
    if state is None:
        return 0
    last, _copied = state
    written = last - _last_frame[0] if last >= _last_frame[0] else last
    _last_frame[0] = last
    return written


def _on_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        EVENTS.gc.append((info["generation"], time.perf_counter() - _gc_started[0],
                          info["collected"]))


def _timed(record: Callable[[Any, Any, float], None], function: Callable[..., Any]
           ) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any) -> Any:
        began = time.perf_counter()
        result = function(self, *args)
        record(args, result, time.perf_counter() - began)
        return result
    return wrapper


def install() -> None:
    gc.callbacks.append(_on_gc)
    # As `storedvalue serve` does, before anything imports sqlite3 (the probes below do).
    from storedvalue.hq.sqlite_memory import disable_memory_statistics

    disable_memory_statistics()
    from storedvalue.hq.storage import checkpoints, group_commit

    executor = group_commit.GroupCommitTransactions
    executor._commit = _timed(  # type: ignore[method-assign]
        lambda args, _result, seconds: EVENTS.commits.append(
            (len(args[0]), seconds, _frames_written())),
        executor._commit)
    executor._finish_checkpoint = _timed(  # type: ignore[method-assign]
        lambda _args, _result, seconds: EVENTS.writer_checkpoints.append(seconds),
        executor._finish_checkpoint)
    checkpointer = checkpoints.WalCheckpointer
    opened = checkpointer.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened(self, *args, **kwargs)
        _wal_index.append(self._shm)

    checkpointer.__init__ = init  # type: ignore[method-assign]
    checkpointer._checkpoint = _timed(  # type: ignore[method-assign]
        lambda args, result, seconds: EVENTS.checkpoints.append(
            (args[0], seconds, result[1], result[2])),
        checkpointer._checkpoint)


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) of each of this process's threads, by name."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()
             if thread.native_id is not None}
    pid = os.getpid()
    cpu: dict[str, float] = {}
    for tid, (_name, user, system) in thread_times(pid, names).items():
        name = "loop" if tid == pid else names.get(tid, "other")
        if name.startswith("ThreadPoolExecutor"):
            name = "executor"
        cpu[name] = cpu.get(name, 0.0) + (user + system) / CLOCK_TICKS
    return cpu


def report_forever(path: str) -> None:
    # HQ_PROBE_COLLECT_EVERY=S: a full collection (gc.collect()) every S seconds, timed as
    # any other: what the collector's oldest generation costs the loop when it comes.
    collect_every = float(os.environ.get("HQ_PROBE_COLLECT_EVERY", "0"))
    # HQ_PROBE_GARBAGE=1: what the collector frees (kept by DEBUG_SAVEALL, counted by type in
    # each line's "garbage", then dropped): the objects HQ leaves in reference cycles.
    garbage = bool(os.environ.get("HQ_PROBE_GARBAGE"))
    if garbage:
        gc.set_debug(gc.DEBUG_SAVEALL)
    with open(path, "a", encoding="utf-8") as out:
        previous = thread_cpu()
        origin = time.monotonic()
        next_report = origin + 1.0
        reports = 0
        while True:
            reports += 1
            if collect_every and reports % collect_every == 0:
                gc.collect()
            time.sleep(max(0.0, next_report - time.monotonic()))
            next_report += 1.0
            events = EVENTS.take()
            cpu = thread_cpu()
            line = {
                "t": round(time.monotonic() - origin, 3),
                "monotonic": time.monotonic(),
                "cpu": {name: round(seconds - previous.get(name, 0.0), 3)
                        for name, seconds in cpu.items()},
                "gc": [[generation, round(seconds * 1e3, 3), collected]
                       for generation, seconds, collected in events.gc],
                "gc_counts": gc.get_count(),
                "gc_objects": len(gc.get_objects()) if os.environ.get("HQ_PROBE_OBJECTS")
                else None,
                "commits": len(events.commits),
                "units": sum(units for units, _, _ in events.commits),
                "commit_ms": round(sum(seconds for _, seconds, _ in events.commits) * 1e3, 2),
                "commit_max_ms": round(max((seconds for _, seconds, _ in events.commits),
                                           default=0.0) * 1e3, 2),
                "frames": sum(frames for _, _, frames in events.commits),
                "checkpoints": [[mode, round(seconds * 1e3, 2), frames, copied]
                                for mode, seconds, frames, copied in events.checkpoints],
                "writer_checkpoint_ms": [round(seconds * 1e3, 2)
                                         for seconds in events.writer_checkpoints],
            }
            if garbage:
                kinds: dict[str, int] = {}
                for found in gc.garbage:
                    name = type(found).__qualname__
                    kinds[name] = kinds.get(name, 0) + 1
                gc.garbage.clear()
                line["garbage"] = dict(sorted(kinds.items(), key=lambda item: -item[1])[:12])
            previous = cpu
            out.write(json.dumps(line) + "\n")
            out.flush()


def main() -> int:
    path, argv = sys.argv[1], sys.argv[2:]
    install()
    threading.Thread(target=report_forever, args=(path,), name="probe", daemon=True).start()
    from storedvalue.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
