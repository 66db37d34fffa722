"""The baseline server: a `grpc.aio` server process with one trivial unary method that answers
with the request's bytes, on the default asyncio event loop. The load client drives it with
the same code, concurrency and message sizes as HQ.

Started by `run.py`; prints ``{"port": N}`` once listening and serves until its stdin closes
or it gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from children import read_spec, reply

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve() -> None:
    read_spec()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
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
