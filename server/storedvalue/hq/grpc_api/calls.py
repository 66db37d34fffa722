"""Every call's way in: the method table, and the one server interceptor that authenticates
each call once, before any handler work, bounds how long a unary call may take, and turns
failures into statuses.

The interceptor sees a call as soon as its metadata arrives, before its request message. A
call without a valid credential is refused right there: the client gets UNAUTHENTICATED
(or PERMISSION_DENIED) at once, and a caller that opened a call and never sends its
request costs nothing beyond the call's memory. An authenticated unary call reads its own
request under HQ's deadline for calls (`call_deadline_seconds`), so a caller that stalls
after authenticating is ended with CALL_TOO_LONG instead of holding on for ever.

Servicer methods take `(caller, request, context)`: the caller the interceptor resolved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import grpc

from storedvalue.hq.domain.errors import CallTooLong, InvalidField, StoredValueError
from storedvalue.hq.grpc_api.call_context import authorization, client_certificate_names
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
    ) -> None:
        self._auth = authenticator
        self._roles = dict(roles)
        self._deadline = call_deadline_seconds
        self._methods: dict[str, tuple[Role, str] | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED
            return cast(Handler, None)
        method = handler_call_details.method
        if method in self._methods:
            policy = self._methods[method]
        else:
            policy = self._methods[method] = self._policy_of(method)
        if policy is None:
            return handler
        role, name = policy
        try:
            caller = await self._auth.authenticate(
                authorization(handler_call_details.invocation_metadata), role
            )
        except StoredValueError as refused:
            return _refusal(handler, status_for(refused, name))
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, caller, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_unary_rpc_method_handler(
            self._unary(handler.unary_unary, caller, name),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _policy_of(self, method: str) -> tuple[Role, str] | None:
        service, _, name = method.lstrip("/").partition("/")
        role = self._roles.get(service)
        return None if role is None else (role, name)

    def _unary(self, behavior: Any, caller: Caller, name: str
               ) -> Callable[[object, Context], Awaitable[Any]]:
        deadline = self._deadline
        auth = self._auth

        async def call(_requests: object, context: Context) -> Any:
            # Registered as request-streaming, so the request is read here, under the
            # deadline, rather than by gRPC before any of our code runs.
            try:
                async with asyncio.timeout(deadline):
                    request = await context.read()
                    if request is _EOF:
                        raise InvalidField("request", "is required")
                    if auth.binds_client_certificates:
                        auth.check_certificate(caller, client_certificate_names(context))
                    response = await behavior(caller, request, context)
                    if isinstance(request, UndecodableRequest):
                        request.refuse()  # a method that never read its request
                    return response
            except TimeoutError:
                status = status_for(CallTooLong(deadline), name)
            except Exception as exc:  # every failure must become a status
                status = status_for(exc, name)
            return await end_with(context, status)

        return call

    def _stream(self, behavior: Any, caller: Caller, name: str
                ) -> Callable[[object, Context], AsyncIterator[Any]]:
        auth = self._auth

        async def stream(request: object, context: Context) -> AsyncIterator[Any]:
            try:
                if auth.binds_client_certificates:
                    auth.check_certificate(caller, client_certificate_names(context))
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


