"""Parameter changes reaching connected tills.

- ``param_propagation_ms``: 20 terminal libraries in one process (terminal_watchers.py),
  each its own till, channel and data directory; the time from sending UpdateParameters
  until the slowest one applied the change, worst of the changes.
- ``watchers_5000_propagation_ms``: 5,000 WatchParameters streams, each its own till's
  credential, opened from separate processes over several connections (watch_streams.py);
  the time until the slowest stream received the change, worst of the changes.

With several HQ processes the tills are spread over them and the change is sent to the
first, so it must cross replicas. Baseline: one GetParameters round trip (p50) from the
harness, the least any push could take.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from children import Child, progress
from echo_server import PUBLISH_METHOD
from fleet import (
    CALL_TIMEOUT_S,
    Till,
    bearer,
    get_parameters_round_trips,
    register_tills,
    update_parameters,
)
from hq_under_test import HQUnderTest
from metrics import Metric, failed
from online import echo_servers
from session import Session

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc
from storedvalue.v1 import terminal_service_pb2 as ts

ARRIVAL_TIMEOUT_S = 10.0


def parameter_propagation(session: Session, names: list[str]) -> list[Metric]:
    metrics = []
    if "param_propagation_ms" in names:
        metrics.append(_terminals(session))
    if "watchers_5000_propagation_ms" in names:
        metrics.append(_streams(session))
    return metrics


def _terminals(session: Session) -> Metric:
    name = "param_propagation_ms"
    settings = session.settings
    with session.hq("parameters") as hq:
        tills = register_tills(hq.address, hq.admin_token, settings.terminal_watchers)
        version = update_parameters(hq.address, hq.admin_token, gift_card_offline=True)
        baseline = _round_trip(hq, tills[0].token)
        child = session.children.start_client("terminal_watchers", {
            "addresses": hq.addresses, "initial_version": version, "ready_timeout_s": 60.0,
            "tills": [{"terminal_id": t.terminal_id, "token": t.token} for t in tills],
            "data_dir": str(session.workdir / "terminal-watchers"),
        }, name="terminal watchers")
        try:
            with _hq_changes(hq) as change:
                measured = _propagate([child], settings.parameter_changes, change,
                                      what=f"{len(tills)} terminal libraries")
        finally:
            session.children.stop(child)
    details = {**measured.details, "hq_processes": hq.processes}
    if measured.error is not None:
        return failed(name, measured.error, **details)
    return Metric(name, max(measured.durations) * 1000, baseline=baseline, details=details)


def _streams(session: Session) -> Metric:
    name = "watchers_5000_propagation_ms"
    settings = session.settings
    # 5,000 streams in all, spread over the HQ processes: twice that would mostly measure
    # the watcher processes on two cores (the trivial fan-out took 1.3 s for 10,000 here).
    processes = session.deployment.hq_processes
    with session.hq("watchers") as hq, echo_servers(session, 1) as (fanout_address,):
        tills = register_tills(hq.address, hq.admin_token, settings.watch_streams)
        tokens = [till.token for till in tills]
        progress(f"baseline: {len(tokens)} streams on the trivial fan-out server")
        with _fanout_changes(fanout_address) as change:
            fanout = _follow_streams(session, "fanout", [fanout_address], tokens, change)
        progress(f"{len(tokens)} WatchParameters streams on HQ")
        with _hq_changes(hq) as change:
            measured = _follow_streams(session, "hq", hq.addresses, tokens, change)
    details = {**measured.details, "hq_processes": processes}
    if fanout.error is not None:
        return failed(name, f"baseline: {fanout.error}", **details)
    if measured.error is not None:
        return failed(name, measured.error, **details,
                      baseline_worst_ms=max(fanout.durations) * 1000)
    baseline = {"what": "the same streams and client processes on the echo server process's "
                        "trivial fan-out (worst change)",
                "value": max(fanout.durations) * 1000, "unit": "ms"}
    return Metric(name, max(measured.durations) * 1000, baseline=baseline,
                  details=details | {"baseline_median_ms":
                                     statistics.median(fanout.durations) * 1000})


def _follow_streams(session: Session, target: str, addresses: list[str], tokens: list[str],
                    change: Callable[[int], int]) -> Propagation:
    settings = session.settings
    share = -(-len(tokens) // settings.watch_processes)
    connections = settings.watch_connections  # the same shape for HQ and the baseline
    children = []
    try:
        for index in range(settings.watch_processes):
            children.append(session.children.start_client("watch_streams", {
                "target": target, "addresses": addresses,
                "tokens": tokens[index * share:(index + 1) * share],
                "connections": connections,
                "ready_timeout_s": 30.0 if settings.quick else 60.0,
            }, name=f"watch streams {index} ({target})"))
        return _propagate(children, settings.watch_changes, change,
                          what=f"{len(tokens)} streams from {settings.watch_processes} "
                               f"processes over {settings.watch_processes * connections} "
                               "connections")
    finally:
        for child in children:
            session.children.stop(child)


def _round_trip(hq: HQUnderTest, token: str) -> dict[str, Any]:
    durations = get_parameters_round_trips(hq.address, Till("", token), 50)
    return {"what": "one GetParameters round trip, p50", "unit": "ms",
            "value": statistics.median(durations) * 1000}


@dataclass
class Propagation:
    """Seconds from each change until the slowest watcher had it, or why there are none."""

    durations: list[float]
    error: str | None
    details: dict[str, Any]


@contextlib.contextmanager
def _hq_changes(hq: HQUnderTest) -> Iterator[Callable[[int], int]]:
    """Makes change N through the back office of the first HQ process; returns the version."""
    with grpc.insecure_channel(hq.address) as channel:
        stub = bo_grpc.BackOfficeServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)

        def change(number: int) -> int:
            return int(stub.UpdateParameters(bo.UpdateParametersRequest(
                request_id=str(uuid.uuid4()),
                credit_memo_offline_completion_allowed=number % 2 == 0),
                metadata=bearer(hq.admin_token), timeout=ARRIVAL_TIMEOUT_S,
            ).parameters.version)

        yield change


@contextlib.contextmanager
def _fanout_changes(address: str) -> Iterator[Callable[[int], int]]:
    """Makes a new version on the echo server's fan-out; returns it."""
    with grpc.insecure_channel(address) as channel:
        publish = channel.unary_unary(
            PUBLISH_METHOD, request_serializer=None,
            response_deserializer=ts.WatchParametersResponse.FromString)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        yield lambda _number: int(publish(b"", timeout=ARRIVAL_TIMEOUT_S).parameters.version)


