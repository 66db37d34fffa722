"""One hierarchy of business errors.

Each error declares its ``reason`` (the ErrorInfo reason, an ErrorReason name without its
prefix, see protos/storedvalue/v1/errors.proto) and its ``code`` (a gRPC status code name,
kept as a string so the domain never imports grpc). The transport maps them in one place.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar


class Reason(enum.StrEnum):
    """Every ErrorInfo reason HQ sends, in calls' errors and in offline sync results. The one
    rule (errors.proto, README): a reason is its storedvalue.v1.ErrorReason value's name
    without the ``ERROR_REASON_`` prefix, so ``CARD_LOCKED`` is ``ERROR_REASON_CARD_LOCKED``;
    a test checks this list against the enum both ways. Strings, so that the domain never
    imports protobuf."""

    INVALID_FIELD = "INVALID_FIELD"
    INVALID_CARD_NUMBER = "INVALID_CARD_NUMBER"
    INVALID_AMOUNT = "INVALID_AMOUNT"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    CARD_NOT_FOUND = "CARD_NOT_FOUND"
    TERMINAL_NOT_FOUND = "TERMINAL_NOT_FOUND"
    EXCEPTION_NOT_FOUND = "EXCEPTION_NOT_FOUND"
    CARD_ALREADY_EXISTS = "CARD_ALREADY_EXISTS"
    TERMINAL_ALREADY_EXISTS = "TERMINAL_ALREADY_EXISTS"
    CARD_LOCKED = "CARD_LOCKED"
    LOCK_NOT_HELD = "LOCK_NOT_HELD"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    CARD_FLAGGED = "CARD_FLAGGED"
    CARD_REDEEMED = "CARD_REDEEMED"
    CARD_KIND_NOT_SUPPORTED = "CARD_KIND_NOT_SUPPORTED"
    EXCEPTION_ALREADY_RESOLVED = "EXCEPTION_ALREADY_RESOLVED"
    LINE_REVERSED = "LINE_REVERSED"
    TERMINAL_REVOKED = "TERMINAL_REVOKED"
    PARAMETERS_VERSION_CONFLICT = "PARAMETERS_VERSION_CONFLICT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    HQ_BUSY = "HQ_BUSY"
    TOO_MANY_WATCHERS = "TOO_MANY_WATCHERS"
    CALL_TOO_LONG = "CALL_TOO_LONG"
    OFFLINE_OVERDRAFT = "OFFLINE_OVERDRAFT"
    OFFLINE_NOT_ALLOWED = "OFFLINE_NOT_ALLOWED"
    TRANSACTION_CONFLICT = "TRANSACTION_CONFLICT"
    ALREADY_REDEEMED_ONLINE = "ALREADY_REDEEMED_ONLINE"
    REMAINDER_MEMO_IN_USE = "REMAINDER_MEMO_IN_USE"
    REVERSAL_MISMATCH = "REVERSAL_MISMATCH"
    OFFLINE_LINE_LIMIT_EXCEEDED = "OFFLINE_LINE_LIMIT_EXCEEDED"
    OFFLINE_UNSYNCED_LIMIT_EXCEEDED = "OFFLINE_UNSYNCED_LIMIT_EXCEEDED"
    OFFLINE_DURATION_EXCEEDED = "OFFLINE_DURATION_EXCEEDED"


def mask_card_number(card_number: str) -> str:
    """What logs and error messages show of a card number: its last four digits."""
    return "*" * 4 + card_number[-4:] if len(card_number) > 4 else "****"


class StoredValueError(Exception):
    """Base of every error a caller can be told about."""

    reason: ClassVar[str] = "UNSPECIFIED"
    code: ClassVar[str] = "UNKNOWN"
    # Whether this answer tells a till something about a card it could not use (that the
    # number is unknown, or taken, or in which currency): such answers spend the till's
    # unknown-card lookup limit.
    reveals_card: ClassVar[bool] = False

    def __init__(self, message: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})


# INVALID_ARGUMENT: the request itself is wrong; retrying it unchanged cannot succeed.
class InvalidArgument(StoredValueError):
    code = "INVALID_ARGUMENT"


class FieldError(InvalidArgument):
    """One field of the request is missing or wrong. The transport adds a
    google.rpc.BadRequest detail naming it (`field`, `description`) beside the ErrorInfo
    (metadata `field`). A missing required field says "is required"."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}", {"field": field})
        self.field = field
        self.description = description


class InvalidField(FieldError):
    reason = Reason.INVALID_FIELD


