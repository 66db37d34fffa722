"""The metrics `run.py` prints: their units and budgets (DESIGN.md section 7, issue 10), and
the one JSON line each becomes.

A line always carries a value or, when the figure could not be measured, ``"value": null``
and an ``error`` saying why; ``met`` is then null too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class Budget:
    """A bound the value must stay on the right side of."""

    op: Literal[">=", "<="]
    limit: float

    def met(self, value: float) -> bool:
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        return f"{self.op} {self.limit:g}"


@dataclass(frozen=True)
class MetricSpec:
    name: str
    unit: str
    budget: Budget | None
    """None for a figure reported beside a budgeted one (concurrency 1 and 64)."""
    what: str


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("online_cycle_vs_echo", "ratio", Budget(">=", 0.60),
               "LockCard+Redeem calls/s over grpc.aio echo calls/s, concurrency 16"),
    MetricSpec("online_cycle_p99_vs_echo", "ratio", Budget("<=", 3.0),
               "LockCard+Redeem per-call p99 over echo p99, concurrency 16"),
    MetricSpec("online_cycle_vs_echo_c1", "ratio", None,
               "as online_cycle_vs_echo, concurrency 1"),
    MetricSpec("online_cycle_vs_echo_c64", "ratio", None,
               "as online_cycle_vs_echo, concurrency 64"),
    MetricSpec("stalled_300_getcard_p99_ratio", "ratio", Budget("<=", 2.0),
               "GetCard p99 while 300 unauthenticated calls stall over GetCard p99 without"),
    MetricSpec("offline_complete_p99_ms", "ms", Budget("<=", 2.0),
               "terminal library completing a sale on a till already offline, p99"),
    MetricSpec("first_offline_over_deadline_ms", "ms", Budget("<=", 50.0),
               "first sale after the link drops, minus the configured call deadline (worst)"),
    MetricSpec("sync_tx_per_s_100k", "tx/s", Budget(">=", 20_000.0),
               "offline transactions from a till's outbox to applied at HQ, per second"),
    MetricSpec("sync_time_ratio_10x", "ratio", Budget("<=", 11.0),
               "sync time for 10x the transactions over the time for 1x"),
    MetricSpec("param_propagation_ms", "ms", Budget("<=", 1_000.0),
               "parameter change until the slowest of 20 terminals applied it (worst change)"),
    MetricSpec("watchers_5000_propagation_ms", "ms", Budget("<=", 1_000.0),
               "parameter change until the slowest of 5,000 WatchParameters streams saw it"),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


class MetricError(Exception):
    """The metric could not be measured; the message says why (printed as ``error``)."""


@dataclass
class Metric:
    """One result line."""

    name: str
    value: float | None
    baseline: dict[str, Any] | None = None
    """What the value is compared with, measured in the same run: {"what", "value", "unit"}."""
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def as_json(self, context: dict[str, Any]) -> str:
        spec = SPEC_BY_NAME[self.name]
        value = None if self.value is None or not math.isfinite(self.value) else self.value
        met = None if value is None or spec.budget is None else spec.budget.met(value)
        line: dict[str, Any] = {
            "metric": self.name,
            "value": value,
            "unit": spec.unit,
            "budget": None if spec.budget is None else str(spec.budget),
            "met": met,
            "baseline": self.baseline,
            "error": self.error,
            "what": spec.what,
            **context,
            **self.details,
        }
        return json.dumps(_rounded(line))


def failed(name: str, error: str, **details: Any) -> Metric:
    return Metric(name, None, error=error, details=details)


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals below 100, 1 above (figures, not noise), all the way down."""
    if isinstance(value, float):
        return round(value, 4) if abs(value) < 100 else round(value, 1)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of unsorted samples (``fraction`` 0.99 for p99)."""
    if not samples:
        raise MetricError("no samples")
    ordered = sorted(samples)
    rank = math.ceil(fraction * len(ordered)) - 1
    return ordered[min(len(ordered) - 1, max(0, rank))]
