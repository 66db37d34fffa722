"""HQ parameters on the terminal: the last version kept on disk (needed exactly when
offline), refreshed on (re)connection and followed through WatchParameters while online."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from storedvalue.v1 import parameters_pb2, terminal_service_pb2

from ._backoff import Backoff
from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._convert import parameters_from_pb, sync_limits_from_pb
from ._database import Database
from ._errors import TRANSIENT_CODES, rpc_code
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
            self._parameters = parameters_from_pb(parameters_pb2.Parameters.FromString(row[0]))
            if row[1] is not None:
                self._limits = sync_limits_from_pb(parameters_pb2.SyncLimits.FromString(row[1]))

    @property
    def current(self) -> Parameters:
        return self._parameters

    @property
    def sync_limits(self) -> SyncLimits | None:
        return self._limits

    def add_listener(self, listener: Callable[[Parameters], None]) -> None:
        with self._changed:
            self._listeners.append(listener)

    def save(
        self, parameters: parameters_pb2.Parameters, limits: parameters_pb2.SyncLimits | None
    ) -> None:
        """Keep ``parameters`` if not older than the cached version (a GetParameters answer
        and the stream may cross); ``limits`` always replace the cached ones."""
        with self._changed:
            newer = parameters.version > self._parameters.version
            if not newer and limits is None:
                return
            with self._db.write() as conn:
                if newer:
                    conn.execute(
                        "INSERT INTO parameters (id, version, parameters) VALUES (1, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET version = excluded.version, "
                        "parameters = excluded.parameters",
                        (parameters.version, parameters.SerializeToString()),
                    )
                if limits is not None:
                    conn.execute(
                        "UPDATE parameters SET sync_limits = ? WHERE id = 1",
                        (limits.SerializeToString(),),
                    )
            if limits is not None:
                self._limits = sync_limits_from_pb(limits)
            if not newer:
                return
            self._parameters = parameters_from_pb(parameters)
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
        response = self._hq.call(
            self._hq.stub.GetParameters, terminal_service_pb2.GetParametersRequest()
        )
        self._cache.save(response.parameters, response.sync_limits)

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
            request = terminal_service_pb2.WatchParametersRequest(
                known_version=self._cache.current.version
            )
            stream = self._hq.stub.WatchParameters(request, metadata=self._hq.metadata)
            with self._mutex:
                self._cancel = stream.cancel
            if self._stopping.is_set() or not self._connectivity.online:
                self._cancel_stream()
            try:
                for message in stream:
                    backoff.reset()
                    self._cache.save(message.parameters, None)
            except grpc.RpcError as failure:
                code = rpc_code(failure)
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