class MalformedRequest(InvalidArgument):
    """The request's bytes are not a protobuf encoding of the request message."""

    reason = Reason.MALFORMED_REQUEST

    def __init__(self, request_type: str) -> None:
        super().__init__(
            f"the request is not a valid encoding of {request_type} (truncated, mistyped, "
            "or a string that is not UTF-8)",
            {"request_type": request_type},
        )


class InvalidCardNumber(FieldError):
    reason = Reason.INVALID_CARD_NUMBER

    def __init__(self, field: str = "card_number", *, missing: bool = False) -> None:
        super().__init__(
            field, "is required" if missing else "not 8 to 19 digits with a valid check digit"
        )


class InvalidAmount(FieldError):
    reason = Reason.INVALID_AMOUNT

    def __init__(self, field: str, description: str = "must be a positive amount") -> None:
        super().__init__(field, description)


class CurrencyMismatch(InvalidArgument):
    reason = Reason.CURRENCY_MISMATCH
    reveals_card = True

    def __init__(self, card_currency: str, request_currency: str) -> None:
        super().__init__(
            f"the card is in {card_currency}, the request in {request_currency}",
            {"card_currency": card_currency, "request_currency": request_currency},
        )


class RequestIdReused(InvalidArgument):
    reason = Reason.REQUEST_ID_REUSED

    def __init__(self, request_id: str) -> None:
        super().__init__(
            "this request_id was already used with different content",
            {"request_id": request_id},
        )


class LimitExceeded(InvalidArgument):
    reason = Reason.LIMIT_EXCEEDED

    def __init__(self, limit: str, maximum: int, value: int) -> None:
        super().__init__(
            f"{limit} is {maximum}, the request has {value}; nothing was applied",
            {"limit": limit, "maximum": str(maximum), "value": str(value)},
        )


# NOT_FOUND
class NotFound(StoredValueError):
    code = "NOT_FOUND"


class CardNotFound(NotFound):
    reason = Reason.CARD_NOT_FOUND
    reveals_card = True

    def __init__(self, card_number: str) -> None:
        masked = mask_card_number(card_number)
        super().__init__(f"no card {masked}", {"card": masked})


class TerminalNotFound(NotFound):
    reason = Reason.TERMINAL_NOT_FOUND

    def __init__(self, terminal_id: str) -> None:
        super().__init__(f"no terminal {terminal_id!r}", {"terminal_id": terminal_id})


class ExceptionNotFound(NotFound):
    reason = Reason.EXCEPTION_NOT_FOUND

    def __init__(self, exception_id: str) -> None:
        super().__init__(f"no offline exception {exception_id!r}", {"exception_id": exception_id})


# ALREADY_EXISTS
class AlreadyExists(StoredValueError):
    code = "ALREADY_EXISTS"


class CardAlreadyExists(AlreadyExists):
    reason = Reason.CARD_ALREADY_EXISTS
    reveals_card = True

    def __init__(self, card_number: str) -> None:
        masked = mask_card_number(card_number)
        super().__init__(f"card {masked} already exists", {"card": masked})


class TerminalAlreadyExists(AlreadyExists):
    reason = Reason.TERMINAL_ALREADY_EXISTS

    def __init__(self, terminal_id: str) -> None:
        super().__init__(
            f"terminal {terminal_id!r} is already registered", {"terminal_id": terminal_id}
        )


# FAILED_PRECONDITION: the request is fine but the card's state forbids it now.
class FailedPrecondition(StoredValueError):
    code = "FAILED_PRECONDITION"


class CardLocked(FailedPrecondition):
    reason = Reason.CARD_LOCKED

    def __init__(
        self,
        card_number: str,
        *,
        holder_terminal_id: str,
        holder_transaction_id: str,
        lease_expires_at: str,
    ) -> None:
        masked = mask_card_number(card_number)
        super().__init__(
            f"card {masked} is locked by terminal {holder_terminal_id} until {lease_expires_at}",
            {
                "card": masked,
                "holder_terminal_id": holder_terminal_id,
                "holder_transaction_id": holder_transaction_id,
                "lease_expires_at": lease_expires_at,
            },
        )


class LockNotHeld(FailedPrecondition):
    reason = Reason.LOCK_NOT_HELD

    def __init__(
        self, card_number: str, *, presented_token: int, current_token: int | None
    ) -> None:
        masked = mask_card_number(card_number)
        metadata = {"card": masked, "presented_fencing_token": str(presented_token)}
        if current_token is not None:
            metadata["current_fencing_token"] = str(current_token)
        super().__init__(
            f"this terminal does not hold the lock of card {masked} for this transaction",
            metadata,
        )


