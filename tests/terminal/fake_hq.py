"""An in-process fake HQ: a real gRPC server on port 0 with in-memory TerminalService
behaviour, the standard health service, and switches to break the link on purpose.

It speaks the contract as the real HQ does (bearer credential, request ids, one ErrorInfo per
error, per-item sync outcomes), so the real `storedvalue.hq` server can replace it later.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf import duration_pb2, message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from storedvalue.hq.domain.cards import luhn_check_digit
from storedvalue.v1 import (
    common_pb2,
    parameters_pb2,
    terminal_service_pb2_grpc,
)
from storedvalue.v1 import (
    terminal_service_pb2 as pb,
)

from .fake_hq_offline import apply_offline_transaction
from .fake_hq_state import (
    FakeCard,
    FakeLock,
    HQError,
    HQState,
    abort,
    lock_pb,
    now_pb,
)

__all__ = ["FakeHQ", "HQState", "luhn_check_digit"]


class _Link(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """The wire between terminals and HQ: when down, every call fails UNAVAILABLE."""

    def __init__(self) -> None:
        self.up = True

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        handler = continuation(handler_call_details)
        if self.up or handler is None:
            return handler

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAVAILABLE, "link down (fake HQ)")

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class FakeTerminalService(terminal_service_pb2_grpc.TerminalServiceServicer):
    def __init__(self, state: HQState, link: _Link, stopping: threading.Event) -> None:
        self.state = state
        self._link = link
        self._stopping = stopping

    # -- plumbing -----------------------------------------------------------------------

    def _terminal(self, context: grpc.ServicerContext) -> str:
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                terminal = self.state.credentials.get(value.removeprefix("Bearer "))
                if terminal is not None:
                    return terminal
        abort(context, HQError("UNAUTHENTICATED"))
        raise AssertionError("unreachable")

    def _idempotent(
        self,
        context: grpc.ServicerContext,
        request: Any,
        response_type: type[message.Message],
        apply: Callable[[str], message.Message],
    ) -> Any:
        terminal = self._terminal(context)
        key = (terminal, request.request_id)
        body = request.SerializeToString(deterministic=True)
        with self.state.mutex:
            try:
                if key in self.state.requests:
                    first_body, first_response = self.state.requests[key]
                    if first_body != body:
                        raise HQError("REQUEST_ID_REUSED", request_id=request.request_id)
                    return response_type.FromString(first_response)
                response = apply(terminal)
                self.state.requests[key] = (body, response.SerializeToString())
                return response
            except HQError as error:
                abort(context, error)

    def _card(self, number: str) -> FakeCard:
        card = self.state.cards.get(number)
        if card is None:
            raise HQError("CARD_NOT_FOUND", card=number[-4:])
        return card

    # -- cards and locks ----------------------------------------------------------------

    def LockCard(self, request: pb.LockCardRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.state.mutex:
            step = self.state.lock_script.pop(0) if self.state.lock_script else "normal"

        def apply(terminal: str) -> pb.LockCardResponse:
            card = self._card(request.card_number)
            if card.status == common_pb2.CARD_STATUS_FLAGGED:
                raise HQError("CARD_FLAGGED", card=card.number[-4:])
            if card.status == common_pb2.CARD_STATUS_REDEEMED:
                raise HQError("CARD_REDEEMED", card=card.number[-4:])
            lease = datetime.now(UTC) + self.state.parameters.lock_lease.ToTimedelta()
            live = card.live_lock()
            if live is not None and (live.terminal_id, live.transaction_id) != (
                terminal,
                request.transaction_id,
            ):
                raise HQError(
                    "CARD_LOCKED",
                    card=card.number[-4:],
                    holder_terminal_id=live.terminal_id,
                    holder_transaction_id=live.transaction_id,
                    lease_expires_at=live.lease_expires_at.isoformat().replace("+00:00", "Z"),
                )
            if live is None:
                card.last_token += 1
                card.lock = FakeLock(terminal, request.transaction_id, card.last_token, lease)
            else:
                live.lease_expires_at = lease
            assert card.lock is not None
            return pb.LockCardResponse(lock=lock_pb(card.number, card.lock), card=card.to_pb())

        response = self._idempotent(context, request, pb.LockCardResponse, apply)
        if step == "cut_link_after":
            self._link.up = False
            context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost (fake HQ)")
        return response

    def UnlockCard(self, request: pb.UnlockCardRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.state.mutex:
            step = self.state.unlock_script.pop(0) if self.state.unlock_script else "normal"
        if step != "normal":
            abort(context, HQError(step))

        def apply(terminal: str) -> pb.UnlockCardResponse:
            card = self._card(request.card_number)
            held = card.lock
            mine = held is not None and (held.terminal_id, held.transaction_id) == (
                terminal,
                request.transaction_id,
            )
            # As the real HQ: token 0 releases whatever lock this terminal holds for the sale
            # (its LockCard answer was lost); any other token must be the current one.
            if request.fencing_token != 0:
                live = card.live_lock()
                mine = live is not None and mine and live.fencing_token == request.fencing_token
            if not mine:
                raise HQError("LOCK_NOT_HELD", card=card.number[-4:])
            card.lock = None
            return pb.UnlockCardResponse(card=card.to_pb())

        return self._idempotent(context, request, pb.UnlockCardResponse, apply)

    def Redeem(self, request: pb.RedeemRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.state.mutex:
            self.state.redeem_calls += 1
            step = self.state.redeem_script.pop(0) if self.state.redeem_script else "normal"
        if step == "cut_link_before":
            self._link.up = False
            context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped (fake HQ)")
        if step == "black_hole":
            self._link.up = False
            time.sleep(context.time_remaining() + 0.05)
            context.abort(grpc.StatusCode.UNAVAILABLE, "too late")
        if step.isupper():
            abort(context, HQError(step))

        def apply(terminal: str) -> pb.RedeemResponse:
            card = self._card(request.card_number)
            live = card.live_lock()
            if live is None or (live.terminal_id, live.transaction_id, live.fencing_token) != (
                terminal,
                request.transaction_id,
                request.fencing_token,
            ):
                raise HQError("LOCK_NOT_HELD", card=card.number[-4:])
            if request.amount.currency_code != card.currency:
                raise HQError("CURRENCY_MISMATCH", card_currency=card.currency)
            if request.amount.amount_minor <= 0:
                raise HQError("INVALID_AMOUNT", field="amount")
            if request.amount.amount_minor > card.balance:
                raise HQError(
                    "INSUFFICIENT_FUNDS",
                    balance_minor=str(card.balance),
                    requested_minor=str(request.amount.amount_minor),
                )
            card.balance -= request.amount.amount_minor
            card.lock = None
            key = (terminal, request.transaction_id, request.line_id)
            self.state.online_redeemed[key] = request.amount.amount_minor
            return pb.RedeemResponse(card=card.to_pb(), debited=request.amount)

        response = self._idempotent(context, request, pb.RedeemResponse, apply)
        if step == "cut_link_after":
            self._link.up = False
            context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost (fake HQ)")
        return response

    def GetCard(self, request: pb.GetCardRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        self._terminal(context)
        with self.state.mutex:
            try:
                return pb.GetCardResponse(card=self._card(request.card_number).to_pb())
            except HQError as error:
                abort(context, error)

    def IssueCard(self, request: pb.IssueCardRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def apply(terminal: str) -> pb.IssueCardResponse:
            if request.initial_value.amount_minor <= 0:
                raise HQError("INVALID_AMOUNT", field="initial_value")
            number = request.card_number or self.new_card_number()
            if number in self.state.cards:
                raise HQError("CARD_ALREADY_EXISTS", card=number[-4:])
            card = FakeCard(
                number,
                request.kind,
                request.initial_value.amount_minor,
                request.initial_value.currency_code,
            )
            self.state.cards[number] = card
            return pb.IssueCardResponse(card=card.to_pb())

        return self._idempotent(context, request, pb.IssueCardResponse, apply)

    def AddValue(self, request: pb.AddValueRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        def apply(terminal: str) -> pb.AddValueResponse:
            card = self._card(request.card_number)
            if card.kind != common_pb2.CARD_KIND_GIFT_CARD:
                raise HQError("CARD_KIND_NOT_SUPPORTED", card=card.number[-4:])
            if request.amount.currency_code != card.currency:
                raise HQError("CURRENCY_MISMATCH", card_currency=card.currency)
            card.balance += request.amount.amount_minor
            return pb.AddValueResponse(card=card.to_pb())

        return self._idempotent(context, request, pb.AddValueResponse, apply)

    def new_card_number(self) -> str:
        self.state.next_card += 1
        body = f"9{self.state.next_card:014d}"
        return body + luhn_check_digit(body)

    # -- offline sync -------------------------------------------------------------------

    def CompleteOffline(  # noqa: N802
        self, request: pb.CompleteOfflineRequest, context: grpc.ServicerContext
    ) -> Any:
        terminal = self._terminal(context)
        with self.state.mutex:
            result = apply_offline_transaction(self.state, terminal, request.transaction)
        return pb.CompleteOfflineResponse(result=result)

    def SyncOfflineBatch(  # noqa: N802
        self, request: pb.SyncOfflineBatchRequest, context: grpc.ServicerContext
    ) -> Any:
        terminal = self._terminal(context)
        with self.state.mutex:
            self.state.sync_calls += 1
            if self.state.sync_failures:
                context.abort(self.state.sync_failures.pop(0), "injected sync failure")
            limit = self.state.limits.max_transactions_per_batch
            if len(request.transactions) > limit:
                count = str(len(request.transactions))
                abort(context, HQError("LIMIT_EXCEEDED", limit=str(limit), value=count))
            self.state.sync_batch_sizes.append(len(request.transactions))
            results = [
                apply_offline_transaction(self.state, terminal, item)
                for item in request.transactions
            ]
            if self.state.sync_answers_to_drop:
                self.state.sync_answers_to_drop -= 1
                context.abort(grpc.StatusCode.UNAVAILABLE, "answer lost after commit (fake HQ)")
        return pb.SyncOfflineBatchResponse(results=results)

    # -- parameters ---------------------------------------------------------------------

    def GetParameters(  # noqa: N802
        self, request: pb.GetParametersRequest, context: grpc.ServicerContext
    ) -> Any:
        self._terminal(context)
        with self.state.mutex:
            return pb.GetParametersResponse(
                parameters=self.state.parameters, sync_limits=self.state.limits
            )

    def WatchParameters(  # noqa: N802
        self, request: pb.WatchParametersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchParametersResponse]:
        self._terminal(context)
        known = [request.known_version]
        while context.is_active() and not self._stopping.is_set():
            if not self._link.up:
                context.abort(grpc.StatusCode.UNAVAILABLE, "link down (fake HQ)")
            with self.state.mutex:
                self.state.mutex.wait_for(
                    lambda: self.state.parameters.version > known[0] or self._stopping.is_set(),
                    timeout=0.05,
                )
                current = parameters_pb2.Parameters()
                current.CopyFrom(self.state.parameters)
            if current.version > known[0]:
                known[0] = current.version
                yield pb.WatchParametersResponse(parameters=current)


class FakeHQ:
    """Start with ``FakeHQ()``; ``address`` is what a Terminal connects to."""

    def __init__(self) -> None:
        self.state = HQState()
        self.link = _Link()
        self._stopping = threading.Event()
        self._server: grpc.Server | None = None
        self.port = 0
        self.set_parameters(gift_card=True, credit_memo=True)
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start serving (again, on the same port after ``stop``)."""
        self._stopping.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), interceptors=[self.link])
        terminal_service_pb2_grpc.add_TerminalServiceServicer_to_server(
            FakeTerminalService(self.state, self.link, self._stopping), server
        )
        health_servicer = health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert self.port
        server.start()
        self._server = server

    def stop(self) -> None:
        self._stopping.set()
        with self.state.mutex:
            self.state.mutex.notify_all()
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def add_terminal(self, terminal_id: str, token: str) -> None:
        self.state.credentials[token] = terminal_id

    def add_card(
        self,
        number: str,
        *,
        balance: int,
        currency: str = "EUR",
        kind: int = common_pb2.CARD_KIND_GIFT_CARD,
    ) -> None:
        with self.state.mutex:
            self.state.cards[number] = FakeCard(number, kind, balance, currency)

    def card(self, number: str) -> FakeCard:
        with self.state.mutex:
            return self.state.cards[number]

    def set_parameters(self, *, gift_card: bool, credit_memo: bool) -> int:
        with self.state.mutex:
            version = self.state.parameters.version + 1
            self.state.parameters = parameters_pb2.Parameters(
                version=version,
                gift_card_offline_completion_allowed=gift_card,
                credit_memo_offline_completion_allowed=credit_memo,
                lock_lease=duration_pb2.Duration(seconds=int(timedelta(hours=4).total_seconds())),
                updated_at=now_pb(),
                updated_by="test",
            )
            self.state.mutex.notify_all()
            return version
