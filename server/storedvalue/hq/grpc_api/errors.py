"""The one place where HQ errors become gRPC statuses.

A `StoredValueError` becomes a `google.rpc.Status` with exactly one `google.rpc.ErrorInfo`
(AIP-193): fixed domain, the error's reason and metadata, and the status code the error class
declares; an error about one field adds a `google.rpc.BadRequest` naming it. Anything else
is a bug: the caller gets INTERNAL with a generic message and the log gets the traceback (the
log formatter masks card numbers).
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from storedvalue.hq.domain.errors import FieldError, StoredValueError

ERROR_DOMAIN = "storedvalue.dev"
INTERNAL_MESSAGE = "internal error at HQ; it was logged"

log = logging.getLogger(__name__)


def status_of(error: StoredValueError) -> grpc.Status:
    """The wire form of a business error: its one ErrorInfo, and for a missing or wrong
    field a google.rpc.BadRequest naming it too (what generic gRPC tooling shows)."""
    code = grpc.StatusCode[error.code]
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    ))
    details = [info]
    if isinstance(error, FieldError):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.description)
        bad_request = any_pb2.Any()
        bad_request.Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        details.append(bad_request)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=error.message, details=details)
    )
    return status


def internal_status() -> grpc.Status:
    # No ErrorInfo: INTERNAL is not in the contract's reason list, and clients treat a
    # status without one as unexpected.
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    )
    return status


def status_for(exc: BaseException, method: str) -> grpc.Status:
    """The status a failed call ends with: a business error's own, else INTERNAL (logged
    with its traceback: a bug)."""
    if isinstance(exc, StoredValueError):
        log.info(
            "%s refused: %s", method, exc.reason,
            extra={"rpc": method, "reason": exc.reason, "code": exc.code},
        )
        return status_of(exc)
    log.error("%s failed unexpectedly", method, exc_info=exc, extra={"rpc": method})
    return internal_status()


async def end_with(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    """End the call with `status` (raises, as `abort` does)."""
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover
