"""The terminal's one error hierarchy and the one place that maps gRPC failures onto it.

Each class declares the ``ErrorInfo`` reasons it stands for and registers itself for them
when it is defined (``local=True`` for errors the library raises itself, never mapped from
HQ); ``error_from_rpc`` reads the ``google.rpc.Status`` HQ put in the
``grpc-status-details-bin`` trailer and picks the class. Every reason of the contract has a
class or is one of the documented ``FALLBACK_REASONS``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar, cast

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ._model import LineResult, Money, SaleResult

ERROR_DOMAIN = "storedvalue.dev"

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
"""Codes that mean "the link to HQ is down": the terminal switches to OFFLINE."""

RETRYABLE_SYNC_CODES = TRANSIENT_CODES | {grpc.StatusCode.RESOURCE_EXHAUSTED}
"""Codes a sync batch is resent after (with backoff); anything else is never retried blindly."""


FALLBACK_REASONS = frozenset({
    # The back office's: a till never calls those RPCs.
    "TERMINAL_NOT_FOUND", "TERMINAL_ALREADY_EXISTS", "EXCEPTION_NOT_FOUND",
    "EXCEPTION_ALREADY_RESOLVED", "PARAMETERS_VERSION_CONFLICT", "TERMINAL_REVOKED",
    # Per-item outcomes of offline sync: in SyncResult, never raised.
    "OFFLINE_OVERDRAFT", "OFFLINE_NOT_ALLOWED", "TRANSACTION_CONFLICT",
    "ALREADY_REDEEMED_ONLINE", "REMAINDER_MEMO_IN_USE", "REVERSAL_MISMATCH",
    "OFFLINE_LINE_LIMIT_EXCEEDED", "OFFLINE_UNSYNCED_LIMIT_EXCEEDED",
    "OFFLINE_DURATION_EXCEEDED",
    # Handled by the library: TOO_MANY_WATCHERS ends a WatchParameters stream, followed
    # again after a backoff; CALL_TOO_LONG is DEADLINE_EXCEEDED, a lost link.
    "TOO_MANY_WATCHERS", "CALL_TOO_LONG",
})
"""The contract's reasons with no class of their own. A call failing with one raises the
class of its status code (``InvalidArgument``, ``CardNotFound``, ``Unauthenticated``,
``PermissionDenied``, ``RateLimited``, ``HQUnavailable`` for a transient code) or
``UnexpectedError``, its ``reason`` and ``metadata`` as HQ sent them."""

_BY_REASON: dict[str, type[TerminalError]] = {}
"""Filled by the classes themselves as they are defined (``TerminalError.__init_subclass__``)."""


class TerminalError(Exception):
    """Base of every error the terminal library raises.

    Raised by ``complete_sale``, an error also says which line it refused (``line_id``) and
    which lines of the sale HQ has debited so far (``paid_lines``, with their results): the
    sale stays open and those lines are paid."""

    reasons: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, *, local: bool = False, **kwargs: object) -> None:
        """Register the class for the reasons it declares itself (not those it inherits), so
        ``error_from_rpc`` builds it, as ``cls(details, reason=, metadata=, code=)``, from
        an HQ failure with one of them. ``local=True``: the library raises it itself."""
        super().__init_subclass__(**kwargs)
        if local:
            return
        for reason in cls.__dict__.get("reasons", ()):
            taken = _BY_REASON.setdefault(reason, cls)
            if taken is not cls:
                raise TypeError(f"reason {reason} is already {taken.__name__}'s")

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or (self.reasons[0] if self.reasons else "")
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.code = code
        self.line_id = ""
        """The line of a multi-line sale this error refused; empty when not about a line."""
        self.paid_lines: tuple[LineResult, ...] = ()
        """The sale's lines HQ debited before the refusal (they stay paid)."""

    def _refusing(self, line_id: str, paid_lines: tuple[LineResult, ...]) -> TerminalError:
        """This error, naming the line it refused and the lines already paid."""
        self.line_id = line_id
        self.paid_lines = paid_lines
        return self


class UnexpectedError(TerminalError):
    """HQ failed in a way the contract does not list (unknown reason, INTERNAL, ...)."""


