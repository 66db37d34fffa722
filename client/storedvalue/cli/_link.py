"""The network link between a till and HQ: a loopback TCP relay that can be broken, used by
``storedvalue demo`` and by the end-to-end tests.

It listens on 127.0.0.1 (port 0) and forwards every connection to HQ byte for byte, until
someone breaks the link in one of the ways a store's link really breaks:

- ``black_hole()``: connections are accepted and kept, but nothing is forwarded either way
  (a dead router: calls hang until their deadline);
- ``reset()``: every open connection and every new one is reset (TCP RST, SO_LINGER 0);
- ``drop_answers_after(marker)``: client bytes still reach HQ, but from the moment a request
  carrying ``marker`` was forwarded no answer comes back (HQ committed, the till never hears).

``pass_through()`` restores the link. A connection that lost bytes while the link was broken
is no longer a valid HTTP/2 stream, so it is reset then: the client redials, as it would after
a real outage.

One thread accepts; one thread per connection shuttles both directions with ``select``, so a
socket is only ever used and closed by the thread that owns it.
"""

from __future__ import annotations

import contextlib
import enum
import select
import socket
import struct
import threading
from types import TracebackType

_POLL_S = 0.02
_CHUNK = 65536


class LinkMode(enum.Enum):
    UP = "up"
    BLACK_HOLE = "black hole"
    RESET = "reset"
    DROP_ANSWERS = "drop answers"


def _reset_and_close(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the peer sees ECONNRESET at once."""
    with contextlib.suppress(OSError):  # already closed by the peer: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Connection:
    """One client connection and its upstream twin, owned by one thread."""

    def __init__(self, link: Link, client: socket.socket, upstream: socket.socket | None
                 ) -> None:
        self.link = link
        self.client = client
        self.upstream = upstream
        self.faulted = upstream is None
        """Bytes were lost on this connection: it never forwards again."""
        self.command: str | None = None  # "reset" or "close", set by the link
        self.tail = b""  # end of the previous client chunk, to find a marker split in two
        self.thread = threading.Thread(target=self._run, name="link-relay", daemon=True)

    def _run(self) -> None:
        sockets = [s for s in (self.client, self.upstream) if s is not None]
        try:
            while self.command is None and self._shuttle(sockets):
                pass
        finally:
            for sock in sockets:
                if self.command == "reset":
                    _reset_and_close(sock)
                else:
                    sock.close()
            self.link.forget(self)

    def _shuttle(self, sockets: list[socket.socket]) -> bool:
        """Move what is readable now; False when either side has gone."""
        try:
            readable, _, _ = select.select(sockets, [], [], _POLL_S)
            for sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    return False
                upward = sock is self.client
                if self.link.should_forward(self, data, upward=upward):
                    target = self.upstream if upward else self.client
                    assert target is not None
                    target.sendall(data)
        except OSError:
            return False
        return True


class Link:
    """A TCP relay from ``address`` to ``upstream`` ("HOST:PORT") that can be broken."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._mode = LinkMode.UP
        self._marker = b""
        self._answers_dropped = threading.Event()
        self._connections: set[_Connection] = set()
        self._closing = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="link-accept",
                                          daemon=True)
        self._acceptor.start()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # -- faults -------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Restore the link; connections that lost bytes are reset so clients redial."""
        with self._lock:
            self._mode = LinkMode.UP
            broken = [connection for connection in self._connections if connection.faulted]
            for connection in broken:
                connection.command = "reset"
        self._wait_for(broken)

    def black_hole(self) -> None:
        with self._lock:
            self._mode = LinkMode.BLACK_HOLE

    def reset(self) -> None:
        with self._lock:
            self._mode = LinkMode.RESET
            connections = list(self._connections)
            for connection in connections:
                connection.command = "reset"
        self._wait_for(connections)

    def drop_answers_after(self, marker: bytes) -> threading.Event:
        """Forward requests, and drop every answer once a request containing ``marker`` went
        up to HQ. The returned event is set at that moment."""
        if not marker:
            raise ValueError("the marker must not be empty")
        with self._lock:
            self._mode = LinkMode.DROP_ANSWERS
            self._marker = marker
            self._answers_dropped.clear()
            return self._answers_dropped

    # -- plumbing -----------------------------------------------------------------------

    def should_forward(self, connection: _Connection, data: bytes, *, upward: bool) -> bool:
        with self._lock:
            if connection.faulted:
                return False
            mode = self._mode
            if mode is LinkMode.UP:
                return True
            if mode is LinkMode.DROP_ANSWERS:
                if upward:
                    seen = connection.tail + data
                    keep = len(self._marker) - 1
                    connection.tail = seen[-keep:] if keep else b""
                    if self._marker in seen:
                        self._answers_dropped.set()
                    return True
                if not self._answers_dropped.is_set():
                    return True
            connection.faulted = True
            return False

    def forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            readable, _, _ = select.select([self._listener], [], [], _POLL_S)
            if not readable:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            client.setblocking(True)
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            mode = self._mode
        if mode is LinkMode.RESET:
            _reset_and_close(client)
            return
        upstream: socket.socket | None = None
        if mode is not LinkMode.BLACK_HOLE:
            try:
                upstream = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _reset_and_close(client)  # HQ itself is down: the client sees a refusal
                return
            upstream.settimeout(None)
        connection = _Connection(self, client, upstream)
        with self._lock:
            if self._closing.is_set():
                connection.command = "close"
            self._connections.add(connection)
        connection.thread.start()

    @staticmethod
    def _wait_for(connections: list[_Connection]) -> None:
        """Return once these connections' threads sent their RST (or FIN) and ended."""
        for connection in connections:
            connection.thread.join()

    def close(self) -> None:
        """Stop accepting, close every connection, and wait for the threads."""
        self._closing.set()
        if self._acceptor.is_alive():
            self._acceptor.join()
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
            for connection in connections:
                connection.command = connection.command or "close"
        self._wait_for(connections)
