"""The real HQ in the test process: `create_server` on a temporary SQLite file, port 0,
optionally behind a `Link` (a server interceptor the tests break on purpose), and `HQDesk`,
a client of HQ's own RPCs to arrange and read cards as a store and the back office would.

Every test that runs HQ in its own process starts it through `InProcessHQ`: the one place
that knows how the server is started and stopped.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from storedvalue.hq.config import HQConfig
from storedvalue.hq.domain.cards import luhn_check_digit
from storedvalue.hq.domain.errors import HQBusy, RateLimited, StoredValueError
from storedvalue.hq.grpc_api.errors import status_of
from storedvalue.hq.server import HQServer, create_server
from storedvalue.hq.services.unit_of_work import Storage
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

ADMIN_TOKEN = "in-process-admin-token"
_CALL_TIMEOUT = 15.0

# -- the link -------------------------------------------------------------------------------

NORMAL = "normal"
ANSWER_LOST = "answer lost"
"""HQ handles the call (and commits), then the link drops before the answer gets back."""
LOST_BEFORE = "lost before"
"""The link drops as the request leaves: HQ never sees it."""
BLACK_HOLE = "black hole"
"""The link goes dead: the call hangs until its deadline, HQ never sees it."""
ANSWER_DROPPED = "answer dropped"
"""HQ handles the call, its answer is lost; the link stays up."""
NO_REVERSAL_RESULTS = "no reversal results"
"""HQ handles a SyncOfflineBatch and answers without its reversal results, as an HQ that
predates reversals does."""
LARGE_ANSWER = "large answer"
"""HQ handles a SyncOfflineBatch and answers it with 5 MiB more, in a field the till does
not know: past gRPC's default receive limit of 4 MiB, as the answer of a batch near HQ's
max_message_bytes is when its lines carry exceptions (an id for each, about three times the
size of the request)."""


def refuse(reason: str) -> str:
    """HQ refuses the call with this ErrorInfo reason, without handling it."""
    return f"refuse:{reason}"


def fail(code: grpc.StatusCode) -> str:
    """The call fails with this bare status code before reaching HQ's handler."""
    return f"fail:{code.name}"


_REFUSALS: dict[str, Callable[[], StoredValueError]] = {
    "RATE_LIMITED": lambda: RateLimited(60),
    "HQ_BUSY": HQBusy,
}


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(encoded) + bytes([value])


# Field 1000, length-delimited, 5 MiB of zeros: parsers keep it as an unknown field.
_UNKNOWN_FIELD_OF_5_MIB = _varint(1000 << 3 | 2) + _varint(5 << 20) + bytes(5 << 20)

BYPASS = ("x-test-bypasses-link", "1")
"""Metadata of calls that do not cross the link (the desk's): another wire into HQ."""