class HQUnavailable(TerminalError):
    """HQ could not be reached: the link is down, the call timed out, or the terminal is
    OFFLINE and did not try. ``request_sent`` tells whether the request may have reached HQ
    (so its effect is unknown)."""

    def __init__(self, message: str, *, request_sent: bool, code: grpc.StatusCode | None) -> None:
        super().__init__(message, code=code)
        self.request_sent = request_sent


class TlsProblem(enum.Enum):
    """What stands between a client and HQ at the TLS handshake."""

    CLIENT_CERTIFICATE_REFUSED = "CLIENT_CERTIFICATE_REFUSED"
    """HQ refused this client's certificate: none given, expired, not valid yet, or issued by
    a CA HQ does not trust for clients."""
    HQ_NOT_TRUSTED = "HQ_NOT_TRUSTED"
    """This client does not trust HQ's certificate: another CA, another name, expired."""
    HQ_NOT_TLS = "HQ_NOT_TLS"
    """This client speaks TLS and HQ answered in plaintext."""
    HQ_REQUIRES_TLS = "HQ_REQUIRES_TLS"
    """This client connects in plaintext and HQ speaks TLS."""
    CLIENT_FILES_UNUSABLE = "CLIENT_FILES_UNUSABLE"
    """This client's CA, certificate or key file is missing, unreadable, not PEM, encrypted,
    or the key does not belong to the certificate."""
    HANDSHAKE_FAILED = "HANDSHAKE_FAILED"
    """Another handshake failure (the message has the TLS library's words)."""


class HandshakeFailed(TerminalError, local=True):
    """The TLS handshake with HQ failed: a certificate problem on this till or at HQ, not a
    lost link. The terminal does not go OFFLINE for it (sales do not complete offline for a
    configuration error; each call raises this instead), and the request never left.
    ``problem`` says what is wrong and the message what to fix; once it is fixed (at HQ, or
    new files on the till, read again at the next call) calls go through. ``code`` is None:
    the call never got as far as a gRPC status."""

    reasons = ("TLS_HANDSHAKE_FAILED",)

    def __init__(self, problem: TlsProblem, message: str) -> None:
        super().__init__(message, metadata={"problem": problem.value})
        self.problem = problem


class HQBusy(HQUnavailable):
    """HQ answered, but its database stayed busy: nothing was applied (so the request's
    effect is known, ``request_sent`` is False). Transient, like a lost link: retry later."""

    reasons = ("HQ_BUSY",)

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        code: grpc.StatusCode | None = None,
    ) -> None:
        super().__init__(message, request_sent=False, code=code)
        self.reason = reason or "HQ_BUSY"
        self.metadata = dict(metadata or {})


class InvalidArgument(TerminalError):
    reasons: ClassVar[tuple[str, ...]] = (
        "INVALID_FIELD", "INVALID_CARD_NUMBER", "INVALID_AMOUNT", "MALFORMED_REQUEST"
    )

    @property
    def field(self) -> str:
        return self.metadata.get("field", "")


class CurrencyMismatch(InvalidArgument):
    reasons = ("CURRENCY_MISMATCH",)


class RequestIdReused(InvalidArgument):
    reasons = ("REQUEST_ID_REUSED",)


class LimitExceeded(InvalidArgument):
    reasons = ("LIMIT_EXCEEDED",)


class CardNotFound(TerminalError):
    reasons = ("CARD_NOT_FOUND",)


class CardAlreadyExists(TerminalError):
    reasons = ("CARD_ALREADY_EXISTS",)


class CardLocked(TerminalError):
    """Another terminal or transaction holds the card's lock."""

    reasons = ("CARD_LOCKED",)

    @property
    def holder_terminal_id(self) -> str:
        return self.metadata.get("holder_terminal_id", "")

    @property
    def holder_transaction_id(self) -> str:
        return self.metadata.get("holder_transaction_id", "")

    @property
    def lease_expires_at(self) -> datetime | None:
        return _parse_rfc3339(self.metadata.get("lease_expires_at", ""))


class LockNotHeld(TerminalError):
    reasons = ("LOCK_NOT_HELD",)


class InsufficientFunds(TerminalError):
    reasons = ("INSUFFICIENT_FUNDS",)

    @property
    def balance_minor(self) -> int | None:
        return _parse_int(self.metadata.get("balance_minor", ""))

    @property
    def requested_minor(self) -> int | None:
        return _parse_int(self.metadata.get("requested_minor", ""))