def _propagate(watchers: list[Child], changes: int, change: Callable[[int], int], what: str
               ) -> Propagation:
    details: dict[str, Any] = {"watchers": what}
    readies = [child.receive(timeout=120) for child in watchers]
    opened, total = sum(r["open"] for r in readies), sum(r["of"] for r in readies)
    details["ready_s"] = max(r["seconds"] for r in readies)
    ended: dict[str, int] = {}
    for ready in readies:
        for code, count in ready.get("ended", {}).items():
            ended[code] = ended.get(code, 0) + count
    if ended:
        details["streams_ended"] = ended
    if opened < total:
        return Propagation([], f"only {opened} of {total} watchers got their first parameters "
                               f"within {details['ready_s']:.0f} s (ended: {ended or 'none'})",
                           details)
    progress(f"{total} watchers connected in {details['ready_s']:.1f} s; {changes} changes")
    durations: list[float] = []
    for number in range(changes):
        started = time.monotonic()
        try:
            version = change(number)
        except grpc.RpcError as error:
            return Propagation(durations, f"change {number + 1} failed with "
                                          f"{error.code().name}: {error.details()}", details)
        for child in watchers:
            child.send({"version": version, "timeout_s": ARRIVAL_TIMEOUT_S})
        replies = [child.receive(timeout=ARRIVAL_TIMEOUT_S + 30) for child in watchers]
        seen = sum(r["seen"] for r in replies)
        if seen < total:
            return Propagation(durations, f"change {number + 1}: only {seen} of {total} "
                                          f"watchers saw version {version} within "
                                          f"{ARRIVAL_TIMEOUT_S:.0f} s", details)
        durations.append(max(r["latest"] for r in replies) - started)
        time.sleep(0.2)  # changes apart, as a back office makes them
    details |= {"changes": len(durations), "median_ms": statistics.median(durations) * 1000,
                "per_change_ms": [d * 1000 for d in durations]}
    return Propagation(durations, None, details)