class Link(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The wire between tills and HQ. While `up` is False every call fails UNAVAILABLE at
    once (health checks included); `script` breaks the next calls of one RPC in a chosen
    way. It also counts the calls that crossed it and keeps their requests.

    It sees each call before HQ's call gate, so it wraps the gate's handlers: a unary call
    there reads its own request (`context.read()`), which the link records on the way."""

    def __init__(self) -> None:
        self.up = True
        self._mutex = threading.Lock()
        self._scripts: dict[str, list[str]] = defaultdict(list)
        self._chosen: dict[str, list[tuple[Callable[[Any], bool], str]]] = defaultdict(list)
        self._calls: Counter[str] = Counter()
        self._requests: dict[str, list[Any]] = defaultdict(list)

    def script(self, method: str, *faults: str) -> None:
        """What happens to the next calls of `method` (e.g. "Redeem"), in order."""
        with self._mutex:
            self._scripts[method].extend(faults)

    def script_call(self, method: str, which: Callable[[Any], bool], fault: str) -> None:
        """What happens to the first call of `method` whose request is `which`, whenever it
        comes: calls in flight together (a till's batches) cross in either order."""
        with self._mutex:
            self._chosen[method].append((which, fault))

    def heal(self) -> None:
        """Up again, and nothing more scripted."""
        with self._mutex:
            self._scripts.clear()
            self._chosen.clear()
        self.up = True

    def calls(self, method: str) -> int:
        with self._mutex:
            return self._calls[method]

    def requests(self, method: str) -> list[Any]:
        with self._mutex:
            return list(self._requests[method])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or BYPASS in (handler_call_details.invocation_metadata or ()):
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.request_streaming and not handler.response_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(method, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_unary is not None:  # the health check: no credential, no gate
            return grpc.unary_unary_rpc_method_handler(
                self._plain(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]
               ) -> Callable[[Any, Any], Awaitable[Any]]:
        async def crossing(requests: Any, context: Any) -> Any:
            if not self.up:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "link down")
            with self._mutex:
                self._calls[method] += 1
                script = self._scripts[method]
                fault = script.pop(0) if script else NORMAL
            recording = _Recording(context, lambda request: self._record(method, request))
            if fault == NORMAL and self._chosen[method]:
                fault = self._chosen_fault(method, await recording.peek())
            if fault != NORMAL and fault not in (ANSWER_LOST, ANSWER_DROPPED, NO_REVERSAL_RESULTS,
                                                 LARGE_ANSWER):
                await recording.read()  # the request crossed before the fault
            if fault == LOST_BEFORE:
                self.up = False
                await context.abort(grpc.StatusCode.UNAVAILABLE, "link dropped")
            if fault == BLACK_HOLE:
                self.up = False
                await asyncio.sleep(max(context.time_remaining() or 0.0, 0.0) + 0.05)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "too late")
            if fault.startswith("refuse:"):
                status = status_of(_REFUSALS[fault.removeprefix("refuse:")]())
                await context.abort(status.code, status.details, status.trailing_metadata)
            if fault.startswith("fail:"):
                await context.abort(grpc.StatusCode[fault.removeprefix("fail:")], "injected")
            response = await behavior(requests, recording)
            if fault == NO_REVERSAL_RESULTS:
                # HQ answers a batch with the response's wire bytes (the answer of an HQ
                # before reversals is the same without their results).
                answer = ts.SyncOfflineBatchResponse.FromString(response)
                for result in answer.results:
                    del result.reversal_results[:]
                response = answer.SerializeToString()
            if fault == LARGE_ANSWER:
                response += _UNKNOWN_FIELD_OF_5_MIB
            if fault == ANSWER_LOST:
                self.up = False
            if fault in (ANSWER_LOST, ANSWER_DROPPED):
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    "answer lost after HQ handled it")
            return response

        return crossing

    def _plain(self, behavior: Callable[..., Any]) -> Callable[[Any, Any], Awaitable[Any]]:
        async def crossing(request: Any, context: Any) -> Any:
            if not self.up:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "link down")
            response = behavior(request, context)
            return await response if inspect.isawaitable(response) else response

        return crossing

    def _stream(self, behavior: Callable[..., AsyncIterator[Any]]
                ) -> Callable[[Any, Any], AsyncIterator[Any]]:
        async def crossing(request: Any, context: Any) -> AsyncIterator[Any]:
            if not self.up:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "link down")
            async for message in behavior(request, context):
                if not self.up:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "link down")
                yield message

        return crossing

    def _chosen_fault(self, method: str, request: Any) -> str:
        with self._mutex:
            chosen = self._chosen[method]
            for index, (which, fault) in enumerate(chosen):
                if which(request):
                    del chosen[index]
                    return fault
        return NORMAL

    def _record(self, method: str, request: Any) -> None:
        with self._mutex:
            self._requests[method].append(request)


class _Recording:
    """A call's context whose `read()` hands each request to `record` as it passes;
    everything else is the call's own."""

    def __init__(self, context: Any, record: Callable[[Any], None]) -> None:
        self._context = context
        self._record = record
        self._peeked: Any = None

    async def peek(self) -> Any:
        """The call's (first) request, read now: its next `read()` returns it."""
        if self._peeked is None:
            self._peeked = await self.read()
        return self._peeked

    async def read(self) -> Any:
        if self._peeked is not None:
            request, self._peeked = self._peeked, None
            return request
        request = await self._context.read()
        if request is not grpc.aio.EOF:  # type: ignore[attr-defined]
            self._record(request)
        return request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


