"""The load of bench/load_client.py (same workers, same channels) for bench/hq_timeline.py:
instead of latencies, the `time.monotonic()` second of every answered call, so that the
rate can be followed second by second over a long run and set beside what the server did
in that second. Prints one JSON line: ``{"completed": N, "per_second": {second: calls},
"errors": {...}, "first_error": ...}``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from children import answer
from load_client import Window, drive


class SecondsWindow(Window):
    """Counts answered calls by the whole monotonic second they were answered in."""

    def __init__(self, start: float, end: float) -> None:
        super().__init__(start, end)
        self.per_second: Counter[int] = Counter()

    def record(self, began: float) -> None:
        self.completed += 1
        self.per_second[int(time.monotonic())] += 1


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    seconds = float(spec["seconds"])
    window = await drive(spec, lambda now: SecondsWindow(now, now + seconds))
    return {"completed": window.completed,
            "per_second": {str(second): calls for second, calls in window.per_second.items()},
            "errors": dict(window.errors), "first_error": window.first_error}


if __name__ == "__main__":
    answer(lambda spec: asyncio.run(run(spec)))
