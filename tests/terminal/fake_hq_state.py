"""The fake HQ's in-memory state: cards, locks, credentials, parameters, and the failures
tests script into it. Also how it reports errors: one ErrorInfo in a google.rpc.Status."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from storedvalue.v1 import common_pb2, offline_pb2, parameters_pb2

_CODES = {
    "INVALID_FIELD": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_AMOUNT": grpc.StatusCode.INVALID_ARGUMENT,
    "CURRENCY_MISMATCH": grpc.StatusCode.INVALID_ARGUMENT,
    "REQUEST_ID_REUSED": grpc.StatusCode.INVALID_ARGUMENT,
    "LIMIT_EXCEEDED": grpc.StatusCode.INVALID_ARGUMENT,
    "CARD_NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "CARD_ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "CARD_LOCKED": grpc.StatusCode.FAILED_PRECONDITION,
    "LOCK_NOT_HELD": grpc.StatusCode.FAILED_PRECONDITION,
    "INSUFFICIENT_FUNDS": grpc.StatusCode.FAILED_PRECONDITION,
    "CARD_FLAGGED": grpc.StatusCode.FAILED_PRECONDITION,
    "CARD_REDEEMED": grpc.StatusCode.FAILED_PRECONDITION,
    "CARD_KIND_NOT_SUPPORTED": grpc.StatusCode.FAILED_PRECONDITION,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class HQError(Exception):
    def __init__(self, reason: str, message: str = "", **metadata: str) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.metadata = metadata


def abort(context: grpc.ServicerContext, error: HQError) -> None:
    code = _CODES[error.reason]
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain="storedvalue.dev", metadata=error.metadata
        )
    )
    status = status_pb2.Status(code=code.value[0], message=str(error), details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


def now_pb(moment: datetime | None = None) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment or datetime.now(UTC))
    return ts


@dataclass
class FakeLock:
    terminal_id: str
    transaction_id: str
    fencing_token: int
    lease_expires_at: datetime


@dataclass
class FakeCard:
    number: str
    kind: int
    balance: int
    currency: str
    status: int = common_pb2.CARD_STATUS_ACTIVE
    lock: FakeLock | None = None
    last_token: int = 0
    remainder_of: str = ""

    def live_lock(self) -> FakeLock | None:
        if self.lock is not None and self.lock.lease_expires_at > datetime.now(UTC):
            return self.lock
        return None

    def to_pb(self) -> common_pb2.Card:
        card = common_pb2.Card(
            card_number=self.number,
            kind=self.kind,  # type: ignore[arg-type]
            status=self.status,  # type: ignore[arg-type]
            balance=common_pb2.Money(amount_minor=self.balance, currency_code=self.currency),
            remainder_of_card_number=self.remainder_of,
        )
        lock = self.live_lock()
        if lock is not None:
            card.lock.CopyFrom(lock_pb(self.number, lock))
        return card


def lock_pb(number: str, lock: FakeLock) -> common_pb2.Lock:
    return common_pb2.Lock(
        card_number=number,
        terminal_id=lock.terminal_id,
        transaction_id=lock.transaction_id,
        fencing_token=lock.fencing_token,
        lease_expires_at=now_pb(lock.lease_expires_at),
    )


@dataclass
class HQState:
    """Everything the fake HQ knows; guarded by ``mutex``."""

    mutex: threading.Condition = field(default_factory=threading.Condition)
    cards: dict[str, FakeCard] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    parameters: parameters_pb2.Parameters = field(default_factory=parameters_pb2.Parameters)
    limits: parameters_pb2.SyncLimits = field(
        default_factory=lambda: parameters_pb2.SyncLimits(
            max_transactions_per_batch=1000,
            max_lines_per_transaction=100,
            max_message_bytes=4 << 20,
        )
    )
    requests: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict)
    online_redeemed: dict[tuple[str, str, str], int] = field(default_factory=dict)
    offline: dict[tuple[str, str], tuple[bytes, offline_pb2.OfflineTransactionResult]] = field(
        default_factory=dict
    )
    sequences: dict[str, list[int]] = field(default_factory=dict)
    redeem_script: list[str] = field(default_factory=list)
    """Steps for the next Redeem calls: "normal", "cut_link_before", "cut_link_after",
    "black_hole", or an error reason HQ answers without applying anything ("RATE_LIMITED")."""
    unlock_script: list[str] = field(default_factory=list)
    """Steps for the next UnlockCard calls: "normal" or an error reason to answer with."""
    lock_script: list[str] = field(default_factory=list)
    """Steps for the next LockCard calls: "normal", or "cut_link_after" (HQ commits the
    lock, then the link drops and the answer is lost)."""
    sync_failures: list[grpc.StatusCode] = field(default_factory=list)
    sync_batch_sizes: list[int] = field(default_factory=list)
    sync_calls: int = 0
    sync_answers_to_drop: int = 0
    redeem_calls: int = 0
    next_card: int = 0

