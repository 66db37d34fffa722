"""Running the HQ services (coroutines) from synchronous test code: a private event loop,
and the transaction executor HQ itself would pick for the storage (SQLite: group commit;
PostgreSQL and the in-memory fake: a thread per connection)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from storedvalue.hq.config import HQConfig
from storedvalue.hq.server import open_transactions
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import Storage

T = TypeVar("T")


class ServiceLoop:
    """`run(coroutine)` runs it to completion. Close it when done."""

    def __init__(self, storage: Storage) -> None:
        self.transactions: Transactions = open_transactions(storage, HQConfig())
        self._runner = asyncio.Runner()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)

    def close(self) -> None:
        try:
            self.transactions.close()
        finally:
            self._runner.close()
