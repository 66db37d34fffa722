"""Capped exponential backoff with jitter, shared by the health probe and the sync agent."""

from __future__ import annotations

import random


class Backoff:
    """Delays ``initial * 2**n`` capped at ``maximum``; each drawn uniformly from the upper
    half of that window so that a fleet of tills reconnecting together spreads out."""

    def __init__(self, *, initial_s: float, maximum_s: float) -> None:
        self._initial = initial_s
        self._maximum = maximum_s
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._maximum, self._initial * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 62)
        # Jitter only spreads load; it needs no cryptographic quality.
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311

    def reset(self) -> None:
        self._attempt = 0
