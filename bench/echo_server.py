"""The baseline server: a `grpc.aio` server process on the default asyncio event loop with
trivial handlers, driven by the same client code as HQ:

- ``bench.Echo/Echo`` answers with the request's bytes (the load client sends it messages of
  the size of HQ's, at the same concurrency);
- ``bench.Fanout/Watch`` streams WatchParametersResponse messages, the current version on
  connect then each newer one, and ``bench.Fanout/Publish`` makes a new version: the same
  watcher processes follow it as they follow HQ's WatchParameters.

Started by `run.py`; prints ``{"port": N}`` once listening and serves until its stdin closes
or it gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc
from children import read_spec, reply

from storedvalue.v1 import parameters_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"
FANOUT = "bench.Fanout"
WATCH_METHOD = f"/{FANOUT}/Watch"
PUBLISH_METHOD = f"/{FANOUT}/Publish"


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


class Fanout:
    """One version number; every watcher gets each new one."""

    def __init__(self) -> None:
        self._version = 1
        self._message = self._encode()
        self._changed = asyncio.Event()

    def _encode(self) -> bytes:
        return ts.WatchParametersResponse(
            parameters=parameters_pb2.Parameters(version=self._version)).SerializeToString()

    async def watch(self, _request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]
                    ) -> AsyncIterator[bytes]:
        while True:
            changed = self._changed
            yield self._message
            await changed.wait()

    async def publish(self, _request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]
                      ) -> bytes:
        self._version += 1
        self._message = self._encode()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self._message


async def serve() -> None:
    read_spec()
    # gRPC core cancels calls beyond 1,000 waiting to be matched to a handler by default;
    # 5,000 watchers connecting at once need more room.
    server = grpc.aio.server(options=[("grpc.server.max_pending_requests", 100_000),
                                      ("grpc.server.max_pending_requests_hard_limit", 100_000)])
    fanout = Fanout()
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(
            SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),
        grpc.method_handlers_generic_handler(FANOUT, {
            "Watch": grpc.unary_stream_rpc_method_handler(fanout.watch),
            "Publish": grpc.unary_unary_rpc_method_handler(fanout.publish),
        }),
    ))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: None if sys.stdin.readline() else stop.set())
    reply({"port": port})
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve())
