"""Terminals, their credentials and their offline sequence tracking."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from storedvalue.hq.domain.client_text import validate_free_text
from storedvalue.hq.domain.errors import InvalidField, TerminalRevoked

_TERMINAL_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_DISPLAY_NAME_LENGTH = 200


def is_valid_terminal_id(terminal_id: str) -> bool:
    # fullmatch: `$` would also match before a trailing newline.
    return _TERMINAL_ID.fullmatch(terminal_id) is not None


def validate_terminal_id(terminal_id: str, field: str = "terminal_id") -> str:
    if not is_valid_terminal_id(terminal_id):
        if not terminal_id:
            raise InvalidField(field, "is required")
        raise InvalidField(field, "must be 1-64 letters, digits, '-', '_' or '.'")
    return terminal_id


def validate_display_name(display_name: str) -> str:
    return validate_free_text(display_name, "display_name", max_length=MAX_DISPLAY_NAME_LENGTH)


def new_bearer_token() -> str:
    return "svt_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are 256 random bits, so a plain SHA-256 is a safe at-rest form (no salt or
    slow hash needed: there is nothing to brute-force)."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SequenceGap:
    first_missing: int
    last_missing: int


@dataclass(slots=True)
class Terminal:
    terminal_id: str
    display_name: str
    token_hash: str
    registered_at: datetime
    credential_issued_at: datetime
    highest_contiguous_sequence: int = 0
    highest_sequence_seen: int = 0
    last_synced_at: datetime | None = None
    store_id: str = ""  # "" for none: the terminal gets the global parameters
    revoked_at: datetime | None = None
    revoked_by: str = ""
    revocation_reason: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def revoke(self, *, by: str, reason: str, now: datetime) -> None:
        """Revoke the credential for good; a revoked terminal cannot be revoked again, nor
        get a new credential or another store."""
        self.refuse_if_revoked()
        self.revoked_at = now
        self.revoked_by = by
        self.revocation_reason = reason

    def refuse_if_revoked(self) -> None:
        if self.revoked_at is not None:
            raise TerminalRevoked(self.terminal_id)

    def record_sequences(self, received: Iterable[int], *, now: datetime) -> None:
        """Note newly received sequence numbers; `advance_contiguous` moves the mark."""
        top = max(received, default=0)
        self.highest_sequence_seen = max(self.highest_sequence_seen, top)
        self.last_synced_at = now

    def advance_contiguous(self, received_above_mark: Iterable[int]) -> list[SequenceGap]:
        """Given the sequence numbers HQ holds above the contiguous mark, move the mark as far
        as the unbroken run allows and return the gaps that remain."""
        mark = self.highest_contiguous_sequence
        above = sorted(filter(mark.__lt__, set(received_above_mark)))
        if not above or above[-1] - mark == len(above):
            # Each number once, all above the mark: they run on from it without a gap (a
            # synced batch's usual case), no need to walk them.
            self.highest_contiguous_sequence = above[-1] if above else mark
            return []
        run = 0  # how many of `above` extend the mark
        for seq in above:
            if seq != mark + 1:
                break
            mark = seq
            run += 1
        self.highest_contiguous_sequence = mark
        # Past the run, in order and unique already (none when the batch left no gap).
        return _gaps_after(mark, above[run:]) if run < len(above) else []


def sequence_gaps(contiguous_mark: int, received_above_mark: Iterable[int]) -> list[SequenceGap]:
    """Missing runs between the contiguous mark and the highest number received."""
    return _gaps_after(contiguous_mark, sorted(set(received_above_mark)))


def _gaps_after(contiguous_mark: int, received_in_order: Iterable[int]) -> list[SequenceGap]:
    """`sequence_gaps` of numbers already in increasing order, each once."""
    gaps: list[SequenceGap] = []
    expected = contiguous_mark + 1
    for seq in received_in_order:
        if seq < expected:
            continue
        if seq > expected:
            gaps.append(SequenceGap(expected, seq - 1))
        expected = seq + 1
    return gaps
