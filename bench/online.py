"""Online calls against the echo baseline, and GetCard while stalled callers hold calls open.

- ``online_cycle_vs_echo`` (and ``_c1``, ``_c64``), ``online_cycle_p99_vs_echo``: at each
  concurrency level, load runs alternate between the echo server and HQ (echo, HQ, HQ, echo,
  ...) so machine noise hits both; calls/s and per-call latencies are pooled per server.
  Each server's CPU time per call (user + system, from /proc, over its load runs) is in
  the details, and that of its main thread alone (the event loop: with the GIL, what one
  process can spend per call is bounded by it): they move far less than rates when other
  work shares the machine.
- ``stalled_300_getcard_p99_ratio``: GetCard runs without and with 300 stalled
  unauthenticated calls, alternated; the stalled calls come from their own process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from children import Child, progress
from fleet import issue_gift_cards, register_tills
from hq_under_test import HQUnderTest
from metrics import Metric, failed, percentile
from session import Session

LEVELS = {"online_cycle_vs_echo": 16, "online_cycle_p99_vs_echo": 16,
          "online_cycle_vs_echo_c1": 1, "online_cycle_vs_echo_c64": 64}
CALL_TIMEOUT_S = 5.0
MAX_ERROR_FRACTION = 0.01


@dataclass
class Load:
    """Pooled results of load runs against one server."""

    calls: int = 0
    seconds: float = 0.0
    latencies_us: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    rates: list[float] = field(default_factory=list)
    completed: int = 0
    """Calls answered over whole runs, warm-up included."""
    cpu_s: float | None = 0.0
    """The server processes' CPU seconds over those runs (None where /proc cannot tell)."""
    loop_cpu_s: float | None = 0.0
    """The same for their main threads (the event loops) alone."""

    def add(self, result: dict[str, Any]) -> None:
        self.calls += int(result["calls"])
        self.seconds += float(result["seconds"])
        self.latencies_us.extend(result["latencies_us"])
        for code, count in result["errors"].items():
            self.errors[code] = self.errors.get(code, 0) + int(count)
        self.first_error = self.first_error or result["first_error"]
        self.rates.append(result["calls"] / result["seconds"])
        self.completed += int(result.get("completed", 0))
        cpu, loop_cpu = result.get("server_cpu_s"), result.get("server_loop_cpu_s")
        self.cpu_s = None if cpu is None or self.cpu_s is None else self.cpu_s + float(cpu)
        self.loop_cpu_s = (None if loop_cpu is None or self.loop_cpu_s is None
                           else self.loop_cpu_s + float(loop_cpu))

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def p_ms(self, fraction: float) -> float:
        return percentile(self.latencies_us, fraction) / 1000

    def failure(self, what: str) -> str | None:
        """Why these figures cannot stand, or None."""
        failures = sum(self.errors.values())
        if self.calls == 0:
            return f"no {what} call completed ({failures} failed: {self.first_error})"
        if failures > MAX_ERROR_FRACTION * (self.calls + failures):
            return (f"{failures} of {self.calls + failures} {what} calls failed "
                    f"({self.errors}; first: {self.first_error})")
        return None

    def summary(self, prefix: str) -> dict[str, Any]:
        if not self.latencies_us:
            return {f"{prefix}_calls": 0, f"{prefix}_errors": self.errors}
        summary = {f"{prefix}_calls_per_s": self.rate, f"{prefix}_p50_ms": self.p_ms(0.50),
                   f"{prefix}_p99_ms": self.p_ms(0.99), f"{prefix}_errors": self.errors}
        if self.cpu_s is not None and self.completed:
            summary[f"{prefix}_cpu_us_per_call"] = round(self.cpu_s / self.completed * 1e6)
        if self.loop_cpu_s is not None and self.completed:
            summary[f"{prefix}_loop_cpu_us_per_call"] = round(
                self.loop_cpu_s / self.completed * 1e6)
        return summary


