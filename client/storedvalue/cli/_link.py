"""The demo's network link between one till and HQ: a loopback TCP relay it can cut.

``cut()`` resets every open connection (TCP RST) and every new one, like a store whose line
went dead; ``restore()`` relays again. One thread accepts; one thread per connection relays
both directions and is the only one that touches its sockets.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from types import TracebackType

_POLL_S = 0.02


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer: nothing to reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Relay:
    def __init__(self, link: Link, client: socket.socket, upstream: socket.socket) -> None:
        self.link = link
        self.sockets = (client, upstream)
        self.stop: str | None = None  # "reset" or "close"
        self.thread = threading.Thread(target=self._run, name="demo-link-relay", daemon=True)

    def _run(self) -> None:
        client, upstream = self.sockets
        try:
            while self.stop is None:
                readable, _, _ = select.select(self.sockets, [], [], _POLL_S)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in self.sockets:
                if self.stop == "reset":
                    _reset(sock)
                else:
                    sock.close()
            self.link.forget(self)


class Link:
    """Relays 127.0.0.1:``port`` to ``upstream`` ("HOST:PORT") until cut."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._mutex = threading.Lock()
        self._up = True
        self._relays: set[_Relay] = set()
        self._closing = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="demo-link-accept",
                                          daemon=True)
        self._acceptor.start()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    @property
    def up(self) -> bool:
        return self._up

    def cut(self) -> None:
        """Reset every connection; returns once none can relay another byte."""
        with self._mutex:
            self._up = False
            relays = list(self._relays)
            for relay in relays:
                relay.stop = "reset"
        for relay in relays:
            relay.thread.join()

    def restore(self) -> None:
        with self._mutex:
            self._up = True

    def forget(self, relay: _Relay) -> None:
        with self._mutex:
            self._relays.discard(relay)

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            readable, _, _ = select.select([self._listener], [], [], _POLL_S)
            if not readable:
                continue
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        if not self._up:
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        relay = _Relay(self, client, upstream)
        with self._mutex:
            if self._closing.is_set() or not self._up:
                relay.stop = "reset"
            self._relays.add(relay)
        relay.thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._acceptor.is_alive():
            self._acceptor.join()
        self._listener.close()
        with self._mutex:
            relays = list(self._relays)
            for relay in relays:
                relay.stop = relay.stop or "close"
        for relay in relays:
            relay.thread.join()
