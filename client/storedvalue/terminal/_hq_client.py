"""The gateway to HQ: one typed method per TerminalService RPC the library uses, returning
the library's values and raising its typed errors.

Every unary call carries the terminal's credential and a short deadline, and follows the
connectivity rule: OFFLINE means the call is not even tried; a transient failure means
OFFLINE from now on. A TLS handshake failure is no transient failure: it raises
HandshakeFailed and leaves the terminal as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from storedvalue.v1 import terminal_service_pb2

from . import _convert
from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._errors import HandshakeFailed, HQUnavailable, TerminalError, UnexpectedError
from ._hq_channel import HQChannel, Wire
from ._hq_records import OnlineDebit, StatusReport, SyncItemResult
from ._model import Card, CardKind, Money, Parameters, SaleLine, SyncLimits, Tender

Request = TypeVar("Request")
Response = TypeVar("Response")
pb = terminal_service_pb2


class ParametersStream:
    """An open WatchParameters stream: iterate for new versions; ``cancel`` ends it. A broken
    stream raises the typed error (``code`` tells a transient failure from a cancellation)."""

    def __init__(self, call: grpc.CallIterator[pb.WatchParametersResponse], *,
                 on_message: Callable[[], None],
                 explain: Callable[[grpc.RpcError], TerminalError]) -> None:
        self._call = call
        self._cancel: Callable[[], object] = call.cancel
        self._on_message = on_message
        self._explain = explain

    def cancel(self) -> None:
        self._cancel()

    def __iter__(self) -> Iterator[Parameters]:
        try:
            for message in self._call:
                self._on_message()
                yield _convert.parameters_from_pb(message.parameters)
        except grpc.RpcError as failure:
            raise self._explain(failure) from None


class HQClient:
    def __init__(
        self,
        *,
        channel: HQChannel,
        connectivity: Connectivity,
        metadata: tuple[tuple[str, str], ...],
        config: TerminalConfig,
    ) -> None:
        self._channel = channel
        self._metadata = metadata
        self._connectivity = connectivity
        self._config = config

    # -- cards and locks ------------------------------------------------------------------

    def lock_card(self, *, request_id: str, card_number: str, transaction_id: str) -> Tender:
        response = self._call(
            lambda wire: wire.terminal.LockCard,
            _convert.lock_request(request_id, card_number, transaction_id),
        )
        return _convert.tender_from_pb(transaction_id, card_number, response)

    def unlock_card(self, *, request_id: str, card_number: str, transaction_id: str,
                    fencing_token: int) -> Card:
        response = self._call(
            lambda wire: wire.terminal.UnlockCard,
            _convert.unlock_request(request_id, card_number, transaction_id, fencing_token),
        )
        return _convert.card_from_pb(response.card)

    def redeem(self, *, request_id: str, transaction_id: str, line: SaleLine,
               fencing_token: int) -> OnlineDebit:
        response = self._call(
            lambda wire: wire.terminal.Redeem,
            _convert.redeem_request(request_id, transaction_id, line, fencing_token),
        )
        return _convert.online_debit_from_pb(response)

    def get_card(self, *, card_number: str) -> Card:
        response = self._call(lambda wire: wire.terminal.GetCard,
                              _convert.get_card_request(card_number))
        return _convert.card_from_pb(response.card)

    def issue_card(self, *, request_id: str, kind: CardKind, initial_value: Money,
                   card_number: str, transaction_id: str) -> Card:
        response = self._call(
            lambda wire: wire.terminal.IssueCard,
            _convert.issue_request(request_id, kind, initial_value, card_number, transaction_id),
        )
        return _convert.card_from_pb(response.card)

    def add_value(self, *, request_id: str, card_number: str, amount: Money,
                  transaction_id: str) -> Card:
        response = self._call(
            lambda wire: wire.terminal.AddValue,
            _convert.add_value_request(request_id, card_number, amount, transaction_id),
        )
        return _convert.card_from_pb(response.card)

    # -- offline sync ---------------------------------------------------------------------

    def sync_batch(self, *, request_id: str, payloads: Sequence[bytes]
                   ) -> Sequence[SyncItemResult]:
        """One SyncOfflineBatch of outbox payloads. A transient failure does not switch the
        terminal OFFLINE: the sync agent retries a batch before it concludes the link is
        down (``report_link_down``)."""
        response = self._call(
            lambda wire: wire.sync_offline_batch,
            _convert.sync_batch_request_bytes(request_id, payloads),
            timeout_s=self._config.sync_call_timeout_s,
            report_transient=False,
        )
        try:
            return _convert.sync_results_from_wire(response)
        except DecodeError:
            raise UnexpectedError("HQ's SyncOfflineBatch answer is no SyncOfflineBatchResponse",
                                  code=grpc.StatusCode.INTERNAL) from None

    def report_link_down(self, cause: str) -> None:
        self._connectivity.report_failure(cause)

    # -- parameters -----------------------------------------------------------------------

    def get_parameters(self) -> tuple[Parameters, SyncLimits]:
        response = self._call(lambda wire: wire.terminal.GetParameters,
                              _convert.get_parameters_request())
        return (
            _convert.parameters_from_pb(response.parameters),
            _convert.sync_limits_from_pb(response.sync_limits),
        )

    def watch_parameters(self, *, known_version: int) -> ParametersStream:
        wire = self._channel.wire
        call = wire.terminal.WatchParameters(
            _convert.watch_parameters_request(known_version), metadata=self._metadata
        )

        def explain(failure: grpc.RpcError) -> TerminalError:
            error, renewed = self._channel.explain(failure, wire)
            if renewed:  # no lost link: follow again, on the new channel
                return HQUnavailable("the channel to HQ was built anew", request_sent=False,
                                     code=None)
            return error

        return ParametersStream(call, on_message=self._connectivity.note_answer,
                                explain=explain)

    # -- status ---------------------------------------------------------------------------

    def report_status(self, report: StatusReport) -> None:
        """ReportTerminalStatus: the link history and what the outbox holds."""
        self._call(lambda wire: wire.terminal.ReportTerminalStatus,
                   _convert.status_report_request(report))

    # -- plumbing -------------------------------------------------------------------------

    def _call(
        self,
        rpc: Callable[[Wire], grpc.UnaryUnaryMultiCallable[Request, Response]],
        request: Request,
        *,
        timeout_s: float | None = None,
        report_transient: bool = True,
    ) -> Response:
        """Send one request; raise the typed error on failure.

        Raises HQUnavailable without sending while OFFLINE (``request_sent`` False), and after
        a timeout or an unreachable HQ (``request_sent`` True: the outcome is unknown). That
        failure switches the terminal OFFLINE unless ``report_transient`` is False. A call
        that failed to connect and finds a new channel built since is sent once more.
        """
        if not self._connectivity.online:
            raise HQUnavailable("terminal is OFFLINE; HQ not called", request_sent=False, code=None)
        timeout = timeout_s if timeout_s is not None else self._config.call_timeout_s
        send_again = True
        while True:
            wire = self._channel.wire
            try:
                response = rpc(wire)(request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as failure:
                error, renewed = self._channel.explain(failure, wire)
                if renewed and send_again:
                    send_again = False
                    continue
                if isinstance(error, HQUnavailable) and report_transient:
                    self._connectivity.report_failure(
                        f"call failed: {error.code.name if error.code else 'unknown'}"
                    )
                if not isinstance(error, HQUnavailable | HandshakeFailed):
                    self._connectivity.note_answer()  # a refusal is an answer too
                raise error from None
            self._channel.reached()
            self._connectivity.note_answer()
            return response