class InsufficientFunds(FailedPrecondition):
    reason = Reason.INSUFFICIENT_FUNDS

    def __init__(self, card_number: str, *, balance: int, requested: int, currency: str) -> None:
        masked = mask_card_number(card_number)
        super().__init__(
            f"card {masked} has {balance} {currency} (minor units), {requested} requested",
            {
                "card": masked,
                "balance_minor": str(balance),
                "requested_minor": str(requested),
                "currency_code": currency,
            },
        )


class CardFlagged(FailedPrecondition):
    reason = Reason.CARD_FLAGGED

    def __init__(self, card_number: str) -> None:
        masked = mask_card_number(card_number)
        super().__init__(
            f"card {masked} was overdrawn offline and is blocked until the back office "
            "resolves it",
            {"card": masked},
        )


class CardRedeemed(FailedPrecondition):
    reason = Reason.CARD_REDEEMED

    def __init__(self, card_number: str) -> None:
        masked = mask_card_number(card_number)
        super().__init__(f"credit memo {masked} was already used", {"card": masked})


class CardKindNotSupported(FailedPrecondition):
    reason = Reason.CARD_KIND_NOT_SUPPORTED

    def __init__(self, card_number: str, kind: str, operation: str) -> None:
        masked = mask_card_number(card_number)
        super().__init__(
            f"{operation} does not apply to {kind} {masked}", {"card": masked, "kind": kind}
        )


class ExceptionAlreadyResolved(FailedPrecondition):
    reason = Reason.EXCEPTION_ALREADY_RESOLVED

    def __init__(self, exception_id: str) -> None:
        super().__init__(
            f"offline exception {exception_id!r} is already resolved",
            {"exception_id": exception_id},
        )


class LineReversed(FailedPrecondition):
    """The terminal reversed this tender line: it is never debited (again)."""

    reason = Reason.LINE_REVERSED

    def __init__(self, transaction_id: str, line_id: str, reversal: str) -> None:
        super().__init__(
            f"line {line_id!r} of transaction {transaction_id!r} was reversed by this "
            f"terminal ({reversal}); it is never debited",
            {"transaction_id": transaction_id, "line_id": line_id, "reversal": reversal},
        )


class TerminalRevoked(FailedPrecondition):
    """The terminal's credential was revoked: it gets no new credential nor another store."""

    reason = Reason.TERMINAL_REVOKED

    def __init__(self, terminal_id: str) -> None:
        super().__init__(f"terminal {terminal_id!r} was revoked", {"terminal_id": terminal_id})


class ParametersVersionConflict(StoredValueError):
    reason = Reason.PARAMETERS_VERSION_CONFLICT
    code = "ABORTED"

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(
            f"parameters are at version {current}, not {expected}",
            {"expected_version": str(expected), "current_version": str(current)},
        )


class Unauthenticated(StoredValueError):
    reason = Reason.UNAUTHENTICATED
    code = "UNAUTHENTICATED"


class PermissionDenied(StoredValueError):
    reason = Reason.PERMISSION_DENIED
    code = "PERMISSION_DENIED"


class RateLimited(StoredValueError):
    reason = Reason.RATE_LIMITED
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, retry_after_seconds: int | None = None) -> None:
        if retry_after_seconds is None:  # an offline item: nothing to retry
            super().__init__(
                "too many lookups of unknown cards from this terminal: cards it did not lock "
                "for this sale were not looked up; the transaction is kept for review"
            )
            return
        super().__init__(
            f"too many lookups of unknown cards; retry in {retry_after_seconds} s",
            {"retry_after_seconds": str(retry_after_seconds)},
        )


class HQBusy(StoredValueError):
    """The database stayed busy through every retry; nothing was applied. Transient."""

    reason = Reason.HQ_BUSY
    code = "UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__("HQ is busy: the change lost every retry against concurrent updates; "
                         "nothing was applied, retry with backoff")


class TooManyWatchers(StoredValueError):
    """This HQ process already serves its maximum of WatchParameters streams."""

    reason = Reason.TOO_MANY_WATCHERS
    code = "RESOURCE_EXHAUSTED"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this HQ replica already serves {limit} parameter watchers; retry later or "
            "on another replica (GetParameters still works)",
            {"limit": str(limit)},
        )


class CallTooLong(StoredValueError):
    """A unary call ran past HQ's own deadline for calls."""

    reason = Reason.CALL_TOO_LONG
    code = "DEADLINE_EXCEEDED"

    def __init__(self, limit_seconds: float) -> None:
        super().__init__(
            f"HQ ended the call after its limit of {limit_seconds:g} s; a change it carried "
            "may or may not be applied: retry with the same request_id",
            {"limit_seconds": f"{limit_seconds:g}"},
        )
