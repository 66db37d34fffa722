"""Registering a servicer on a server, with a request decoder that never fails the call.

grpcio decodes a request before any handler code runs; bytes that are not a valid encoding
(truncated, mistyped, a string that is not UTF-8) would end the call with its own INTERNAL
"Exception deserializing request!". Here the decoder turns such bytes into an
`UndecodableRequest` instead, and the call goes on as usual: the call gate (calls.py) has
checked the credential already, the handler's first look at the request raises
`MalformedRequest` (the gate refuses it too when the handler never looked), and the one
error mapping (errors.py) answers with INVALID_ARGUMENT and its ErrorInfo.

A servicer method marked `answers_with_wire_bytes` returns its response already encoded
(bytes), which gRPC sends as they are: for answers with hundreds of items, written directly
rather than built as messages (convert/offline.py).

Services that are not ours (health; reflection has its own handler) get the same decoder,
and `add_foreign_servicer` ends a call whose bytes do not decode with that same status
before the servicer sees the request: no service of HQ answers INTERNAL to bad bytes.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from storedvalue.hq.domain.errors import MalformedRequest
from storedvalue.hq.grpc_api.errors import end_with, status_of

F = TypeVar("F", bound=Callable[..., Any])


def answers_with_wire_bytes(method: F) -> F:
    """Mark a servicer method whose response is its message's encoding (bytes)."""
    method.answers_with_wire_bytes = True  # type: ignore[attr-defined]
    return method


class UndecodableRequest:
    """Stands in for a request whose bytes were not a valid encoding of its message: reading
    anything of it raises MalformedRequest."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __getattr__(self, name: str) -> NoReturn:
        raise MalformedRequest(self.type_name)

    def refuse(self) -> NoReturn:
        raise MalformedRequest(self.type_name)


def request_decoder(descriptor: Descriptor) -> Callable[[bytes], Message | UndecodableRequest]:
    message_class = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name

    def decode(data: bytes) -> Message | UndecodableRequest:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return UndecodableRequest(name)

    return decode


async def refuse_undecodable(request: object, context: grpc.aio.ServicerContext[Any, Any]
                             ) -> None:
    """End the call with INVALID_ARGUMENT (MALFORMED_REQUEST) if `request` did not decode."""
    if isinstance(request, UndecodableRequest):
        await end_with(context, status_of(MalformedRequest(request.type_name)))


def _checking_requests(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """`behaviour` (a grpc.aio unary-request method) behind `refuse_undecodable`."""
    if inspect.isasyncgenfunction(behaviour):
        async def stream(request: object, context: Any) -> AsyncIterator[Any]:
            await refuse_undecodable(request, context)
            async for response in behaviour(request, context):
                yield response

        return stream

    async def call(request: object, context: Any) -> Any:
        await refuse_undecodable(request, context)
        return await behaviour(request, context)

    return call


def add_foreign_servicer(server: Any, servicer: object, service: ServiceDescriptor) -> None:
    """`add_servicer` for a grpc.aio servicer that is not ours (health): its methods never
    see an undecodable request."""
    add_servicer(server, servicer, service, wrap=_checking_requests)


def add_servicer(server: Any, servicer: object, service: ServiceDescriptor, *,
                 wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda b: b) -> None:
    """Register `servicer`'s methods (named as the service's RPCs) on `server`, as the
    generated `add_XxxServicer_to_server` does, with the decoder above."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        behaviour = getattr(servicer, method.name)
        # No serializer: gRPC sends the bytes the method returns.
        serializer = (None if getattr(behaviour, "answers_with_wire_bytes", False)
                      else message_factory.GetMessageClass(method.output_type).SerializeToString)
        handlers[method.name] = make(
            wrap(behaviour),
            request_deserializer=request_decoder(method.input_type),
            response_serializer=serializer,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
