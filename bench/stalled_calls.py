"""Stalled callers: a client process holding ``count`` gRPC calls open that never send their
request message, and no credential.

Each call is a real HTTP/2 stream on its own TCP connection to HQ, written by hand so that
nothing is hidden: the connection preface and SETTINGS, then one HEADERS frame for a POST
(``content-type: application/grpc``, no ``authorization``) without END_STREAM, then never a
DATA frame. The calls alternate between two unary methods: TerminalService/GetCard, which
needs a credential (HQ may refuse it as soon as it reads the headers), and the standard
health check, which needs none (so HQ has to hold the call until the request comes or a
deadline passes), the method an attacker would pick.

A PING follows the HEADERS; its ACK proves HQ's HTTP/2 layer read the HEADERS frame before it
(frames are read in order), i.e. the call reached HQ. The client acknowledges HQ's SETTINGS
and PINGs as any HTTP/2 client does, and records how each stream ends, if HQ ends it:
trailers (HEADERS with END_STREAM), RST_STREAM, GOAWAY or the connection closing.

Protocol with `run.py`: spec line ``{"addresses", "count", "ready_timeout_s"}`` (calls spread
over the addresses, each getting both methods); replies ``{"event": "ready", ...}`` once
every stream reached HQ (or the timeout passed); then replies with the current counts to
each ``{"status": true}`` line, and to ``{"stop": true}`` (or the end of stdin) with the
final counts before it closes its connections and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from children import parse_command, read_spec, reply

METHODS = ("/storedvalue.v1.TerminalService/GetCard", "/grpc.health.v1.Health/Check")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
SETTINGS_ENABLE_PUSH = 0x2
STREAM = 1
PROBE = b"stalled!"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big")
            + payload)


def literal_header(name: bytes, value: bytes) -> bytes:
    """HPACK "literal header field without indexing, new name", no Huffman coding
    (RFC 7541 section 6.2.2); names and values here are shorter than 127 bytes."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


def request_headers(authority: str, path: str) -> bytes:
    return b"".join(literal_header(name, value) for name, value in (
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ))


@dataclass
class StalledCall:
    method: str
    opened_at: float = 0.0
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end: str = ""
    """How HQ ended the call: "trailers", "RST_STREAM <code>", "GOAWAY", "closed"."""
    ended_after_s: float = 0.0
    connect_error: str = ""

    def finish(self, how: str) -> None:
        if not self.ended.is_set():
            self.end = how
            self.ended_after_s = time.monotonic() - self.opened_at
            self.ended.set()


async def hold(host: str, port: int, call: StalledCall, stop: asyncio.Event) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as error:
        call.connect_error = str(error)
        call.finish("connect failed")
        return
    call.opened_at = time.monotonic()
    writer.write(PREFACE + frame(SETTINGS, 0, 0, SETTINGS_ENABLE_PUSH.to_bytes(2, "big")
                                 + (0).to_bytes(4, "big"))
                 + frame(HEADERS, END_HEADERS, STREAM,
                         request_headers(f"{host}:{port}", call.method))
                 + frame(PING, 0, 0, PROBE))
    reading = asyncio.create_task(_read_frames(reader, writer, call))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (reading, stopping):
        task.cancel()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _read_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       call: StalledCall) -> None:
    try:
        while True:
            header = await reader.readexactly(9)
            length = int.from_bytes(header[:3], "big")
            kind, flags = header[3], header[4]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            payload = await reader.readexactly(length)
            if kind == SETTINGS and not flags & ACK:
                writer.write(frame(SETTINGS, ACK, 0))
            elif kind == PING and flags & ACK:
                if payload == PROBE:
                    call.reached.set()
            elif kind == PING:
                writer.write(frame(PING, ACK, 0, payload))
            elif kind == RST_STREAM and stream == STREAM:
                call.finish(f"RST_STREAM {int.from_bytes(payload[:4], 'big')}")
            elif kind in (HEADERS, DATA) and stream == STREAM and flags & END_STREAM:
                call.finish("trailers")
            elif kind == GOAWAY:
                call.finish("GOAWAY")
    except (asyncio.IncompleteReadError, ConnectionError):
        call.finish("closed")


async def main(spec: dict[str, Any]) -> None:
    addresses = [str(address).rpartition(":") for address in spec["addresses"]]
    calls = [StalledCall(METHODS[i % len(METHODS)]) for i in range(int(spec["count"]))]
    stop = asyncio.Event()
    holders = []
    for index, call in enumerate(calls):
        host, _, port = addresses[index // len(METHODS) % len(addresses)]
        holders.append(asyncio.create_task(hold(host, int(port), call, stop)))

    async def reached_or_ended(call: StalledCall) -> None:
        waits = {asyncio.create_task(call.reached.wait()), asyncio.create_task(call.ended.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    started = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(reached_or_ended(c) for c in calls)),
                               float(spec["ready_timeout_s"]))
    reply({"event": "ready", **_counts(calls), "seconds": time.monotonic() - started})
    while parse_command(await asyncio.to_thread(sys.stdin.readline)) is not None:
        reply({"event": "status", **_counts(calls)})
    final = _counts(calls)
    stop.set()
    await asyncio.gather(*holders)
    reply({"event": "stopped", **final})


def _counts(calls: list[StalledCall]) -> dict[str, Any]:
    errors = sorted({call.connect_error for call in calls if call.connect_error})
    return {
        **_tally(calls),
        "by_method": {method.rpartition("/")[2]: _tally([c for c in calls if c.method == method])
                      for method in METHODS},
        "connect_errors": errors[:3],
    }


def _tally(calls: list[StalledCall]) -> dict[str, Any]:
    connected = [call for call in calls if not call.connect_error]
    ended = [call for call in connected if call.ended.is_set()]
    return {
        "calls": len(calls),
        "connect_failed": len(calls) - len(connected),
        "reached_hq": sum(call.reached.is_set() for call in calls),
        "ended_by_hq": len(ended),
        "still_open": len(connected) - len(ended),
        "how_ended": dict(Counter(call.end for call in ended)),
        "slowest_end_s": max((call.ended_after_s for call in ended), default=None),
    }


if __name__ == "__main__":
    asyncio.run(main(read_spec()))
