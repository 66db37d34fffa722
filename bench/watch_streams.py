"""Connected tills as HQ sees them at scale: one `grpc.aio` client process holding one
WatchParameters stream per till (each with its own credential), spread over ``connections``
channels (a local subchannel pool each, so each is its own TCP connection).

With ``"target": "fanout"`` the same streams follow the echo server process's trivial
fan-out method instead (the baseline: what the client side and gRPC cost on this machine).

Protocol with `run.py`: spec line ``{"target", "addresses", "tokens", "connections",
"ready_timeout_s"}``; replies ``{"event": "ready", ...}`` once every stream got its first
message (the current parameters) or the timeout passed. Then for each line
``{"version": V, "timeout_s": T}`` it waits until every stream received version V or newer
and replies with how many did and the latest arrival (``time.monotonic()``, the same clock
as the harness on Linux). A line ``{"stop": true}`` or the end of stdin ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from children import parse_command, read_spec, reply
from echo_server import WATCH_METHOD

from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc


@dataclass
class Stream:
    arrivals: list[tuple[int, float]] = field(default_factory=list)
    """(version, time.monotonic()) of every message received."""
    first: asyncio.Event = field(default_factory=asyncio.Event)
    ended: str = ""
    """Why the stream ended ("" while open): a status code name."""

    def arrival_of(self, version: int) -> float | None:
        return next((at for seen, at in self.arrivals if seen >= version), None)


class Watchers:
    def __init__(self, target: str) -> None:
        self.streams: list[Stream] = []
        self.target = 0
        self.progressed = asyncio.Event()
        self._fanout = target == "fanout"

    async def follow(self, channel: grpc.aio.Channel, token: str, stream: Stream) -> None:
        request = ts.WatchParametersRequest(known_version=0)
        metadata = (("authorization", f"Bearer {token}"),)
        if self._fanout:
            call = channel.unary_stream(
                WATCH_METHOD, request_serializer=ts.WatchParametersRequest.SerializeToString,
                response_deserializer=ts.WatchParametersResponse.FromString,
            )(request, metadata=metadata)
        else:
            call = ts_grpc.TerminalServiceStub(channel).WatchParameters(request,
                                                                         metadata=metadata)
        try:
            async for message in call:
                stream.arrivals.append((message.parameters.version, time.monotonic()))
                stream.first.set()
                if message.parameters.version >= self.target:
                    self.progressed.set()
            stream.ended = "OK (stream closed by HQ)"
        except grpc.aio.AioRpcError as error:
            stream.ended = error.code().name
        except asyncio.CancelledError:
            stream.ended = "cancelled"
            call.cancel()
            raise
        finally:
            stream.first.set()
            self.progressed.set()

    async def wait_for(self, version: int, timeout: float) -> dict[str, Any]:
        self.target = version
        deadline = time.monotonic() + timeout
        while True:
            arrivals = [stream.arrival_of(version) for stream in self.streams]
            seen = [at for at in arrivals if at is not None]
            open_without = sum(1 for stream, at in zip(self.streams, arrivals, strict=True)
                               if at is None and not stream.ended)
            left = deadline - time.monotonic()
            if open_without == 0 or left <= 0:
                break
            self.progressed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progressed.wait(), left)
        return {"version": version, "seen": len(seen), "of": len(self.streams),
                "latest": max(seen, default=None), **self.ends()}

    def ends(self) -> dict[str, Any]:
        return {"ended": dict(Counter(s.ended for s in self.streams if s.ended))}


async def main(spec: dict[str, Any]) -> None:
    addresses: list[str] = spec["addresses"]
    tokens: list[str] = spec["tokens"]
    connections = max(1, min(int(spec["connections"]), len(tokens)))
    channels = [grpc.aio.insecure_channel(addresses[i % len(addresses)],
                                          options=[("grpc.use_local_subchannel_pool", 1)])
                for i in range(connections)]
    watchers = Watchers(str(spec["target"]))
    watchers.streams = [Stream() for _ in tokens]
    tasks = [asyncio.create_task(watchers.follow(channels[i % connections], token, stream))
             for i, (token, stream) in enumerate(zip(tokens, watchers.streams, strict=True))]
    started = time.monotonic()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in watchers.streams)),
                                   float(spec["ready_timeout_s"]))
        ready = sum(1 for s in watchers.streams if s.arrivals and not s.ended)
        reply({"event": "ready", "open": ready, "of": len(tokens),
               "seconds": time.monotonic() - started, **watchers.ends()})
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            command = parse_command(line)
            if command is None:
                break
            reply(await watchers.wait_for(int(command["version"]),
                                          float(command["timeout_s"])))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(channel.close(None) for channel in channels))


if __name__ == "__main__":
    asyncio.run(main(read_spec()))
