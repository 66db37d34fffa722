"""The gRPC channel to HQ with its stubs, and the one place a failed call's error is worked
out: a TLS problem is told apart from a lost link here.

With TLS files, the channel is built anew when they changed since it was (a renewed
certificate, a fixed CA file) or when HQ turns out to accept them again after a TLS failure
(the old channel would wait out its reconnection backoff first): a call that failed to
connect was never sent, so it is sent once more on the new channel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc

from storedvalue.v1 import terminal_service_pb2_grpc

from ._config import TerminalConfig
from ._errors import HandshakeFailed, HQUnavailable, TerminalError, error_from_rpc
from ._tls import diagnose_handshake, may_be_tls_failure


@dataclass(frozen=True)
class Wire:
    """The stubs of one channel; `generation` counts the channels built so far."""

    generation: int
    terminal: terminal_service_pb2_grpc.TerminalServiceStub
    health: health_pb2_grpc.HealthStub
    sync_offline_batch: grpc.UnaryUnaryMultiCallable[bytes, bytes]
    """SyncOfflineBatch taking the request already serialized (the sync builds it from the
    outbox's stored transactions, never as a protobuf object) and giving the answer's bytes
    (``_convert.sync_results_from_wire`` reads the usual answer without protobuf objects)."""


class HQChannel:
    """Thread-safe. Building it checks the TLS files (HandshakeFailed when unusable)."""

    def __init__(self, address: str, config: TerminalConfig) -> None:
        self._address = address
        self._config = config
        self._lock = threading.Lock()
        self._retired: list[grpc.Channel] = []
        self.problem: HandshakeFailed | None = None
        """The TLS problem the last attempt to reach HQ ran into; None once one got through."""
        self._channel, self.wire, self._signature = self._open(generation=1)

    def explain(self, failure: grpc.RpcError, wire: Wire) -> tuple[TerminalError, bool]:
        """The typed error of a call made on ``wire`` that failed, and whether to send it
        once more (it failed to connect, and a new channel was built since: the files
        changed, or HQ accepts them now)."""
        error = error_from_rpc(failure)
        if not isinstance(error, HQUnavailable):
            self.reached()  # HQ answered: whatever TLS problem there was is over
            return error, False
        if not may_be_tls_failure(failure):
            return error, False
        tls = self._config.tls
        problem = diagnose_handshake(self._address, tls, self._config.call_timeout_s)
        renewed = False
        if tls is not None:
            with self._lock:
                if wire.generation != self.wire.generation:
                    renewed = True  # another call built a new channel meanwhile
                elif tls.signature() != self._signature or problem is None:
                    try:
                        self._renew()
                    except HandshakeFailed as unusable:  # files being replaced: keep the old
                        problem = problem or unusable
                    else:
                        renewed = True
        if problem is not None:
            self.problem = problem
            return problem, False
        return error, renewed

    def reached(self) -> None:
        """A call or probe got through."""
        if self.problem is not None:
            self.problem = None

    def close(self) -> None:
        with self._lock:
            for channel in (*self._retired, self._channel):
                channel.close()
            self._retired.clear()

    def _renew(self) -> None:
        channel, wire, signature = self._open(generation=self.wire.generation + 1)
        # A call may still be starting on the old channel: it is closed one renewal later.
        self._retired.append(self._channel)
        while len(self._retired) > 1:
            self._retired.pop(0).close()
        self._channel, self.wire, self._signature = channel, wire, signature

    def _open(self, *, generation: int
              ) -> tuple[grpc.Channel, Wire, tuple[tuple[int, int, int], ...]]:
        tls = self._config.tls
        reconnect_ms = int(self._config.probe_max_backoff_s * 1000)
        options: list[tuple[str, Any]] = [
            # Let the channel redial about as often as the probe asks, not gRPC's 2 minutes.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", max(reconnect_ms, 100)),
            # No cap on what HQ answers: the sync agent fills a batch up to HQ's
            # max_message_bytes (8 MiB by default), and the answer can be several times the
            # request (an exception id for each line). Under gRPC's default 4 MiB a batch HQ
            # applied would fail as RESOURCE_EXHAUSTED, and every resend too.
            ("grpc.max_receive_message_length", -1),
        ]
        if tls is None:
            channel = grpc.insecure_channel(self._address, options=options)
            signature: tuple[tuple[int, int, int], ...] = ()
        else:
            signature = tls.signature()  # before reading: a change while reading is seen
            credentials = tls.channel_credentials()
            channel = grpc.secure_channel(self._address, credentials,
                                          options=options + tls.channel_options())
        sync_offline_batch = channel.unary_unary(
            "/storedvalue.v1.TerminalService/SyncOfflineBatch",
            request_serializer=None,  # bytes as they are
            response_deserializer=None,  # bytes as they are
        )
        wire = Wire(generation, terminal_service_pb2_grpc.TerminalServiceStub(channel),
                    health_pb2_grpc.HealthStub(channel), sync_offline_batch)
        return channel, wire, signature
