"""Versioned parameters, and the feed that pushes new versions to watching terminals."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from storedvalue.hq.domain.errors import ParametersVersionConflict, TooManyWatchers
from storedvalue.hq.domain.parameters import Parameters, ParametersChange, initial_parameters
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.idempotency import RequestKey, run_once
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import Repositories

log = logging.getLogger(__name__)


class ParametersFeed:
    """The newest parameters this process knows, and a way to wait for a newer version.

    Lives on the event loop: `publish` and `newer_than` are called from its thread (other
    threads hand new versions over with `loop.call_soon_threadsafe(feed.publish, ...)`).
    Every waiter waits on the same event, so a new version reaches thousands of open
    WatchParameters streams in one pass of the loop: no thread and no timer per stream.
    Versions made through this process are published at once; those made by other HQ
    replicas arrive through the database (PostgreSQL LISTEN/NOTIFY, a SQLite poll)."""

    def __init__(self, *, max_watchers: int = 0) -> None:
        self._latest: Parameters | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._max_watchers = max_watchers
        self._watchers = 0

    @property
    def latest(self) -> Parameters | None:
        """Readable from any thread (one attribute read)."""
        return self._latest

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def watchers(self) -> int:
        return self._watchers

    def publish(self, parameters: Parameters) -> None:
        latest = self._latest
        if latest is None or parameters.version > latest.version:
            self._latest = parameters
            self._wake()

    async def newer_than(self, known_version: int) -> Parameters | None:
        """The first version newer than `known_version`, waiting as long as it takes; None
        once the feed is closed (the server is stopping)."""
        while True:
            if self._closed:
                return None
            latest = self._latest
            if latest is not None and latest.version > known_version:
                return latest
            await self._changed.wait()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def join(self) -> None:
        """Count a new watcher in; over the configured maximum, TooManyWatchers."""
        if self._max_watchers and self._watchers >= self._max_watchers:
            raise TooManyWatchers(self._max_watchers)
        self._watchers += 1

    def leave(self) -> None:
        self._watchers -= 1

    def _wake(self) -> None:
        # A fresh event per change: waiters of the old one wake, later waiters wait anew.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


@dataclass(frozen=True, slots=True)
class ParametersPage:
    versions: tuple[Parameters, ...]
    next_before_version: int  # 0 when this is the last page


class ParametersService:
    def __init__(self, transactions: Transactions, *, feed: ParametersFeed | None = None,
                 clock: Clock = utc_now) -> None:
        self._transactions = transactions
        self.feed = feed or ParametersFeed()
        self._clock = clock

    async def ensure_initialized(self) -> Parameters:
        """Create version 1 on a new database; return the current version."""

        def work(uow: Repositories) -> Parameters:
            current = uow.parameters.current()
            if current is None:
                current = initial_parameters(self._clock())
                uow.parameters.add(current)
            return current

        current = await self._transactions.write(work)
        self.feed.publish(current)
        return current

    async def current(self) -> Parameters:
        current = await self._transactions.read(lambda uow: uow.parameters.current())
        if current is None:
            return await self.ensure_initialized()
        return current

    async def latest(self) -> Parameters:
        """The newest version this process knows, as the feed has it (kept current by this
        process's updates and by other replicas' notifications), without a database read;
        from the database only before the feed has any. What a watch starts from: thousands
        of tills reconnecting at once must not each cost a read."""
        latest = self.feed.latest
        return latest if latest is not None else await self.refresh()

    async def refresh(self) -> Parameters:
        """Read the current version and publish it (a change made by another replica)."""
        current = await self.current()
        self.feed.publish(current)
        return current

    async def update(self, *, key: RequestKey, updated_by: str, change: ParametersChange,
                     expected_version: int) -> Parameters:
        key.validate()

        def run(uow: Repositories, now: datetime) -> Parameters:
            current = uow.parameters.current() or initial_parameters(now)
            if expected_version and expected_version != current.version:
                raise ParametersVersionConflict(expected_version, current.version)
            new = change.apply_to(current, now=now, updated_by=updated_by)
            uow.parameters.add(new)
            return new

        new = await run_once(self._transactions, key, Parameters, self._clock, run)
        self.feed.publish(new)
        return new

    async def list_versions(self, *, before_version: int, limit: int) -> ParametersPage:
        versions = await self._transactions.read(
            lambda uow: uow.parameters.list(before_version=before_version, limit=limit + 1)
        )
        more = len(versions) > limit
        page = tuple(versions[:limit])
        return ParametersPage(page, page[-1].version if more and page else 0)
