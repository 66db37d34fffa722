"""What a call carries besides the request: the credential and the request key (the client
certificate: `client_certificates`)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from typing import cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from storedvalue.hq.grpc_api.convert.common import request_fingerprint, varint
from storedvalue.hq.services.auth import Caller
from storedvalue.hq.services.idempotency import RequestKey, content_kept

try:  # CPython's own SHA-256 (`_sha2` from 3.12): the same digest as hashlib's
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
    except ImportError:
        from hashlib import sha256 as _sha256  # type: ignore[assignment, unused-ignore]


def authorization(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The `authorization` value of a call's metadata (gRPC lower-cases metadata keys)."""
    for key, value in metadata or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def request_key(caller: Caller, request: Message, operation: str,
                serialized: bytes | None = None) -> RequestKey:
    """AIP-155 key of a mutating request: its id in the caller's namespace, the RPC, and a
    digest of its content. `serialized`: the request's deterministic serialization, when the
    caller made it already."""
    request_id: str = request.request_id  # type: ignore[attr-defined]  # every mutating request has it
    return RequestKey(caller.request_scope, request_id, operation,
                      fingerprint(request, request_id, serialized))


def fingerprint(request: Message, request_id: str | None = None,
                serialized: bytes | None = None) -> bytes:
    """The request's fingerprint (see `RequestKey`): its content when `content_kept`, else
    `convert.common.request_fingerprint(request)`, without copying the request: when
    request_id is the message's first field, its deterministic serialization is the
    request_id's record followed by exactly what the request without it serializes to.
    `request_id`: the request's, when the caller read it already; `serialized`: its
    deterministic serialization, likewise. (Every online call fingerprints its request: the
    message class's tag is found with one dict look-up, and a digest is made by `_sha256`,
    which costs a quarter less than OpenSSL's through `hashlib` for a request of a few
    hundred bytes.)"""
    known = _ID_TAGS.get(type(request), _NOT_SEEN)
    if known is _NOT_SEEN:
        known = _ID_TAGS[type(request)] = _leading_id_tag(
            type(request), cast(Descriptor, request.DESCRIPTOR))
    if known is None:
        return request_fingerprint(request)
    tag, first, serialize = known
    data = serialize(request) if serialized is None else serialized
    if request_id is None:
        request_id = cast(str, getattr(request, "request_id"))  # noqa: B009 - tag checked
    if request_id:
        # A record that starts with request_id's tag is request_id's (no other field has its
        # number, and a serializer writes a singular field once), so only its length is
        # read: a one-byte one (an id of fewer than 128 bytes) at once, without encoding the
        # id to compare it (`bytes.startswith` alone costs ~1K instructions, callgrind).
        if data[0] == first and (size := data[1]) < 0x80:
            data = data[size + 2 :]
        else:
            encoded = request_id.encode()
            record = tag + varint(len(encoded)) + encoded
            if not data.startswith(record):
                return request_fingerprint(request)
            data = data[len(record) :]
    size = len(data)
    if content_kept(size):
        return data
    # A large request (an offline batch) is digested by OpenSSL's, several times faster a
    # byte (SHA instructions) once past its dearer start.
    digest: bytes = (_sha256(data) if size < _OPENSSL_FROM_BYTES
                     else hashlib.sha256(data)).digest()
    return digest


_OPENSSL_FROM_BYTES = 1024


Serializer = Callable[[Message], bytes]

# By message class: request_id's wire tag, its byte when the tag is one byte long (else -1),
# and the class's deterministic serialization; or None (see `_leading_id_tag`).
_IdTag = tuple[bytes, int, Serializer]
_ID_TAGS: dict[type[Message], _IdTag | None] = {}
_NOT_SEEN: _IdTag = (b"-", -1, Message.SerializeToString)  # by identity


def _leading_id_tag(message_class: type[Message], descriptor: Descriptor) -> _IdTag | None:
    """The wire tag of request_id when it is a string without presence numbered below every
    other field, with the deterministic serialization of `message_class`; None otherwise.
    Deterministic serialization only orders maps' entries: a message without any map, at
    any depth, is serialized without asking (the keyword costs 1.3K instructions of the
    4.3K of a Redeem request's serialization, callgrind)."""
    field = descriptor.fields_by_name.get("request_id")
    if (
        field is not None
        and field.type == FieldDescriptor.TYPE_STRING
        and not field.has_presence
        and all(field.number < other.number for other in descriptor.fields if other is not field)
        and not descriptor.GetOptions().message_set_wire_format
    ):
        serialize: Serializer = message_class.SerializeToString
        if _has_maps(descriptor, set()):
            serialize = functools.partial(message_class.SerializeToString, deterministic=True)
        tag = varint(field.number << 3 | 2)
        return tag, tag[0] if len(tag) == 1 else -1, serialize
    return None


def _has_maps(descriptor: Descriptor, seen: set[str]) -> bool:
    seen.add(descriptor.full_name)
    for field in descriptor.fields:
        nested = field.message_type
        if nested is None:
            continue
        if nested.GetOptions().map_entry:
            return True
        if nested.full_name not in seen and _has_maps(nested, seen):
            return True
    return False