class CardFlagged(TerminalError):
    reasons = ("CARD_FLAGGED",)


class CardRedeemed(TerminalError):
    reasons = ("CARD_REDEEMED",)


class CardKindNotSupported(TerminalError):
    reasons = ("CARD_KIND_NOT_SUPPORTED",)


class Unauthenticated(TerminalError):
    reasons = ("UNAUTHENTICATED",)


class PermissionDenied(TerminalError):
    reasons = ("PERMISSION_DENIED",)


class RateLimited(TerminalError):
    reasons = ("RATE_LIMITED",)

    @property
    def retry_after_seconds(self) -> int | None:
        return _parse_int(self.metadata.get("retry_after_seconds", ""))


class LineReversed(TerminalError):
    """HQ refused a Redeem of a line this terminal reversed (its reversal got there first)."""

    reasons = ("LINE_REVERSED",)


class TenderNotFound(TerminalError, local=True):
    """Raised locally: the sale has no tender (locked card) for this card number."""

    reasons = ("TENDER_NOT_FOUND",)


class SaleAlreadyCompleted(TerminalError, local=True):
    """Raised locally: the sale was already completed on this terminal, and this call is not
    a retry of that completion (``complete_sale`` with the same lines returns ``result``
    instead), or would add to it (a tender, an abandon)."""

    reasons = ("SALE_ALREADY_COMPLETED",)

    def __init__(self, message: str, *, result: SaleResult | None = None) -> None:
        super().__init__(message)
        self.result = result
        """How the sale was completed."""


class SaleAbandoned(TerminalError, local=True):
    """Raised locally: the sale was abandoned on this terminal; its transaction id cannot be
    used again."""

    reasons = ("SALE_ABANDONED",)


class RedeemOutcomeUnknown(TerminalError, local=True):
    """Raised locally by ``complete_sale``: a line uses the card of another line of the sale
    whose Redeem was sent and never answered (HQ may have debited that card for it). Resend
    that line unchanged, or leave the card out: the unanswered line is then reversed.
    ``line_ids`` names the unanswered lines."""

    reasons = ("REDEEM_OUTCOME_UNKNOWN",)

    def __init__(self, message: str, *, line_ids: tuple[str, ...]) -> None:
        super().__init__(message, metadata={"line_ids": ",".join(line_ids)})
        self.line_ids = line_ids


LIMIT_REFUSALS = {
    "OFFLINE_LINE_LIMIT_EXCEEDED": "max_line_amount",
    "OFFLINE_UNSYNCED_LIMIT_EXCEEDED": "max_unsynced_amount",
    "OFFLINE_DURATION_EXCEEDED": "max_offline_duration",
}
"""The refusals that come from an offline risk limit, and the limit each one names."""


@dataclass(frozen=True)
class OfflineRefusal:
    """Why one line cannot be completed offline."""

    line_id: str
    card_number: str
    why: str
    """``KIND_NOT_ALLOWED`` (HQ parameters forbid this card kind offline), ``NOT_LOCKED`` (this
    terminal did not lock the card for this sale before the link dropped), ``LOCK_UNCONFIRMED``
    (LockCard was sent but its answer never came: HQ may have refused it), ``OVER_BALANCE``
    (more than the balance seen at lock time), ``CURRENCY_MISMATCH``, or an offline risk
    limit of the card's kind: ``OFFLINE_LINE_LIMIT_EXCEEDED``,
    ``OFFLINE_UNSYNCED_LIMIT_EXCEEDED`` or ``OFFLINE_DURATION_EXCEEDED``."""
    amount_left: Money | None = None
    """For a refusal by an amount limit: how much the limit still allows (for the line limit,
    the largest line; for the unsynced limit, what is left of it before this line), in the
    limit's currency; zero for a line in another currency."""
    time_left: timedelta | None = None
    """For ``OFFLINE_DURATION_EXCEEDED``: zero (the time the limit allowed is used up)."""

    @property
    def limit(self) -> str:
        """The offline risk limit that refused the line (``max_line_amount``,
        ``max_unsynced_amount``, ``max_offline_duration``); empty for other refusals."""
        return LIMIT_REFUSALS.get(self.why, "")


