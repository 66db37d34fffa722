"""One limit per till on answers that tell whether a card exists, so a till cannot enumerate
card numbers (README, "Unknown cards").

Every path that answers about a card (GetCard, LockCard, UnlockCard, Redeem, AddValue,
IssueCard with a pre-printed number, offline lines) goes through it. An answer that tells the
till something about a card it could not use (CARD_NOT_FOUND, CARD_ALREADY_EXISTS,
CURRENCY_MISMATCH) spends one lookup. Past `limit` of them in `window_seconds`, HQ stops
answering about any card the till does not hold a lock on: every such number gets the same
RATE_LIMITED whether it exists or not (only whether the till holds its lock counts), so the
refusal is no oracle and guessing is bounded by `limit` per window. Cards the till holds a
lock on (its sales in progress) are never refused, and its offline sales of the cards it
locked are always applied.

The counts live in this process: with several HQ replicas a till that spreads its calls over
them gets at most `limit` per window from each.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from storedvalue.hq.domain.cards import Card
from storedvalue.hq.domain.errors import RateLimited, StoredValueError


class UnknownCardThrottle:
    """At most `limit` revealing answers per till in any `window_seconds`."""

    def __init__(self, *, limit: int = 20, window_seconds: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"the unknown-card limit is at least 1, not {limit}")
        self._limit = limit
        self._window = window_seconds
        self._monotonic = monotonic
        self._misses: dict[str, deque[float]] = {}  # only tills with recent misses
        self._lock = threading.Lock()

    def remaining(self, caller: str) -> int:
        """How many more revealing answers the till may get now."""
        with self._lock:
            return self._limit - len(self._recent(caller))

    def admit(self, caller: str, card: Card | None) -> None:
        """The gate before any answer about `card` (None: the number is unknown): over the
        limit, only a card the caller holds a lock on is answered. A till with no misses
        kept (nearly every call) is admitted at once, without the lock: a dict's membership
        test is atomic, and a miss another thread records meanwhile could as well have come
        after this answer (the lock and the window's check cost 3.3K instructions a
        LockCard, callgrind)."""
        if caller not in self._misses:
            return
        if card is not None and card.is_locked_by(caller):
            return
        with self._lock:
            misses = self._recent(caller)
            if len(misses) < self._limit:
                return
            retry_after = misses[-self._limit] + self._window - self._monotonic()
        raise RateLimited(max(1, math.ceil(retry_after)))

    def record_misses(self, caller: str, count: int = 1) -> None:
        if count <= 0:
            return
        with self._lock:
            self._recent(caller)
            at = self._monotonic()
            self._misses.setdefault(caller, deque()).extend([at] * count)

    def count(self, error: StoredValueError, caller: str) -> None:
        """Count the answer a use case ended with, `error`, if it is a revealing one. Each
        use case calls this from `except StoredValueError` around its work (a context
        manager around it cost 4.3K instructions a call, callgrind, where the try costs
        nothing until something is raised)."""
        if error.reveals_card:
            self.record_misses(caller)

    def _recent(self, caller: str) -> deque[float]:
        """The till's misses still in the window (an empty deque when none)."""
        misses = self._misses.get(caller)
        if misses is None:
            return _NONE
        horizon = self._monotonic() - self._window
        while misses and misses[0] <= horizon:
            misses.popleft()
        if not misses:
            del self._misses[caller]
            return _NONE
        return misses


_NONE: deque[float] = deque()  # never appended to