# -- the server -----------------------------------------------------------------------------


def hq_config(data_dir: Path, **changes: Any) -> HQConfig:
    """A test HQ's configuration: port 0, a SQLite file in `data_dir`, fast wake-ups."""
    config = HQConfig(
        listen="127.0.0.1:0",
        database_url=f"sqlite:///{data_dir / 'hq.sqlite3'}",
        admin_token=ADMIN_TOKEN,
        notifications_poll_seconds=0.2,
    )
    return replace(config, **changes)


class InProcessHQ:
    """A real HQ server in this process. `start` again after `stop` serves the same
    database on the same port (a restart); `reconfigure` changes what the next start uses."""

    def __init__(self, config: HQConfig, *, storage: Storage | None = None,
                 link: Link | None = None) -> None:
        self.config = config
        self.link = link
        self._storage = storage
        self._server: HQServer | None = None
        self.port = 0
        self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_port(self) -> int | None:
        """The plaintext health-only port (`health_listen`), while serving."""
        return self._server.health_port if self._server is not None else None

    def reload_certificates(self) -> bool:
        """What SIGHUP does to a `storedvalue serve` process."""
        assert self._server is not None, "not serving"
        return self._server.reload_certificates()

    def start(self) -> None:
        assert self._server is None, "already serving"
        host = self.config.listen.rpartition(":")[0]
        config = replace(self.config, listen=f"{host}:{self.port}") if self.port else self.config
        server, self.port = create_server(
            config, storage=self._storage,
            interceptors=[self.link] if self.link is not None else [],
        )
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            assert self._server.stop(0).wait(timeout=10), "the server did not stop"
            self._server = None

    def reconfigure(self, **changes: Any) -> None:
        self.config = replace(self.config, **changes)

    def __enter__(self) -> InProcessHQ:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


# -- arranging and reading HQ through its RPCs ---------------------------------------------

_numbers = itertools.count(1)


def new_card_number() -> str:
    """A fresh Luhn-valid 16-digit card number."""
    body = f"6{next(_numbers):014d}"
    return body + luhn_check_digit(body)


@dataclass(frozen=True)
class CardAtHQ:
    """A card as HQ holds it, in the tests' terms."""

    number: str
    kind: str
    status: str
    balance: int
    lock: common_pb2.Lock | None


