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

import statistics
import time
import uuid
from typing import Any

import grpc
from children import Child, progress
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
from session import Session

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc

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
            return _measure(name, session, hq, [child], settings.parameter_changes, baseline,
                            what=f"{len(tills)} terminal libraries")
        finally:
            session.children.stop(child)


def _streams(session: Session) -> Metric:
    name = "watchers_5000_propagation_ms"
    settings = session.settings
    # The budget is per HQ process: each of them gets the full count of streams.
    processes = session.deployment.hq_processes
    connections = settings.watch_connections * processes
    with session.hq("watchers") as hq:
        tills = register_tills(hq.address, hq.admin_token, settings.watch_streams * processes)
        baseline = _round_trip(hq, tills[0].token)
        share = -(-len(tills) // settings.watch_processes)
        children = []
        try:
            for index in range(settings.watch_processes):
                children.append(session.children.start_client("watch_streams", {
                    "addresses": hq.addresses,
                    "tokens": [till.token for till in tills[index * share:(index + 1) * share]],
                    "connections": connections,
                    "ready_timeout_s": 30.0 if settings.quick else 60.0,
                }, name=f"watch streams {index}"))
            return _measure(name, session, hq, children, settings.watch_changes, baseline,
                            what=f"{len(tills)} WatchParameters streams from "
                                 f"{settings.watch_processes} processes over "
                                 f"{settings.watch_processes * connections} connections")
        finally:
            for child in children:
                session.children.stop(child)


def _round_trip(hq: HQUnderTest, token: str) -> dict[str, Any]:
    durations = get_parameters_round_trips(hq.address, Till("", token), 50)
    return {"what": "one GetParameters round trip, p50", "unit": "ms",
            "value": statistics.median(durations) * 1000}


def _measure(name: str, session: Session, hq: HQUnderTest, watchers: list[Child],
             changes: int, baseline: dict[str, Any], what: str) -> Metric:
    details: dict[str, Any] = {"watchers": what, "hq_processes": len(hq.addresses)}
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
        return failed(name, f"only {opened} of {total} watchers got their first parameters "
                            f"within {details['ready_s']:.0f} s (ended: {ended or 'none'})",
                      **details)
    progress(f"{total} watchers connected in {details['ready_s']:.1f} s; {changes} changes")
    durations: list[float] = []
    with grpc.insecure_channel(hq.address) as channel:
        stub = bo_grpc.BackOfficeServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        for change in range(changes):
            started = time.monotonic()
            try:
                version = stub.UpdateParameters(bo.UpdateParametersRequest(
                    request_id=str(uuid.uuid4()),
                    credit_memo_offline_completion_allowed=change % 2 == 0),
                    metadata=bearer(hq.admin_token), timeout=ARRIVAL_TIMEOUT_S,
                ).parameters.version
            except grpc.RpcError as error:
                return failed(name, f"change {change + 1}: UpdateParameters failed with "
                                    f"{error.code().name}: {error.details()}", **details)
            for child in watchers:
                child.send({"version": version, "timeout_s": ARRIVAL_TIMEOUT_S})
            replies = [child.receive(timeout=ARRIVAL_TIMEOUT_S + 30) for child in watchers]
            seen = sum(r["seen"] for r in replies)
            if seen < total:
                return failed(name, f"change {change + 1}: only {seen} of {total} watchers "
                                    f"saw version {version} within {ARRIVAL_TIMEOUT_S:.0f} s",
                              **details)
            durations.append(max(r["latest"] for r in replies) - started)
            time.sleep(0.2)  # changes apart, as a back office makes them
    details |= {"changes": len(durations),
                "median_ms": statistics.median(durations) * 1000,
                "per_change_ms": [d * 1000 for d in durations]}
    return Metric(name, max(durations) * 1000, baseline=baseline, details=details)

