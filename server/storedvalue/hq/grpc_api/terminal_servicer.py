"""TerminalService: what tills call. Translation only: authenticate, convert, call a service,
convert back. Every rule lives in the services and the domain."""

# ruff: noqa: N802 - method names are the contract's RPC names

from __future__ import annotations

from collections.abc import Iterator

import grpc

from storedvalue.hq.domain.errors import InvalidField, LimitExceeded
from storedvalue.hq.grpc_api.call_context import (
    authorization,
    client_certificate_names,
    request_key,
)
from storedvalue.hq.grpc_api.card_views import fill_card, fill_lock
from storedvalue.hq.grpc_api.convert import (
    card_kind_from_proto,
    card_to_proto,
    fill_offline_result,
    money_from_proto,
    offline_result_to_proto,
    offline_transaction_from_proto,
    parameters_to_proto,
    sync_limits_to_proto,
    sync_status_to_proto,
)
from storedvalue.hq.grpc_api.errors import streaming_rpc, unary_rpc
from storedvalue.hq.services.auth import Authenticator, Caller
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.v1 import terminal_service_pb2 as pb
from storedvalue.v1 import terminal_service_pb2_grpc as pb_grpc

Context = grpc.ServicerContext


class TerminalServicer(pb_grpc.TerminalServiceServicer):
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        cards: CardService,
        offline: OfflineService,
        parameters: ParametersService,
        watch_poll_seconds: float = 1.0,
    ) -> None:
        self._auth = authenticator
        self._cards = cards
        self._offline = offline
        self._parameters = parameters
        self._watch_poll_seconds = watch_poll_seconds

    def _terminal(self, context: Context) -> Caller:
        auth = self._auth
        names = client_certificate_names(context) if auth.binds_client_certificates else ()
        return auth.terminal(authorization(context), certificate_names=names)

    # -- online card use ------------------------------------------------------------------

    @unary_rpc
    def LockCard(self, request: pb.LockCardRequest, context: Context) -> pb.LockCardResponse:
        caller = self._terminal(context)
        result = self._cards.lock_card(
            key=request_key(caller, request, "LockCard"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            transaction_id=request.transaction_id,
        )
        response = pb.LockCardResponse()
        fill_lock(response.lock, result.lock)
        fill_card(response.card, result.card)
        return response

    @unary_rpc
    def UnlockCard(self, request: pb.UnlockCardRequest, context: Context
                   ) -> pb.UnlockCardResponse:
        caller = self._terminal(context)
        card = self._cards.unlock_card(
            key=request_key(caller, request, "UnlockCard"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            transaction_id=request.transaction_id,
            fencing_token=request.fencing_token,
        )
        return pb.UnlockCardResponse(card=card_to_proto(card))

    @unary_rpc
    def Redeem(self, request: pb.RedeemRequest, context: Context) -> pb.RedeemResponse:
        caller = self._terminal(context)
        result = self._cards.redeem(
            key=request_key(caller, request, "Redeem"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            transaction_id=request.transaction_id,
            line_id=request.line_id,
            fencing_token=request.fencing_token,
            amount=money_from_proto(request.amount) if request.HasField("amount") else None,
        )
        response = pb.RedeemResponse()
        fill_card(response.card, result.card)
        debited = response.debited
        debited.amount_minor = result.debited.amount_minor
        debited.currency_code = result.debited.currency
        if result.remainder_credit_memo is not None:
            fill_card(response.remainder_credit_memo, result.remainder_credit_memo)
        return response

    @unary_rpc
    def GetCard(self, request: pb.GetCardRequest, context: Context) -> pb.GetCardResponse:
        caller = self._terminal(context)
        card = self._cards.get_card(caller=caller.terminal_id, card_number=request.card_number)
        return pb.GetCardResponse(card=card_to_proto(card))

    @unary_rpc
    def IssueCard(self, request: pb.IssueCardRequest, context: Context) -> pb.IssueCardResponse:
        caller = self._terminal(context)
        card = self._cards.issue_card(
            key=request_key(caller, request, "IssueCard"),
            terminal_id=caller.terminal_id,
            kind=card_kind_from_proto(request.kind),
            initial_value=(
                money_from_proto(request.initial_value)
                if request.HasField("initial_value")
                else None
            ),
            card_number=request.card_number,
            transaction_id=request.transaction_id,
        )
        return pb.IssueCardResponse(card=card_to_proto(card))

    @unary_rpc
    def AddValue(self, request: pb.AddValueRequest, context: Context) -> pb.AddValueResponse:
        caller = self._terminal(context)
        card = self._cards.add_value(
            key=request_key(caller, request, "AddValue"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            amount=money_from_proto(request.amount) if request.HasField("amount") else None,
            transaction_id=request.transaction_id,
        )
        return pb.AddValueResponse(card=card_to_proto(card))

    # -- offline sync ---------------------------------------------------------------------

    @unary_rpc
    def CompleteOffline(self, request: pb.CompleteOfflineRequest, context: Context
                        ) -> pb.CompleteOfflineResponse:
        caller = self._terminal(context)
        self._check_message_size(request.ByteSize())
        if not request.HasField("transaction"):
            raise InvalidField("transaction", "is required")
        outcome = self._offline.sync(
            terminal_id=caller.terminal_id,
            transactions=[offline_transaction_from_proto(request.transaction)],
        )
        return pb.CompleteOfflineResponse(
            result=offline_result_to_proto(outcome.results[0]),
            sync_status=sync_status_to_proto(outcome.status),
        )

    @unary_rpc
    def SyncOfflineBatch(self, request: pb.SyncOfflineBatchRequest, context: Context
                         ) -> pb.SyncOfflineBatchResponse:
        caller = self._terminal(context)
        self._check_message_size(request.ByteSize())
        outcome = self._offline.sync(
            terminal_id=caller.terminal_id,
            transactions=[offline_transaction_from_proto(t) for t in request.transactions],
        )
        response = pb.SyncOfflineBatchResponse(sync_status=sync_status_to_proto(outcome.status))
        add_result = response.results.add
        for result in outcome.results:
            fill_offline_result(add_result(), result)
        return response

    def _check_message_size(self, size: int) -> None:
        # The gRPC receive limit is set above this one, so an oversized request reaches us
        # and gets the documented LIMIT_EXCEEDED rather than a transport error.
        maximum = self._offline.limits.max_message_bytes
        if size > maximum:
            raise LimitExceeded("max_message_bytes", maximum, size)

    # -- parameters -----------------------------------------------------------------------

    @unary_rpc
    def GetParameters(self, request: pb.GetParametersRequest, context: Context
                      ) -> pb.GetParametersResponse:
        self._terminal(context)
        return pb.GetParametersResponse(
            parameters=parameters_to_proto(self._parameters.current()),
            sync_limits=sync_limits_to_proto(self._offline.limits),
        )

    @streaming_rpc
    def WatchParameters(self, request: pb.WatchParametersRequest, context: Context
                        ) -> Iterator[pb.WatchParametersResponse]:
        self._terminal(context)
        known = request.known_version
        current = self._parameters.current()
        if current.version > known:
            yield pb.WatchParametersResponse(parameters=parameters_to_proto(current))
            known = current.version
        feed = self._parameters.feed
        # Wake up every poll interval to notice a cancelled call or a closing server.
        while context.is_active() and not feed.closed:
            newer = feed.wait_newer(known, timeout=self._watch_poll_seconds)
            if newer is not None and context.is_active():
                yield pb.WatchParametersResponse(parameters=parameters_to_proto(newer))
                known = newer.version
