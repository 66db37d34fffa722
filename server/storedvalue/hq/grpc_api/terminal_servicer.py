"""TerminalService: what tills call. Translation only: convert, call a service, convert back.
Every rule lives in the services and the domain. Each method gets the caller the call gate
(`calls.py`) authenticated; it maps errors to statuses too."""

# ruff: noqa: N802 - method names are the contract's RPC names

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc

from storedvalue.hq.domain.client_text import validate_id
from storedvalue.hq.domain.errors import InvalidField, LimitExceeded, Unauthenticated
from storedvalue.hq.domain.parameters import Parameters
from storedvalue.hq.grpc_api.call_context import request_key
from storedvalue.hq.grpc_api.convert.cards import fill_card, fill_lock
from storedvalue.hq.grpc_api.convert.common import (
    card_kind_from_proto,
    money_from_proto,
    timestamp,
)
from storedvalue.hq.grpc_api.convert.offline import (
    complete_offline_response_wire,
    offline_batch_from_proto,
    offline_transaction_from_proto,
    sync_limits_to_proto,
    sync_response_wire,
)
from storedvalue.hq.grpc_api.convert.parameters import parameters_to_proto
from storedvalue.hq.grpc_api.convert.terminals import report_from_proto
from storedvalue.hq.grpc_api.method_handlers import answers_with_wire_bytes
from storedvalue.hq.services.auth import Caller
from storedvalue.hq.services.cards import CardService, LockResult, RedeemResult
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.hq.services.terminal_reports import TerminalReportService
from storedvalue.v1 import terminal_service_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


def lock_card_answer(result: LockResult) -> bytes:
    """LockCard's response to `result`, encoded."""
    response = pb.LockCardResponse()
    lock = response.lock
    fill_lock(lock, result.lock)
    # The card shows the same lock (unless its lease ended at once): copied, not refilled.
    card_lock = result.card.lock
    same = card_lock is result.lock or card_lock == result.lock
    fill_card(response.card, result.card, lock if same else None)
    encoded: bytes = response.SerializeToString()
    return encoded


def redeem_answer(result: RedeemResult) -> bytes:
    """Redeem's response to `result`, encoded."""
    response = pb.RedeemResponse()
    fill_card(response.card, result.card)
    debited = response.debited
    debited.amount_minor = result.debited.amount_minor
    debited.currency_code = result.debited.currency
    if result.remainder_credit_memo is not None:
        fill_card(response.remainder_credit_memo, result.remainder_credit_memo)
    encoded: bytes = response.SerializeToString()
    return encoded


