"""One bench run: its settings (quick or full), how HQ is deployed, its temporary directory
and the processes it started."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from children import Children
from hq_under_test import Deployment, HQUnderTest


@dataclass(frozen=True)
class Settings:
    """How long and how big each measurement is."""

    quick: bool
    rounds: int
    """Echo and HQ runs per concurrency level, alternated (echo, HQ, HQ, echo, ...)."""
    measure_s: float
    """Seconds each load run counts calls for, after `warmup_s`."""
    warmup_s: float
    stall_rounds: int
    """Without-stalls and with-stalls GetCard runs, alternated."""
    stalled_calls: int
    getcard_concurrency: int
    offline_sales: int
    """Sales timed on a terminal already offline."""
    offline_trials: int
    """Link drops, each timing the first sale after it."""
    sync_size: int
    """Offline transactions in the larger sync (the budget's 100,000); the smaller is 1/10."""
    parameter_changes: int
    terminal_watchers: int
    watch_streams: int
    watch_changes: int
    watch_processes: int
    watch_connections: int
    """Channels (connections) per watcher process."""

    @staticmethod
    def for_run(quick: bool) -> Settings:
        if quick:
            return Settings(quick=True, rounds=2, measure_s=3.0, warmup_s=0.5, stall_rounds=1,
                            stalled_calls=300, getcard_concurrency=4, offline_sales=300,
                            offline_trials=5, sync_size=20_000, parameter_changes=5,
                            terminal_watchers=20, watch_streams=5_000, watch_changes=3,
                            watch_processes=2, watch_connections=25)
        return Settings(quick=False, rounds=3, measure_s=8.0, warmup_s=1.0, stall_rounds=2,
                        stalled_calls=300, getcard_concurrency=4, offline_sales=2_000,
                        offline_trials=20, sync_size=100_000, parameter_changes=20,
                        terminal_watchers=20, watch_streams=5_000, watch_changes=10,
                        watch_processes=2, watch_connections=25)


class Session:
    def __init__(self, settings: Settings, deployment: Deployment) -> None:
        self.settings = settings
        self.deployment = deployment
        self.children = Children()
        self.workdir = Path(tempfile.mkdtemp(prefix="storedvalue-bench-"))

    def hq(self, name: str) -> HQUnderTest:
        """Fresh HQ processes (fresh database) for one measurement."""
        return HQUnderTest(self.children, self.deployment, self.workdir / name)

    def context(self) -> dict[str, Any]:
        """Fields every result line carries."""
        return {
            "database": self.deployment.database,
            "hq_processes": self.deployment.hq_processes,
            "quick": self.settings.quick,
        }

    def close(self) -> None:
        self.children.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
