"""Where a `storedvalue serve --processes N` worker process starts.

Workers are spawned (a fresh interpreter), which imports the module of the process's target
before running it. This module imports nothing that loads SQLite, so the worker can switch
SQLite's memory statistics off (storedvalue.hq.sqlite_memory) before SQLite is initialized,
as `storedvalue serve` does for one process; storedvalue.hq.workers, which imports the whole
server, is imported after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from storedvalue.hq.sqlite_memory import disable_memory_statistics

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from storedvalue.hq.config import HQConfig


def worker_main(index: int, config: HQConfig, reports: Connection, supervisor: int) -> None:
    """A worker process (storedvalue.hq.workers.run_worker), SQLite configured first."""
    disable_memory_statistics()
    from storedvalue.hq.workers import run_worker

    run_worker(index, config, reports, supervisor)
