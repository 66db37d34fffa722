"""What a servicer reads from a call besides the request: the credential, the request key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import grpc
from google.protobuf.message import Message

from storedvalue.hq.grpc_api.convert import request_fingerprint
from storedvalue.hq.services.auth import Caller
from storedvalue.hq.services.idempotency import RequestKey


def authorization(context: grpc.ServicerContext) -> str | None:
    """The `authorization` metadata value (gRPC lower-cases metadata keys)."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def client_certificate_names(context: grpc.ServicerContext) -> tuple[str, ...]:
    """Common names of the connection's verified client certificate (mutual TLS only)."""
    # grpcio returns property name -> iterable of bytes (its type stubs say otherwise).
    properties: Mapping[str, Iterable[bytes]] = cast(Any, context.auth_context()) or {}
    return tuple(n.decode("utf-8", "replace") for n in properties.get("x509_common_name", ()))


def request_key(caller: Caller, request: Message, operation: str) -> RequestKey:
    """AIP-155 key of a mutating request: its id in the caller's namespace, the RPC, and a
    digest of its content."""
    request_id: str = getattr(request, "request_id")  # noqa: B009 - every mutating request has it
    return RequestKey(caller.request_scope, request_id, operation, request_fingerprint(request))