class HQDesk:
    """HQ's back office and a till of its own ("desk"), over a channel that bypasses any
    link: the tests arrange cards and read them as a store and the back office would."""

    def __init__(self, address: str, admin_token: str = ADMIN_TOKEN) -> None:
        self._channel = grpc.insecure_channel(address)
        self._back_office = bo_grpc.BackOfficeServiceStub(self._channel)
        self._admin = (("authorization", f"Bearer {admin_token}"), BYPASS)
        self._terminal = ts_grpc.TerminalServiceStub(self._channel)
        self._desk = (("authorization", f"Bearer {self.register('desk')}"), BYPASS)

    def close(self) -> None:
        self._channel.close()

    def admin(self, rpc: str, request: Any) -> Any:
        return getattr(self._back_office, rpc)(request, metadata=self._admin,
                                               timeout=_CALL_TIMEOUT)

    def till(self, rpc: str, request: Any, *, token: str | None = None) -> Any:
        metadata = self._desk if token is None else (
            ("authorization", f"Bearer {token}"), BYPASS)
        return getattr(self._terminal, rpc)(request, metadata=metadata, timeout=_CALL_TIMEOUT)

    def register(self, terminal_id: str, *, store_id: str = "") -> str:
        """Register a terminal (in a store, if given); returns its bearer token."""
        response = self.admin("RegisterTerminal", bo.RegisterTerminalRequest(
            request_id=_request_id(), terminal_id=terminal_id, store_id=store_id))
        token: str = response.credential.bearer_token
        return token

    def update_parameters(self, request: bo.UpdateParametersRequest) -> int:
        """UpdateParameters with a fresh request id; returns the version it made."""
        request.request_id = _request_id()
        version: int = self.admin("UpdateParameters", request).change.version
        return version

    def terminal(self, terminal_id: str) -> bo.Terminal:
        """The terminal as the back office lists it."""
        token = ""
        while True:
            page = self.admin("ListTerminals", bo.ListTerminalsRequest(page_token=token))
            for terminal in page.terminals:
                if terminal.terminal_id == terminal_id:
                    found: bo.Terminal = terminal
                    return found
            token = page.next_page_token
            if not token:
                raise LookupError(terminal_id)

    def set_parameters(self, *, gift_card: bool, credit_memo: bool,
                       lock_lease_s: int | None = None) -> int:
        request = bo.UpdateParametersRequest(
            request_id=_request_id(), gift_card_offline_completion_allowed=gift_card,
            credit_memo_offline_completion_allowed=credit_memo)
        if lock_lease_s is not None:
            request.lock_lease.CopyFrom(duration_pb2.Duration(seconds=lock_lease_s))
        version: int = self.admin("UpdateParameters", request).parameters.version
        return version

    def add_card(self, number: str | None = None, *, balance: int, currency: str = "EUR",
                 kind: common_pb2.CardKind.ValueType = common_pb2.CARD_KIND_GIFT_CARD,
                 ) -> str:
        """Issue a card (with this pre-printed number, or a new one); returns its number."""
        response = self.till("IssueCard", ts.IssueCardRequest(
            request_id=_request_id(), kind=kind, card_number=number or new_card_number(),
            initial_value=common_pb2.Money(amount_minor=balance, currency_code=currency)))
        issued: str = response.card.card_number
        return issued

    def card(self, number: str) -> CardAtHQ:
        card = self.till("GetCard", ts.GetCardRequest(card_number=number)).card
        return CardAtHQ(
            number=card.card_number,
            kind=common_pb2.CardKind.Name(card.kind),
            status=common_pb2.CardStatus.Name(card.status),
            balance=card.balance.amount_minor,
            lock=card.lock if card.HasField("lock") else None,
        )

    def locks(self) -> list[common_pb2.Lock]:
        """Every lock HQ holds, expired ones included."""
        locks: list[common_pb2.Lock] = []
        token = ""
        while True:
            page = self.admin("ListLocks", bo.ListLocksRequest(include_expired=True,
                                                               page_token=token))
            locks.extend(page.locks)
            token = page.next_page_token
            if not token:
                return locks

    def journal(self, number: str) -> list[bo.JournalEntry]:
        entries: list[bo.JournalEntry] = []
        token = ""
        while True:
            page = self.admin("ListJournalEntries", bo.ListJournalEntriesRequest(
                card_number=number, page_token=token))
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries

    def spend(self, number: str, amount: int) -> None:
        """Another store spends the card: the back office forces its lock away, the desk
        locks it and redeems `amount`."""
        self.admin("ForceUnlockCard", bo.ForceUnlockCardRequest(
            request_id=_request_id(), card_number=number, reason="test: spent elsewhere"))
        sale = f"desk-{uuid.uuid4()}"
        lock = self.till("LockCard", ts.LockCardRequest(
            request_id=_request_id(), card_number=number, transaction_id=sale)).lock
        self.till("Redeem", ts.RedeemRequest(
            request_id=_request_id(), card_number=number, transaction_id=sale, line_id="1",
            fencing_token=lock.fencing_token,
            amount=common_pb2.Money(amount_minor=amount, currency_code="EUR")))

    def sync_status(self, terminal_id: str) -> Any:
        return self.admin("GetTerminalSyncStatus", bo.GetTerminalSyncStatusRequest(
            terminal_id=terminal_id)).sync_status

    def conservation_holds(self, numbers: list[str]) -> bool:
        """For every card, the balance equals the sum of its journal."""
        return all(
            sum(entry.amount.amount_minor for entry in self.journal(number))
            == self.card(number).balance
            for number in numbers
        )


def error_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call ("" when it has none)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def _request_id() -> str:
    return str(uuid.uuid4())
