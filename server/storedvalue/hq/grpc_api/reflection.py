"""Server reflection that documents the contract.

grpcio-reflection serves descriptors rebuilt from the generated modules, which carry no
comments, and only the files the listed services reach (errors.proto is not among them) and
only under `grpc.reflection.v1alpha`. This module answers from the descriptor set that
`scripts/generate_protos.py` writes with source info, so `grpcurl describe` and `buf curl`
show every message's and field's documentation; every file of the contract is served
(`storedvalue.v1.ErrorReason` resolves) with google.rpc's Status and ErrorInfo, method names
resolve to their service's file, and
the same service answers under `grpc.reflection.v1` (whose messages are v1alpha's, field
for field) and `grpc.reflection.v1alpha`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2 as pb

from storedvalue.hq.domain.errors import MalformedRequest
from storedvalue.hq.grpc_api.errors import end_with, status_of
from storedvalue.hq.grpc_api.method_handlers import UndecodableRequest, request_decoder

REFLECTION_SERVICES = ("grpc.reflection.v1.ServerReflection",
                       "grpc.reflection.v1alpha.ServerReflection")
_METHOD = "ServerReflectionInfo"


class ContractCatalogue:
    """What reflection answers: the contract's files (with comments) plus the files of the
    other services HQ runs (health, reflection), looked up by file name or symbol."""

    def __init__(self, service_names: Iterable[str]) -> None:
        self._service_names = tuple(sorted(service_names))
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(
            resources.files("storedvalue.v1").joinpath("descriptor_set.binpb").read_bytes()
        )
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {
            f.name: f for f in descriptor_set.file
        }
        # Health, reflection, and the google.rpc error details (so that clients such as
        # grpcurl decode an error's ErrorInfo): their generated descriptors.
        for extra in (health_pb2, pb, status_pb2, error_details_pb2):
            self._add_with_dependencies(extra.DESCRIPTOR)
        v1 = _v1_reflection_file(self._files[pb.DESCRIPTOR.name])
        self._files[v1.name] = v1
        served = {name for f in self._files.values() for name in _services_of(f)}
        if unknown := set(self._service_names) - served:
            raise ValueError(f"no descriptors for services {sorted(unknown)}")
        self._pool = descriptor_pool.DescriptorPool()
        for proto in self._in_dependency_order():
            self._pool.Add(proto)

    def answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        which = request.WhichOneof("message_request")
        if which == "list_services":
            return pb.ServerReflectionResponse(
                original_request=request,
                list_services_response=pb.ListServiceResponse(
                    service=[pb.ServiceResponse(name=n) for n in self._service_names]
                ),
            )
        if which == "file_by_filename":
            return self._file_response(request, request.file_by_filename)
        if which == "file_containing_symbol":
            return self._file_response(request, self._file_of_symbol(
                request.file_containing_symbol))
        if which == "file_containing_extension":
            return self._file_response(request, None)  # the contract defines no extensions
        if which == "all_extension_numbers_of_type":
            name = request.all_extension_numbers_of_type
            if self._file_of_symbol(name) is None:
                return _error(request, grpc.StatusCode.NOT_FOUND)
            return pb.ServerReflectionResponse(
                original_request=request,
                all_extension_numbers_response=pb.ExtensionNumberResponse(base_type_name=name),
            )
        return _error(request, grpc.StatusCode.INVALID_ARGUMENT)

    def _file_of_symbol(self, symbol: str) -> str | None:
        try:
            return str(self._pool.FindFileContainingSymbol(symbol).name)
        except KeyError:
            pass
        # A method, `package.Service.Method`: the file of its service.
        service, _, method = symbol.rpartition(".")
        try:
            found = self._pool.FindServiceByName(service)
        except KeyError:
            return None
        return str(found.file.name) if method in found.methods_by_name else None

    def _file_response(
        self, request: pb.ServerReflectionRequest, file_name: str | None
    ) -> pb.ServerReflectionResponse:
        if file_name is None or file_name not in self._files:
            return _error(request, grpc.StatusCode.NOT_FOUND)
        wanted: list[str] = []
        self._collect(file_name, wanted)
        return pb.ServerReflectionResponse(
            original_request=request,
            file_descriptor_response=pb.FileDescriptorResponse(
                file_descriptor_proto=[self._files[n].SerializeToString() for n in wanted]
            ),
        )

    def _collect(self, file_name: str, into: list[str]) -> None:
        if file_name in into:
            return
        into.append(file_name)
        for dependency in self._files[file_name].dependency:
            self._collect(dependency, into)

    def _add_with_dependencies(self, descriptor: Any) -> None:
        if descriptor.name in self._files:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        descriptor.CopyToProto(proto)
        self._files[proto.name] = proto
        for dependency in descriptor.dependencies:
            self._add_with_dependencies(dependency)

    def _in_dependency_order(self) -> list[descriptor_pb2.FileDescriptorProto]:
        ordered: list[str] = []

        def visit(name: str) -> None:
            if name in ordered:
                return
            for dependency in self._files[name].dependency:
                visit(dependency)
            ordered.append(name)

        for name in sorted(self._files):
            visit(name)
        return [self._files[name] for name in ordered]


def _v1_reflection_file(v1alpha: descriptor_pb2.FileDescriptorProto
                        ) -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto: v1alpha's file under the v1 package (the two
    define the same messages with the same field numbers)."""
    v1 = descriptor_pb2.FileDescriptorProto()
    v1.CopyFrom(v1alpha)
    v1.name = "grpc/reflection/v1/reflection.proto"
    v1.package = "grpc.reflection.v1"
    for message in v1.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    for service in v1.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    return v1


def _services_of(proto: descriptor_pb2.FileDescriptorProto) -> set[str]:
    return {f"{proto.package}.{service.name}" for service in proto.service}


def _error(request: pb.ServerReflectionRequest, code: grpc.StatusCode
           ) -> pb.ServerReflectionResponse:
    number, text = code.value
    return pb.ServerReflectionResponse(
        original_request=request,
        error_response=pb.ErrorResponse(error_code=number, error_message=text),
    )


def add_reflection(server: grpc.Server | grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection (v1 and v1alpha) for `service_names` plus the reflection services."""
    catalogue = ContractCatalogue([*service_names, *REFLECTION_SERVICES])
    if isinstance(server, grpc.aio.Server):
        async def answer_async(
            requests: AsyncIterator[pb.ServerReflectionRequest | UndecodableRequest], context: Any
        ) -> AsyncIterator[pb.ServerReflectionResponse]:
            async for request in requests:
                if isinstance(request, UndecodableRequest):
                    await end_with(context, status_of(MalformedRequest(request.type_name)))
                yield catalogue.answer(request)

        behaviour: Any = answer_async
    else:
        def answer(
            requests: Iterator[pb.ServerReflectionRequest | UndecodableRequest], context: Any
        ) -> Iterator[pb.ServerReflectionResponse]:
            for request in requests:
                if isinstance(request, UndecodableRequest):
                    context.abort_with_status(status_of(MalformedRequest(request.type_name)))
                    raise AssertionError("abort_with_status returned")  # pragma: no cover
                yield catalogue.answer(request)

        behaviour = answer
    handler = grpc.stream_stream_rpc_method_handler(
        behaviour,
        request_deserializer=request_decoder(pb.ServerReflectionRequest.DESCRIPTOR),
        response_serializer=pb.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(tuple(
        grpc.method_handlers_generic_handler(name, {_METHOD: handler})
        for name in REFLECTION_SERVICES
    ))
