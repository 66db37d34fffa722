"""Unary calls to HQ with the terminal's credential, a short deadline, typed errors, and the
connectivity rule: OFFLINE means the call is not even tried; a transient failure means
OFFLINE from now on."""

from __future__ import annotations

from typing import TypeVar

import grpc

from storedvalue.v1 import terminal_service_pb2_grpc

from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._errors import HQUnavailable, error_from_rpc

Request = TypeVar("Request")
Response = TypeVar("Response")


class HQClient:
    def __init__(
        self,
        *,
        channel: grpc.Channel,
        connectivity: Connectivity,
        metadata: tuple[tuple[str, str], ...],
        config: TerminalConfig,
    ) -> None:
        self.stub = terminal_service_pb2_grpc.TerminalServiceStub(channel)
        self.metadata = metadata
        self._connectivity = connectivity
        self._config = config

    def call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        *,
        timeout_s: float | None = None,
        report_transient: bool = True,
    ) -> Response:
        """Send one request; raise the typed error on failure.

        Raises HQUnavailable without sending while OFFLINE (``request_sent`` False), and after
        a timeout or an unreachable HQ (``request_sent`` True: the outcome is unknown). That
        failure switches the terminal OFFLINE unless ``report_transient`` is False (the sync
        agent retries a batch a few times before it concludes the link is down).
        """
        if not self._connectivity.online:
            raise HQUnavailable("terminal is OFFLINE; HQ not called", request_sent=False, code=None)
        try:
            return rpc(
                request,
                timeout=timeout_s if timeout_s is not None else self._config.call_timeout_s,
                metadata=self.metadata,
            )
        except grpc.RpcError as failure:
            error = error_from_rpc(failure)
            if isinstance(error, HQUnavailable) and report_transient:
                self._connectivity.report_failure(
                    f"call failed: {error.code.name if error.code else 'unknown'}"
                )
            raise error from None
