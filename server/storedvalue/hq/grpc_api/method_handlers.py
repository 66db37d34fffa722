"""Registering a servicer on a server, with a request decoder that never fails the call.

grpcio decodes a request before any handler code runs; bytes that are not a valid encoding
(truncated, mistyped, a string that is not UTF-8) would end the call with its own INTERNAL
"Exception deserializing request!". Here the decoder turns such bytes into an
`UndecodableRequest` instead, and the call goes on as usual: the call gate (calls.py) has
checked the credential already, the handler's first look at the request raises
`MalformedRequest` (the gate refuses it too when the handler never looked), and the one
error mapping (errors.py) answers with INVALID_ARGUMENT and its ErrorInfo.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from storedvalue.hq.domain.errors import MalformedRequest


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


def add_servicer(server: Any, servicer: object, service: ServiceDescriptor) -> None:
    """Register `servicer`'s methods (named as the service's RPCs) on `server`, as the
    generated `add_XxxServicer_to_server` does, with the decoder above."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            raise ValueError(f"{method.full_name}: client streaming is not supported")
        make = (grpc.unary_stream_rpc_method_handler if method.server_streaming
                else grpc.unary_unary_rpc_method_handler)
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=request_decoder(method.input_type),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
