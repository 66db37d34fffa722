"""Every call's way in: the method table, and the one server interceptor that authenticates
each call once, before any handler work, bounds how long a unary call may take, and turns
failures into statuses.

The interceptor sees a call as soon as its metadata arrives, before its request message. A
call without a valid credential is refused right there: the client gets UNAUTHENTICATED
(or PERMISSION_DENIED) at once, and a caller that opened a call and never sends its
request costs nothing beyond the call's memory. An authenticated unary call reads its own
request under HQ's deadline for calls (`call_deadline_seconds`), so a caller that stalls
after authenticating is ended with CALL_TOO_LONG instead of holding on for ever.

Nothing here is built per call: each method's guarded handler is made once, and the
caller reaches it through a context variable.

What reading the request ourselves costs (callgrind, the echo's trivial handler behind this
gate and a fake authenticator, 16 connections, asyncio thread, grpcio 1.85, 2026-12-05):
about 21-24K instructions a call more than the same interceptor handing grpc.aio a plain
unary-unary coroutine, of which grpc.aio's second `_is_async_handler` check (its
request-streaming path asks `inspect.isawaitable or inspect.iscoroutinefunction` once more:
8.0K for a coroutine function), `context.read()` and the request iterator (~2K), and the
deadline's bookkeeping below (~5K with the read, micro). A unary-unary registration cannot
keep the deadline: grpc.aio reads the request before any handler code runs, the
interceptor has no context to end the call with, and a call task cancelled while grpc.aio
waits for the request sends no status at all: the call stays open until the client gives
up (tried: cancelled after 1 s, the client saw its own DEADLINE_EXCEEDED at 10 s).

Servicer methods take `(caller, request, context)`: the caller the interceptor resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import grpc

from storedvalue.hq.domain.errors import CallTooLong, InvalidField, StoredValueError
from storedvalue.hq.grpc_api.call_context import authorization as _authorization
from storedvalue.hq.grpc_api.client_certificates import ClientCertificates
from storedvalue.hq.grpc_api.errors import end_with, status_for
from storedvalue.hq.grpc_api.method_handlers import UndecodableRequest
from storedvalue.hq.services.auth import Authenticator, Caller, Role

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    Handler = grpc.RpcMethodHandler
Context = grpc.aio.ServicerContext[Any, Any]
# What `context.read()` returns when the client half-closed without a message.
_EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]


class MethodTable(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """The server's methods by full name ("/package.Service/Method"): what the generated
    `add_*Servicer_to_server` functions register, looked up with one dict access per call."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Handler]
    ) -> None:
        for method, handler in method_handlers.items():
            self._handlers[f"/{service_name}/{method}"] = handler

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        """The generated code registers each service twice; the table keeps the first."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        return self._handlers.get(handler_call_details.method)


_Guarded = tuple[Role, str, Handler, Callable[[grpc.Status], Handler]]

# The caller the gate authenticated, for the handler it hands the call to. gRPC runs the
# interceptor and then the handler in the same task (one per call), so each call sees only
# its own caller.
_CALLER: ContextVar[Caller] = ContextVar("storedvalue_caller")


class CallDeadlines:
    """HQ's own limit on unary calls: each call is tracked from the moment its handler
    starts (before its request is read), and one sweeper task, not a timer per call,
    cancels the calls that run past the limit (give or take a tenth of it).

    The call gate tracks a call by writing its end into `ends` itself, with `clock` (the
    sweeper's loop's clock, None until the sweeper runs: then `track`), and takes it out
    with `ends.pop`, calling `untrack` only for a call no longer there: ~1K instructions a
    call less than two method calls (callgrind)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends: dict[asyncio.Task[Any], float] = {}
        """The tracked calls' ends, by the calls' tasks."""
        self.clock: Callable[[], float] | None = None
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def track(self, task: asyncio.Task[Any]) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
            self.clock = task.get_loop().time
        self.ends[task] = task.get_loop().time() + self.seconds

    def untrack(self, task: asyncio.Task[Any]) -> bool:
        """Stop tracking `task`; whether the sweeper had cancelled it for running late."""
        self.ends.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    async def stop(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        self.clock = None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _sweep(self) -> None:
        period = min(1.0, self.seconds / 10)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            late = [task for task, end in self.ends.items() if end <= now]
            for task in late:
                del self.ends[task]
                self._expired.add(task)
                task.cancel()


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authentication, the unary call deadline, and error statuses, for the services in
    `roles` (service name -> who may call it); other services (health, reflection) pass
    through untouched."""

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        roles: Mapping[str, Role],
        call_deadline_seconds: float,
        client_certificates: ClientCertificates | None = None,
    ) -> None:
        self._auth = authenticator
        # Mutual TLS: whose connection a call came on (checked against its credential).
        self._certificates = client_certificates
        self._roles = dict(roles)
        self.deadlines = CallDeadlines(call_deadline_seconds)
        # By method: None (not ours to guard), or its role, name, guarded handler and the
        # maker of refusals.
        self._methods: dict[str, _Guarded | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method = handler_call_details.method
        if method in self._methods:
            guarded = self._methods[method]
        else:  # the first call of this method: its guarded handler is built once
            handler = await continuation(handler_call_details)
            if handler is None:  # no such method: gRPC answers UNIMPLEMENTED
                return cast(Handler, None)
            guarded = self._methods[method] = self._guarded(method, handler)
        if guarded is None:  # not ours to guard (health, reflection)
            return cast(Handler, await continuation(handler_call_details))
        role, name, gated, refused = guarded
        authorization = _authorization(handler_call_details.invocation_metadata)
        try:
            # A credential seen lately needs no await: most calls end their check here.
            caller = self._auth.remembered(authorization, role)
            if caller is None:
                caller = await self._auth.authenticate(authorization, role)
        except StoredValueError as refusal:
            return refused(status_for(refusal, name))
        _CALLER.set(caller)
        return gated

    def _guarded(self, method: str, handler: Handler) -> _Guarded | None:
        service, _, name = method.lstrip("/").partition("/")
        role = self._roles.get(service)
        if role is None:
            return None
        if handler.response_streaming:
            gated = grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        else:
            gated = grpc.stream_unary_rpc_method_handler(
                self._unary(handler.unary_unary, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return role, name, gated, functools.partial(_refusal, handler)

    def _unary(self, behavior: Any, name: str) -> Callable[[object, Context], Awaitable[Any]]:
        deadlines = self.deadlines
        ends = deadlines.ends
        seconds = deadlines.seconds
        auth = self._auth
        certificates = self._certificates
        current_task = asyncio.current_task

        async def call(_requests: object, context: Context) -> Any:
            # Registered as request-streaming, so the request is read here, under the
            # deadline, rather than by gRPC before any of our code runs.
            caller = _CALLER.get()
            task: asyncio.Task[Any] = current_task()  # type: ignore[assignment]  # in a task
            clock = deadlines.clock
            if clock is not None:
                ends[task] = clock() + seconds
            else:  # the first call: the sweeper starts
                deadlines.track(task)
            try:
                request = await context.read()
                if request is _EOF:
                    raise InvalidField("request", "is required")
                if certificates is not None:
                    auth.check_certificate(
                        caller, certificates.of(context, admin=caller.is_admin))
                response = await behavior(caller, request, context)
                if isinstance(request, UndecodableRequest):
                    request.refuse()  # a method that never read its request
                return response
            except asyncio.CancelledError:
                if not deadlines.untrack(task):
                    raise  # the client cancelled, or the server is stopping
                task.uncancel()
                status = status_for(CallTooLong(deadlines.seconds), name)
            except Exception as exc:  # every failure must become a status
                status = status_for(exc, name)
            finally:
                if ends.pop(task, None) is None:  # the sweeper took it out, or untracked
                    deadlines.untrack(task)
            return await end_with(context, status)

        return call

    def _stream(self, behavior: Any, name: str
                ) -> Callable[[object, Context], AsyncIterator[Any]]:
        auth = self._auth
        certificates = self._certificates

        async def stream(request: object, context: Context) -> AsyncIterator[Any]:
            caller = _CALLER.get()
            try:
                if certificates is not None:
                    auth.check_certificate(
                        caller, certificates.of(context, admin=caller.is_admin))
                async for response in behavior(caller, request, context):
                    if isinstance(request, UndecodableRequest):
                        request.refuse()
                    yield response
                return
            except Exception as exc:
                status = status_for(exc, name)
            await end_with(context, status)

        return stream


def _refusal(handler: Handler, status: grpc.Status) -> Handler:
    """A handler that ends the call with `status` at once, without waiting for a request
    (registered as request-streaming: gRPC reads nothing before calling it)."""

    async def refuse(_requests: object, context: Context) -> None:
        await end_with(context, status)

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)


