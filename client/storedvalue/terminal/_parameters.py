"""HQ parameters on the terminal: the last version kept on disk (needed exactly when
offline), refreshed on (re)connection and followed through WatchParameters while online."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from . import _convert
from ._backoff import Backoff
from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._database import Database
from ._errors import TRANSIENT_CODES, TerminalError
from ._hq_client import HQClient
from ._model import NO_PARAMETERS, ConnectivityChange, ConnectivityState, Parameters, SyncLimits

_log = logging.getLogger(__name__)


class ParametersCache:
    """The parameters the terminal applies, durable in its SQLite file."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._changed = threading.Condition()
        self._listeners: list[Callable[[Parameters], None]] = []
        self._parameters = NO_PARAMETERS
        self._limits: SyncLimits | None = None
        with database.read() as conn:
            row = conn.execute(
                "SELECT parameters, sync_limits FROM parameters WHERE id = 1"
            ).fetchone()
        if row is not None:
            self._parameters = _convert.parameters_from_bytes(row[0])
            if row[1] is not None:
                self._limits = _convert.sync_limits_from_bytes(row[1])

    @property
    def current(self) -> Parameters:
        return self._parameters

    @property
    def sync_limits(self) -> SyncLimits | None:
        return self._limits

    def add_listener(self, listener: Callable[[Parameters], None]) -> None:
        with self._changed:
            self._listeners.append(listener)

    def save(self, parameters: Parameters, limits: SyncLimits | None) -> None:
        """Keep ``parameters`` if newer than the cached version (a GetParameters answer and
        the stream may cross) or for another store (the terminal was moved: the new store's
        versions may be lower); ``limits`` always replace the cached ones."""
        with self._changed:
            cached = self._parameters
            newer = parameters.version > cached.version or (
                parameters.store_id != cached.store_id and parameters.version > 0
            )
            if not newer and limits is None:
                return
            with self._db.write() as conn:
                if newer:
                    conn.execute(
                        "INSERT INTO parameters (id, version, parameters) VALUES (1, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                        "parameters = excluded.parameters",
                        (parameters.version, _convert.parameters_to_bytes(parameters)),
                    )
                if limits is not None:
                    conn.execute(
                        "UPDATE parameters SET sync_limits = ? WHERE id = 1",
                        (_convert.sync_limits_to_bytes(limits),),
                    )
            if limits is not None:
                self._limits = limits
            if not newer:
                return
            self._parameters = parameters
            self._changed.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self._parameters)
            except Exception:
                _log.exception("parameters listener failed")

    def wait_for_version(self, version: int, timeout_s: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._parameters.version >= version, timeout_s)

    def wait_for(self, condition: Callable[[Parameters], bool], timeout_s: float) -> bool:
        """Wait until the applied parameters satisfy ``condition``."""
        with self._changed:
            return self._changed.wait_for(lambda: condition(self._parameters), timeout_s)


class ParametersFollower:
    """Refreshes the cache on (re)connection and follows WatchParameters while ONLINE."""

    def __init__(
        self,
        *,
        hq: HQClient,
        connectivity: Connectivity,
        cache: ParametersCache,
        config: TerminalConfig,
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._cache = cache
        self._config = config
        self._stopping = threading.Event()
        self._mutex = threading.Lock()
        self._cancel: Callable[[], object] | None = None
        self._thread = threading.Thread(
            target=self._watch_loop, name="storedvalue-terminal-parameters", daemon=True
        )

    def refresh(self) -> None:
        """GetParameters now; a failure is left to the connectivity machine."""
        self._cache.save(*self._hq.get_parameters())

    def on_connectivity(self, change: ConnectivityChange) -> None:
        if change.state is ConnectivityState.OFFLINE:
            self._cancel_stream()

    def start(self) -> None:
        if self._config.watch_parameters:
            self._thread.start()

    def stop(self, *, timeout_s: float) -> bool:
        """Stop following; True when the thread ended within ``timeout_s``. (A stream caught
        in an HQ restart may ignore its cancellation; closing the channel then ends it.)"""
        self._stopping.set()
        self._cancel_stream()
        self._connectivity.wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def _cancel_stream(self) -> None:
        with self._mutex:
            if self._cancel is not None:
                self._cancel()

    def _watch_loop(self) -> None:
        backoff = Backoff(initial_s=0.1, maximum_s=self._config.probe_max_backoff_s)
        while self._connectivity.wait_online(self._stopping):
            stream = self._hq.watch_parameters(known_version=self._cache.current.version)
            with self._mutex:
                self._cancel = stream.cancel
            if self._stopping.is_set() or not self._connectivity.online:
                self._cancel_stream()
            try:
                for parameters in stream:
                    backoff.reset()
                    self._cache.save(parameters, None)
            except TerminalError as failure:
                code = failure.code
                if code in TRANSIENT_CODES:
                    self._connectivity.report_failure("parameters stream broke")
                elif code is not grpc.StatusCode.CANCELLED:
                    _log.warning("parameters stream failed: %s", failure)
            finally:
                with self._mutex:
                    self._cancel = None
            # Stream over (HQ closed it, or it failed): wait a little before following again.
            if self._stopping.wait(backoff.next_delay()):
                return
