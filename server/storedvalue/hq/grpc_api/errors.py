"""The one place where HQ errors become gRPC statuses.

A `StoredValueError` becomes a `google.rpc.Status` with exactly one `google.rpc.ErrorInfo`
(AIP-193): fixed domain, the error's reason and metadata, and the status code the error class
declares. Anything else is a bug: the caller gets INTERNAL with a generic message and the log
gets the traceback (the log formatter masks card numbers).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from storedvalue.hq.domain.errors import StoredValueError
from storedvalue.hq.grpc_api.method_handlers import UndecodableRequest

ERROR_DOMAIN = "storedvalue.dev"
INTERNAL_MESSAGE = "internal error at HQ; it was logged"

log = logging.getLogger(__name__)

S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


def status_of(error: StoredValueError) -> grpc.Status:
    """The wire form of a business error."""
    code = grpc.StatusCode[error.code]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=error.message, details=[detail])
    )
    return status


def internal_status() -> grpc.Status:
    # No ErrorInfo: INTERNAL is not in the contract's reason list, and clients treat a
    # status without one as unexpected.
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    )
    return status


def _status_for(exc: Exception, method: str) -> grpc.Status:
    if isinstance(exc, StoredValueError):
        log.info(
            "%s refused: %s", method, exc.reason,
            extra={"rpc": method, "reason": exc.reason, "code": exc.code},
        )
        return status_of(exc)
    log.error("%s failed unexpectedly", method, exc_info=exc, extra={"rpc": method})
    return internal_status()


def unary_rpc(
    method: Callable[[S, Req, grpc.ServicerContext], Resp],
) -> Callable[[S, Req, grpc.ServicerContext], Resp]:
    """Wraps a unary servicer method: errors raised inside become statuses. An undecodable
    request is refused once the method got past its credential check (a method that never
    reads its request would otherwise answer it)."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Resp:
        try:
            response = method(self, request, context)
            if isinstance(request, UndecodableRequest):
                request.refuse()
            return response
        except Exception as exc:  # every failure must become a status
            status = _status_for(exc, name)
        # Outside the except block, so the exception abort raises is not caught above.
        context.abort_with_status(status)
        raise AssertionError("abort_with_status returned")  # pragma: no cover

    return wrapper


def streaming_rpc(
    method: Callable[[S, Req, grpc.ServicerContext], Iterator[Resp]],
) -> Callable[[S, Req, grpc.ServicerContext], Iterator[Resp]]:
    """Wraps a server-streaming servicer method the same way."""
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: S, request: Req, context: grpc.ServicerContext) -> Iterator[Resp]:
        try:
            for response in method(self, request, context):
                if isinstance(request, UndecodableRequest):
                    request.refuse()
                yield response
            return
        except Exception as exc:
            status = _status_for(exc, name)
        context.abort_with_status(status)

    return wrapper
