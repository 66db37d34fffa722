"""Rate limit for lookups of unknown cards, so a till cannot enumerate card numbers."""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

from storedvalue.hq.domain.errors import RateLimited


class UnknownCardThrottle:
    """At most `limit` unknown-card lookups per caller in any `window_seconds`; past that
    every lookup is refused with RATE_LIMITED until the window slides."""

    def __init__(self, *, limit: int = 20, window_seconds: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window_seconds
        self._monotonic = monotonic
        self._misses: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def check(self, caller: str) -> None:
        with self._lock:
            misses = self._prune(caller)
            if len(misses) >= self._limit:
                retry_after = misses[0] + self._window - self._monotonic()
                raise RateLimited(max(1, math.ceil(retry_after)))

    def record_miss(self, caller: str) -> None:
        with self._lock:
            self._prune(caller).append(self._monotonic())

    def _prune(self, caller: str) -> deque[float]:
        misses = self._misses[caller]
        horizon = self._monotonic() - self._window
        while misses and misses[0] <= horizon:
            misses.popleft()
        return misses
