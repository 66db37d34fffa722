"""The ONLINE/OFFLINE state machine and the background health probe that ends OFFLINE.

A failed call (UNAVAILABLE, deadline) switches to OFFLINE at once; from then on calls do not
touch the network. Only the probe, a standard gRPC health check repeated with capped
exponential backoff, switches back to ONLINE. Every switch is kept in the terminal's link
history before anyone is told of it.

ONLINE means HQ is reachable, not that it accepts this terminal: a TLS handshake HQ refuses
(or a certificate of HQ's this terminal does not trust) is a configuration problem, and a
reason to fix it, not to sell offline. The probe counts such an answer as HQ reachable, and
the calls raise HandshakeFailed, saying what to fix, until it is fixed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from grpc_health.v1 import health_pb2

from ._backoff import Backoff
from ._config import TerminalConfig
from ._errors import HandshakeFailed
from ._hq_channel import HQChannel
from ._link_history import LinkHistory
from ._model import ConnectivityChange, ConnectivityState

_log = logging.getLogger(__name__)

Listener = Callable[[ConnectivityChange], None]


class Connectivity:
    def __init__(
        self,
        *,
        channel: HQChannel,
        metadata: tuple[tuple[str, str], ...],
        config: TerminalConfig,
        history: LinkHistory,
    ) -> None:
        self._channel = channel
        self.history = history
        self._metadata = metadata
        self._config = config
        self._state = ConnectivityState.OFFLINE
        self._changed = threading.Condition()
        self._listeners: list[Listener] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._probe_loop, name="storedvalue-terminal-probe", daemon=True
        )

    @property
    def state(self) -> ConnectivityState:
        return self._state

    @property
    def online(self) -> bool:
        return self._state is ConnectivityState.ONLINE

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every state change; returns a function that unsubscribes."""
        with self._changed:
            self._listeners.append(listener)

        def remove() -> None:
            with self._changed:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def start(self) -> None:
        """Probe once now (so a terminal starts ONLINE when HQ is up), then keep probing in
        the background whenever OFFLINE."""
        if self.probe_once():
            self._switch(ConnectivityState.ONLINE, self._reachable("HQ reachable at start"))
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def report_failure(self, cause: str) -> None:
        """A call found HQ unreachable: go OFFLINE now; the probe takes over."""
        self._switch(ConnectivityState.OFFLINE, cause)

    def wait_for(self, state: ConnectivityState, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._state is state, timeout_s)

    def wait_online(self, stop: threading.Event) -> bool:
        """Block until ONLINE (True) or until ``stop`` is set and ``wake`` called (False)."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._state is ConnectivityState.ONLINE
                    or stop.is_set()
                    or self._stopping.is_set()
                )
            )
            return not (stop.is_set() or self._stopping.is_set())

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def probe_once(self) -> bool:
        """Whether HQ is reachable: its health check answers SERVING, or its TLS handshake
        tells this terminal what to fix (``HQChannel.problem``)."""
        for _attempt in range(2):
            wire = self._channel.wire
            try:
                response = wire.health.Check(
                    health_pb2.HealthCheckRequest(service=self._config.health_service),
                    timeout=self._config.call_timeout_s,
                    metadata=self._metadata,
                )
            except grpc.RpcError as failure:
                error, renewed = self._channel.explain(failure, wire)
                if renewed:
                    continue  # once more, on the channel just built
                return isinstance(error, HandshakeFailed)
            self._channel.reached()
            self.history.note_answer()
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)
        return False

    def _reachable(self, cause: str) -> str:
        problem = self._channel.problem
        return cause if problem is None else f"{cause}, but the TLS handshake failed: {problem}"

    def note_answer(self) -> None:
        """HQ answered a call just now (the offline duration limit counts from the last)."""
        self.history.note_answer()

    def _switch(self, state: ConnectivityState, cause: str) -> None:
        with self._changed:
            if self._state is state or self._stopping.is_set():
                return
            change = ConnectivityChange(
                state=state, previous=self._state, cause=cause, at=datetime.now(UTC)
            )
            self._state = state
            self.history.remember(change)
            self._changed.notify_all()
            listeners = list(self._listeners)
        _log.info("terminal is %s: %s", state.value, cause)
        for listener in listeners:
            try:
                listener(change)
            except Exception:
                _log.exception("connectivity listener failed")
        try:
            self.history.store(change)
        except Exception:  # the switch stands even if the disk refuses the note of it
            _log.exception("could not keep the link switch on disk")

    def _probe_loop(self) -> None:
        backoff = Backoff(
            initial_s=self._config.probe_initial_backoff_s,
            maximum_s=self._config.probe_max_backoff_s,
        )
        while not self._stopping.is_set():
            with self._changed:
                self._changed.wait_for(
                    lambda: self._state is ConnectivityState.OFFLINE or self._stopping.is_set()
                )
            if self._stopping.wait(backoff.next_delay()):
                return
            if self.probe_once():
                backoff.reset()
                self._switch(ConnectivityState.ONLINE,
                             self._reachable("health check answered SERVING"))