class TerminalServicer:
    def __init__(
        self,
        *,
        cards: CardService,
        offline: OfflineService,
        parameters: ParametersService,
        reports: TerminalReportService,
    ) -> None:
        self._cards = cards
        self._offline = offline
        self._parameters = parameters
        self._reports = reports
        self._watch_responses: dict[tuple[str, int], pb.WatchParametersResponse] = {}

    def _watch_response(self, parameters: Parameters) -> pb.WatchParametersResponse:
        """The message for `parameters`, built once per store and version: a change goes
        out to thousands of watch streams at once, the same message for a store's tills."""
        key = (parameters.store_id, parameters.version)
        message = self._watch_responses.get(key)
        if message is None:
            if len(self._watch_responses) > 4096:  # one per store with watchers, bounded
                self._watch_responses.clear()
            message = self._watch_responses[key] = pb.WatchParametersResponse(
                parameters=parameters_to_proto(parameters))
        return message

    # -- online card use ------------------------------------------------------------------

    @answers_with_wire_bytes
    def LockCard(
        self, caller: Caller, request: pb.LockCardRequest, context: Context
    ) -> Awaitable[bytes]:
        # Answered with the response's encoding, made inside the unit of work: that encoding
        # is what the request log remembers for a retry (see idempotency.once_answered).
        # Not a coroutine itself: the call gate awaits the service's (a coroutine layer
        # costs ~0.7K instructions a call more than a plain call, callgrind).
        return self._cards.lock_card(
            key=request_key(caller, request, "LockCard"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            transaction_id=request.transaction_id,
            store_id=caller.store_id,
            answer=lock_card_answer,
        )

    async def UnlockCard(
        self, caller: Caller, request: pb.UnlockCardRequest, context: Context
    ) -> pb.UnlockCardResponse:
        card = await self._cards.unlock_card(
            key=request_key(caller, request, "UnlockCard"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            transaction_id=request.transaction_id,
            fencing_token=request.fencing_token,
        )
        response = pb.UnlockCardResponse()
        fill_card(response.card, card)  # in place: no card message copied in
        return response

    @answers_with_wire_bytes
    def Redeem(
        self, caller: Caller, request: pb.RedeemRequest, context: Context
    ) -> Awaitable[bytes]:
        return self._cards.redeem(  # answered as LockCard is, and not a coroutine either
            key=request_key(caller, request, "Redeem"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            transaction_id=request.transaction_id,
            line_id=request.line_id,
            fencing_token=request.fencing_token,
            amount=money_from_proto(request.amount) if request.HasField("amount") else None,
            answer=redeem_answer,
        )

    async def GetCard(
        self, caller: Caller, request: pb.GetCardRequest, context: Context
    ) -> pb.GetCardResponse:
        card = await self._cards.get_card(
            caller=caller.terminal_id, card_number=request.card_number
        )
        response = pb.GetCardResponse()
        fill_card(response.card, card)  # in place: no card message copied in
        return response

    async def IssueCard(
        self, caller: Caller, request: pb.IssueCardRequest, context: Context
    ) -> pb.IssueCardResponse:
        card = await self._cards.issue_card(
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
        response = pb.IssueCardResponse()
        fill_card(response.card, card)  # in place: no card message copied in
        return response

    async def AddValue(
        self, caller: Caller, request: pb.AddValueRequest, context: Context
    ) -> pb.AddValueResponse:
        card = await self._cards.add_value(
            key=request_key(caller, request, "AddValue"),
            terminal_id=caller.terminal_id,
            card_number=request.card_number,
            amount=money_from_proto(request.amount) if request.HasField("amount") else None,
            transaction_id=request.transaction_id,
        )
        response = pb.AddValueResponse()
        fill_card(response.card, card)  # in place: no card message copied in
        return response

    # -- offline sync ---------------------------------------------------------------------

    @answers_with_wire_bytes
    async def CompleteOffline(
        self, caller: Caller, request: pb.CompleteOfflineRequest, context: Context
    ) -> bytes:
        self._check_message_size(request.ByteSize())
        if not request.HasField("transaction"):
            raise InvalidField("transaction", "is required")
        outcome = await self._offline.sync(
            key=request_key(caller, request, "CompleteOffline"),
            terminal_id=caller.terminal_id,
            transactions=[offline_transaction_from_proto(request.transaction)],
            in_order=False,
        )
        return complete_offline_response_wire(outcome.results[0], outcome.status)

    @answers_with_wire_bytes
    async def SyncOfflineBatch(
        self, caller: Caller, request: pb.SyncOfflineBatchRequest, context: Context
    ) -> bytes:
        # One deterministic serialization for the request's size, its fingerprint and its
        # transactions' (upb's ByteSize serializes the message to measure it).
        serialized = request.SerializeToString(deterministic=True)
        self._check_message_size(len(serialized))
        transactions, sales = offline_batch_from_proto(request.transactions, serialized)
        outcome = await self._offline.sync(
            key=request_key(caller, request, "SyncOfflineBatch", serialized),
            terminal_id=caller.terminal_id,
            transactions=transactions,
            sales=sales,
        )
        return sync_response_wire(outcome.results, outcome.status)

    def _check_message_size(self, size: int) -> None:
        # The gRPC receive limit is set above this one, so an oversized request reaches us
        # and gets the documented LIMIT_EXCEEDED rather than a transport error.
        maximum = self._offline.limits.max_message_bytes
        if size > maximum:
            raise LimitExceeded("max_message_bytes", maximum, size)

    # -- parameters -----------------------------------------------------------------------

    async def GetParameters(
        self, caller: Caller, request: pb.GetParametersRequest, context: Context
    ) -> pb.GetParametersResponse:
        return pb.GetParametersResponse(
            parameters=parameters_to_proto(await self._parameters.current(caller.store_id)),
            sync_limits=sync_limits_to_proto(self._offline.limits),
        )

    async def WatchParameters(self, caller: Caller, request: pb.WatchParametersRequest,
                              context: Context) -> AsyncIterator[pb.WatchParametersResponse]:
        feed = self._parameters.feed
        feed.join()  # over the configured maximum: TOO_MANY_WATCHERS
        try:
            generation = feed.watch_generation(caller.terminal_id)
            known = request.known_version
            current = await self._parameters.latest(caller.store_id)
            if current.version != known:  # lower only for a terminal moved to another store
                yield self._watch_response(current)
                known = current.version
            while True:
                # A store's watchers wait on the same event: no thread, no timer per stream.
                # A cancelled call cancels this wait; a closing server ends it with None, and
                # so does the terminal's revocation or move to another store.
                newer = await feed.newer_than(caller.store_id, known,
                                              terminal_id=caller.terminal_id,
                                              generation=generation)
                if newer is None:
                    if feed.ended(caller.terminal_id, generation) and feed.revoked(
                            caller.terminal_id):
                        raise Unauthenticated("the terminal's credential was revoked")
                    return  # stopping, or moved: the terminal watches its new store next
                yield self._watch_response(newer)
                known = newer.version
        finally:
            feed.leave()

    # -- status reports -------------------------------------------------------------------

    async def ReportTerminalStatus(
        self, caller: Caller, request: pb.ReportTerminalStatusRequest, context: Context
    ) -> pb.ReportTerminalStatusResponse:
        validate_id(request.request_id, "request_id")
        if not request.HasField("report"):
            raise InvalidField("report", "is required")
        received_at = await self._reports.report(
            terminal_id=caller.terminal_id, report=report_from_proto(request.report)
        )
        return pb.ReportTerminalStatusResponse(received_at=timestamp(received_at))