class OfflineNotAllowed(TerminalError, local=True):
    """Raised locally: HQ is unreachable and some lines may not complete offline. The sale is
    still open and nothing of it was lost; ``line_ids`` names the refused lines."""

    reasons: ClassVar[tuple[str, ...]] = ("OFFLINE_NOT_ALLOWED",)

    def __init__(self, refusals: tuple[OfflineRefusal, ...]) -> None:
        names = ", ".join(f"{r.line_id} ({r.why})" for r in refusals)
        super().__init__(f"these lines cannot complete offline: {names}")
        self.refusals = refusals
        self.line_id = refusals[0].line_id if refusals else ""

    @property
    def line_ids(self) -> tuple[str, ...]:
        return tuple(r.line_id for r in self.refusals)

    @staticmethod
    def of(refusals: tuple[OfflineRefusal, ...]) -> OfflineNotAllowed:
        """The error for these refusals: OfflineLimitExceeded when only risk limits refused
        lines (the sale could complete offline within them), else OfflineNotAllowed."""
        if refusals and all(r.limit for r in refusals):
            return OfflineLimitExceeded(refusals)
        return OfflineNotAllowed(refusals)


class OfflineLimitExceeded(OfflineNotAllowed, local=True):
    """Raised locally: HQ is unreachable and a line would take the terminal past an offline
    risk limit of HQ's parameters. The sale is still open and nothing of it was lost: the
    cashier takes another tender for what is over the limit, or waits for HQ. ``limit`` names
    the limit of the first refused line and ``amount_left`` (or ``time_left``) what it still
    allows; ``refusals`` has every refused line."""

    reasons = ("OFFLINE_LIMIT_EXCEEDED",)

    def __init__(self, refusals: tuple[OfflineRefusal, ...]) -> None:
        super().__init__(refusals)
        first = refusals[0]
        left = (f"{first.amount_left.amount_minor} minor units of "
                f"{first.amount_left.currency_code} left" if first.amount_left is not None
                else "no time left")
        self.message = (f"line {first.line_id} is over the offline limit {first.limit} "
                        f"({left}); the sale stays open")
        self.args = (self.message,)
        metadata = {"limit": first.limit, "line_id": first.line_id}
        if first.amount_left is not None:
            metadata["amount_left_minor"] = str(first.amount_left.amount_minor)
            metadata["currency_code"] = first.amount_left.currency_code
        self.metadata = metadata

    @property
    def limit(self) -> str:
        return self.refusals[0].limit

    @property
    def amount_left(self) -> Money | None:
        return self.refusals[0].amount_left

    @property
    def time_left(self) -> timedelta | None:
        return self.refusals[0].time_left


_BY_CODE: dict[grpc.StatusCode, type[TerminalError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: CardNotFound,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimited,
}


def error_from_rpc(error: grpc.RpcError) -> TerminalError:
    """Translate a failed call into the typed error a POS application catches."""
    code = rpc_code(error)
    if code is None:
        return UnexpectedError(str(error))
    call = cast(grpc.Call, error)
    details = call.details() or ""
    info = _error_info(call)
    if code in TRANSIENT_CODES:
        if info is not None and info.reason == "HQ_BUSY":
            return HQBusy(details, reason=info.reason, metadata=dict(info.metadata), code=code)
        return HQUnavailable(details or code.name, request_sent=True, code=code)
    if info is not None and info.domain == ERROR_DOMAIN and info.reason in _BY_REASON:
        cls = _BY_REASON[info.reason]
        return cls(details, reason=info.reason, metadata=dict(info.metadata), code=code)
    fallback = _BY_CODE.get(code, UnexpectedError)
    reason = info.reason if info is not None else ""
    metadata = dict(info.metadata) if info is not None else {}
    return fallback(details or code.name, reason=reason, metadata=metadata, code=code)


def rpc_code(error: grpc.RpcError) -> grpc.StatusCode | None:
    """The status code of a failed call (None for an RpcError that is not a call)."""
    code = getattr(error, "code", None)
    return code() if callable(code) else None


def _error_info(call: grpc.Call) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def _parse_rfc3339(text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _parse_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None
