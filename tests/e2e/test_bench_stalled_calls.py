"""The benchmark's stalled callers (bench/stalled_calls.py) write HTTP/2 by hand; these tests
keep them honest against real gRPC servers: their calls reach the server and stay open, and
a server that ends them is seen ending them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

STALLED_CALLS = Path(__file__).resolve().parents[2] / "bench" / "stalled_calls.py"
COUNT = 5


def _never_answered(request: bytes, context: grpc.ServicerContext) -> bytes:
    raise AssertionError("a stalled call never sends its request, so never gets here")


def _server(with_methods: bool) -> tuple[grpc.Server, str]:
    """A gRPC server with the two methods the stalled calls use, or with none."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=COUNT + 2))
    if with_methods:
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(
                "storedvalue.v1.TerminalService",
                {"GetCard": grpc.unary_unary_rpc_method_handler(_never_answered)}),
            grpc.method_handlers_generic_handler(
                "grpc.health.v1.Health",
                {"Check": grpc.unary_unary_rpc_method_handler(_never_answered)}),
        ))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def run_stalled_calls() -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def run(address: str, *, until_ended: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start the stalled calls; once they are ready, wait (10 s at most) until the server
        ended ``until_ended`` of them, then stop them. Returns the ready and final reports."""
        process = subprocess.Popen([sys.executable, str(STALLED_CALLS)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        processes.append(process)
        assert process.stdin is not None and process.stdout is not None

        def ask(command: dict[str, Any]) -> dict[str, Any]:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(command) + "\n")
            process.stdin.flush()
            answer: dict[str, Any] = json.loads(process.stdout.readline())
            return answer

        ready = ask({"addresses": [address], "count": COUNT, "ready_timeout_s": 20})
        deadline = time.monotonic() + 10
        while (ask({"status": True})["ended_by_hq"] < until_ended
               and time.monotonic() < deadline):
            time.sleep(0.05)
        final = ask({"stop": True})
        assert process.wait(timeout=30) == 0
        return ready, final

    yield run
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()  # reaps it and closes its pipes


def test_stalled_calls_reach_the_server_and_stay_open(run_stalled_calls: Any) -> None:
    server, address = _server(with_methods=True)
    try:
        ready, final = run_stalled_calls(address)
    finally:
        server.stop(0)
    assert (ready["reached_hq"], ready["still_open"], ready["ended_by_hq"]) == (COUNT, COUNT, 0)
    assert (final["still_open"], final["ended_by_hq"]) == (COUNT, 0)
    assert {method: counts["calls"] for method, counts in final["by_method"].items()} == {
        "GetCard": 3, "Check": 2}


def test_a_server_that_ends_the_calls_is_seen_ending_them(run_stalled_calls: Any) -> None:
    server, address = _server(with_methods=False)  # UNIMPLEMENTED at once
    try:
        _ready, final = run_stalled_calls(address, until_ended=COUNT)
    finally:
        server.stop(0)
    assert final["ended_by_hq"] == COUNT
    assert final["how_ended"] == {"trailers": COUNT}