def cpu_seconds(pids: list[int], *, main_threads: bool = False) -> float | None:
    """User + system CPU seconds the processes (`main_threads`: their main threads alone)
    used so far; None without /proc."""
    total = 0.0
    try:
        for pid in pids:
            path = f"/proc/{pid}/task/{pid}/stat" if main_threads else f"/proc/{pid}/stat"
            with open(path, encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    except (OSError, IndexError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def run_load(session: Session, mode: str, addresses: list[str], tills: list[dict[str, str]],
             concurrency: int, server_pids: list[int] | None = None) -> dict[str, Any]:
    """One load run from its own client process (see load_client.py); with `server_pids`,
    the result's ``server_cpu_s`` is their CPU time over the run (``server_loop_cpu_s``:
    that of their main threads)."""
    settings = session.settings
    pids = server_pids or []
    before = cpu_seconds(pids) if pids else None
    loop_before = cpu_seconds(pids, main_threads=True) if pids else None
    child = session.children.start_client("load_client", {
        "mode": mode, "addresses": addresses, "tills": tills, "concurrency": concurrency,
        "warmup_s": settings.warmup_s, "measure_s": settings.measure_s,
        "call_timeout_s": CALL_TIMEOUT_S,
    }, name=f"load client ({mode}, concurrency {concurrency})")
    try:
        result = child.receive(timeout=settings.warmup_s + settings.measure_s
                               + CALL_TIMEOUT_S + 60)
    finally:
        session.children.stop(child)
    after = cpu_seconds(pids) if pids else None
    loop_after = cpu_seconds(pids, main_threads=True) if pids else None
    result["server_cpu_s"] = None if before is None or after is None else after - before
    result["server_loop_cpu_s"] = (None if loop_before is None or loop_after is None
                                   else loop_after - loop_before)
    return result


def funded_tills(hq: HQUnderTest, count: int) -> list[dict[str, str]]:
    """``count`` registered tills, each with a gift card of its own."""
    tills = register_tills(hq.address, hq.admin_token, count)
    return [{"token": till.token, "card": issue_gift_cards(hq.address, till, 1)[0]}
            for till in tills]


class EchoAddresses(list[str]):
    """The echo servers' addresses, and their process ids."""

    pids: list[int]


@contextlib.contextmanager
def echo_servers(session: Session, count: int) -> Iterator[EchoAddresses]:
    """``count`` echo server processes, stopped on leaving; yields their addresses."""
    children: list[Child] = []
    try:
        addresses = EchoAddresses()
        for index in range(count):
            child = session.children.start_client("echo_server", {}, name=f"echo server {index}")
            children.append(child)
            addresses.append(f"127.0.0.1:{child.receive(timeout=30)['port']}")
        addresses.pids = [child.pid for child in children]
        yield addresses
    finally:
        for child in children:
            session.children.stop(child)


def online_cycle(session: Session, names: list[str]) -> list[Metric]:
    levels = sorted({LEVELS[name] for name in names})
    settings = session.settings
    processes = session.deployment.hq_processes
    with session.hq("online") as hq, echo_servers(session, processes) as echo_addresses:
        tills = funded_tills(hq, max(levels))
        echo: dict[int, Load] = {}
        cycle: dict[int, Load] = {}
        for level in levels:
            echo[level], cycle[level] = Load(), Load()
            for round_number in range(settings.rounds):
                order = ["echo", "cycle"] if round_number % 2 == 0 else ["cycle", "echo"]
                for mode in order:
                    progress(f"concurrency {level}, round {round_number + 1}: {mode}")
                    if mode == "echo":
                        echo[level].add(run_load(session, "echo", echo_addresses, tills, level,
                                                 echo_addresses.pids))
                    else:
                        cycle[level].add(run_load(session, "cycle", hq.addresses, tills, level,
                                                  hq.pids()))
                        hq.check_alive()
    results = []
    for name in names:
        level = LEVELS[name]
        results.append(_online_metric(name, level, echo[level], cycle[level], settings.rounds,
                                      processes))
    return results


def _online_metric(name: str, level: int, echo: Load, cycle: Load, rounds: int,
                   processes: int) -> Metric:
    details: dict[str, Any] = {
        "concurrency": level, "rounds": rounds, "echo_processes": processes,
        **cycle.summary("hq"), **echo.summary("echo"),
    }
    error = echo.failure("echo") or cycle.failure("LockCard/Redeem")
    if error is not None:
        return failed(name, error, **details)
    if name == "online_cycle_p99_vs_echo":
        return Metric(name, cycle.p_ms(0.99) / echo.p_ms(0.99),
                      baseline={"what": "grpc.aio echo server process, same client, p99",
                                "value": echo.p_ms(0.99), "unit": "ms"},
                      details=details)
    details["round_ratios"] = [hq / e for hq, e in zip(cycle.rates, echo.rates, strict=True)]
    details["hq_cycles_per_s"] = cycle.rate / 2
    return Metric(name, cycle.rate / echo.rate,
                  baseline={"what": "grpc.aio echo server process, same client",
                            "value": echo.rate, "unit": "calls/s"},
                  details=details)


def stalled_getcard(session: Session, names: list[str]) -> list[Metric]:
    settings = session.settings
    name = "stalled_300_getcard_p99_ratio"
    normal, stalled = Load(), Load()
    stall_reports: list[dict[str, Any]] = []
    # The budget is per HQ process: each of them gets the full count.
    stalled_count = settings.stalled_calls * session.deployment.hq_processes
    with session.hq("stalled") as hq:
        tills = funded_tills(hq, settings.getcard_concurrency)
        for round_number in range(settings.stall_rounds):
            progress(f"GetCard without stalled calls, round {round_number + 1}")
            normal.add(run_load(session, "getcard", hq.addresses, tills,
                                settings.getcard_concurrency))
            progress(f"GetCard with {stalled_count} stalled calls, round {round_number + 1}")
            staller = session.children.start_client("stalled_calls", {
                "addresses": hq.addresses, "count": stalled_count,
                "ready_timeout_s": 20.0}, name="stalled calls")
            try:
                ready = staller.receive(timeout=60)
                progress(f"stalled calls: {ready['reached_hq']} reached HQ, "
                         f"{ready['ended_by_hq']} ended by HQ, {ready['still_open']} open")
                stalled.add(run_load(session, "getcard", hq.addresses, tills,
                                     settings.getcard_concurrency))
                staller.send({"stop": True})
                final = staller.receive(timeout=30)
            finally:
                session.children.stop(staller)
            stall_reports.append({"at_start": _stall_counts(ready), "at_end": _stall_counts(final)})
            hq.check_alive()
    details: dict[str, Any] = {
        "stalled_calls": stalled_count, "getcard_concurrency":
        settings.getcard_concurrency, "rounds": settings.stall_rounds,
        **stalled.summary("with_stalls"), **normal.summary("without_stalls"),
        "stalls": stall_reports,
    }
    reached = min(report["at_start"]["reached_hq"] + report["at_start"]["ended_by_hq"]
                  for report in stall_reports)
    held = min(report["at_end"]["still_open"] for report in stall_reports)
    details["stalled_still_open_at_end"] = held
    if held < stalled_count:
        details["note"] = (f"HQ ended some stalled calls itself: {held} of {stalled_count} were "
                           "still open when the GetCard runs ended (see stalls.by_method)")
    error = (normal.failure("GetCard (no stalled calls)")
             or stalled.failure(f"GetCard (while {stalled_count} calls stalled)"))
    if error is None and reached < stalled_count:
        error = (f"only {reached} of {stalled_count} stalled calls were seen by HQ "
                 "(PING answered after their HEADERS, or ended by HQ)")
    if error is not None:
        return [failed(name, error, **details)]
    return [Metric(name, stalled.p_ms(0.99) / normal.p_ms(0.99),
                   baseline={"what": "GetCard p99 without stalled calls, same HQ, same run",
                             "value": normal.p_ms(0.99), "unit": "ms"},
                   details=details)]


def _stall_counts(report: dict[str, Any]) -> dict[str, Any]:
    return {key: report[key] for key in ("reached_hq", "ended_by_hq", "still_open",
                                         "how_ended", "slowest_end_s", "connect_failed",
                                         "by_method")}

