"""Versioned parameters, global and per store, and the feed that pushes new versions to the
watching terminals of the stores they affect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from storedvalue.hq.domain.errors import ParametersVersionConflict, TooManyWatchers
from storedvalue.hq.domain.paging import Page, page_of
from storedvalue.hq.domain.parameters import (
    GLOBAL,
    NO_VALUES,
    Parameters,
    ParametersChange,
    ParametersChangeRecord,
    ParameterSet,
    ParameterValues,
    effective,
    initial_set,
    validate_store_id,
)
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.idempotency import RequestKey, run_once
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import Repositories

log = logging.getLogger(__name__)


class ParametersFeed:
    """The newest parameters this process knows (the global set and every store's newest
    override), and a way for a store's watchers to wait for a newer version of theirs.

    Lives on the event loop: `publish`, `newer_than` and `end_watches` are called from its
    thread (other threads hand new versions over through the loop). A store's watchers all
    wait on one event of that store, so a change reaches thousands of open WatchParameters
    streams in one pass of the loop, and a change of one store's override wakes that store's
    watchers only (a global change wakes every store's). Versions made through this process
    are published at once; those made by other HQ replicas arrive through the database
    (PostgreSQL LISTEN/NOTIFY, a SQLite poll). `end_watches` ends a terminal's streams (it
    was revoked, or moved to another store)."""

    def __init__(self, *, max_watchers: int = 0) -> None:
        self._global: ParameterSet | None = None
        self._overrides: dict[str, ParameterSet] = {}
        # What each store's terminals apply, built on first use after each change: LockCard
        # reads its store's lease here on every lock.
        self._applied: dict[str, Parameters] = {}
        self._events: dict[str, asyncio.Event] = {}  # store -> what its watchers wait on
        self._ended: dict[str, tuple[int, bool]] = {}  # terminal -> (how often, revoked)
        self._closed = False
        self._max_watchers = max_watchers
        self._watchers = 0

    def latest(self, store_id: str = GLOBAL) -> Parameters | None:
        """What the terminals of `store_id` apply now, as this process knows it. Readable
        from any thread (the sets are replaced whole, never changed in place)."""
        applied = self._applied  # replaced whole on every change
        found = applied.get(store_id)
        if found is None:
            global_set = self._global
            if global_set is None:
                return None
            found = applied[store_id] = effective(global_set, self._overrides.get(store_id),
                                                  store_id)
        return found

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def watchers(self) -> int:
        return self._watchers

    def publish(self, *sets: ParameterSet) -> None:
        """Take these sets where they are newer than what the feed holds for their scope,
        and wake the watchers they concern."""
        for parameter_set in sets:
            store = parameter_set.store_id
            held = self._global if store == GLOBAL else self._overrides.get(store)
            if held is not None and parameter_set.version <= held.version:
                continue
            if store == GLOBAL:
                self._global = parameter_set
                self._applied = {}
                self._wake_all()
            else:
                self._overrides = {**self._overrides, store: parameter_set}
                self._applied = {}
                self._wake(store)

    async def newer_than(self, store_id: str, known_version: int, *, terminal_id: str = "",
                         generation: int = 0) -> Parameters | None:
        """The first version of the store's parameters newer than `known_version`, waiting
        as long as it takes; None once the feed is closed (the server is stopping) or the
        terminal's watches begun at `generation` were ended (see `ended`)."""
        while True:
            if self._closed or (terminal_id and self.ended(terminal_id, generation)):
                return None
            latest = self.latest(store_id)
            if latest is not None and latest.version > known_version:
                return latest
            event = self._events.get(store_id)
            if event is None:
                event = self._events[store_id] = asyncio.Event()
            await event.wait()

    def watch_generation(self, terminal_id: str) -> int:
        """A token for `ended` and `newer_than`: take it when a watch begins."""
        return self._ended.get(terminal_id, (0, False))[0]

    def ended(self, terminal_id: str, generation: int) -> bool:
        """Whether the terminal's watches begun at `generation` were ended since."""
        return self._ended.get(terminal_id, (0, False))[0] != generation

    def revoked(self, terminal_id: str) -> bool:
        """Whether the terminal's watches were last ended by its revocation."""
        return self._ended.get(terminal_id, (0, False))[1]

    def end_watches(self, terminal_id: str, *, revoked: bool) -> None:
        """End the terminal's open watches: revoked, or moved to another store."""
        count, _ = self._ended.get(terminal_id, (0, False))
        self._ended[terminal_id] = (count + 1, revoked)
        self._wake_all()  # rare: whichever store the terminal watched, its watchers look

    def close(self) -> None:
        self._closed = True
        self._wake_all()

    def join(self) -> None:
        """Count a new watcher in; over the configured maximum, TooManyWatchers."""
        if self._max_watchers and self._watchers >= self._max_watchers:
            raise TooManyWatchers(self._max_watchers)
        self._watchers += 1

    def leave(self) -> None:
        self._watchers -= 1

    def _wake(self, store_id: str) -> None:
        # The store's event goes: its waiters wake, later waiters wait on a new one.
        event = self._events.pop(store_id, None)
        if event is not None:
            event.set()

    def _wake_all(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            event.set()


@dataclass(frozen=True, slots=True)
class ParametersUpdate:
    """A change as made: the scope's parameters after it, and the change as recorded."""

    parameters: Parameters
    change: ParametersChangeRecord

    @property
    def version(self) -> int:
        return self.change.version


@dataclass(frozen=True, slots=True)
class StoreParameters:
    parameters: Parameters  # what the store's terminals get
    override: ParameterValues  # what the store overrides (none set: no override)


def parameters_as_used(uow: Repositories, store_id: str, versions: Iterable[int]
                       ) -> dict[int, Parameters]:
    """What the terminals of `store_id` applied at each of `versions`: the global set and
    the store's override as they stood then. Versions HQ never made are left out."""
    latest = uow.parameters.latest_version()
    found: dict[int, Parameters] = {}
    for version in set(versions):
        if not 1 <= version <= latest:
            continue
        global_set = uow.parameters.as_of(GLOBAL, version)
        if global_set is None:
            continue
        override = uow.parameters.as_of(store_id, version) if store_id else None
        found[version] = effective(global_set, override, store_id)
    return found


def current_parameters(uow: Repositories, store_id: str) -> Parameters | None:
    """What the terminals of `store_id` apply now; None on a database without parameters."""
    global_set = uow.parameters.latest(GLOBAL)
    if global_set is None:
        return None
    override = uow.parameters.latest(store_id) if store_id else None
    return effective(global_set, override, store_id)


class ParametersService:
    def __init__(self, transactions: Transactions, *, feed: ParametersFeed | None = None,
                 clock: Clock = utc_now) -> None:
        self._transactions = transactions
        self.feed = feed or ParametersFeed()
        self._clock = clock

    async def ensure_initialized(self) -> Parameters:
        """Create version 1 on a new database; return the current global parameters."""

        def work(uow: Repositories) -> ParameterSet:
            current = uow.parameters.latest(GLOBAL)
            if current is None:
                current = initial_set(self._clock())
                uow.parameters.add(current)
            return current

        current = await self._transactions.write(work)
        self.feed.publish(current)
        return effective(current, None)

    async def refresh(self) -> None:
        """Publish what the database holds (changes made by other replicas)."""

        def work(uow: Repositories) -> list[ParameterSet]:
            found = uow.parameters.latest(GLOBAL)
            return ([found] if found is not None else []) + uow.parameters.latest_overrides()

        self.feed.publish(*await self._transactions.read(work))

    async def current(self, store_id: str = GLOBAL) -> Parameters:
        """What the terminals of `store_id` apply now (GLOBAL: the global parameters)."""
        found = await self._transactions.read(lambda uow: current_parameters(uow, store_id))
        if found is None:
            await self.ensure_initialized()
            return await self.current(store_id)
        return found

    async def latest(self, store_id: str = GLOBAL) -> Parameters:
        """The store's parameters as the feed has them (kept current by this process's
        updates and other replicas' notifications), without a database read; from the
        database only before the feed has any. What a watch starts from: thousands of tills
        reconnecting at once must not each cost a read."""
        latest = self.feed.latest(store_id)
        if latest is not None:
            return latest
        await self.refresh()
        return self.feed.latest(store_id) or await self.current(store_id)

    async def store_parameters(self, store_id: str) -> StoreParameters:
        validate_store_id(store_id)

        def work(uow: Repositories) -> StoreParameters | None:
            current = current_parameters(uow, store_id)
            if current is None:
                return None
            override = uow.parameters.latest(store_id)
            return StoreParameters(current, override.values if override else NO_VALUES)

        found = await self._transactions.read(work)
        if found is None:
            await self.ensure_initialized()
            return await self.store_parameters(store_id)
        return found

    async def update(self, *, key: RequestKey, updated_by: str, change: ParametersChange,
                     expected_version: int, store_id: str = GLOBAL) -> ParametersUpdate:
        key.validate()
        if store_id:
            validate_store_id(store_id)
        store = bool(store_id)

        def run(uow: Repositories, now: datetime) -> ParametersUpdate:
            global_set = uow.parameters.latest(GLOBAL)
            if global_set is None:
                global_set = initial_set(now)
                uow.parameters.add(global_set)
            before = uow.parameters.latest(store_id) if store else global_set
            current = effective(global_set, before if store else None, store_id)
            if expected_version and expected_version != current.version:
                raise ParametersVersionConflict(expected_version, current.version)
            old = before.values if before is not None else NO_VALUES
            new = change.applied(old, store=store)
            made = ParameterSet(
                version=uow.parameters.latest_version() + 1, store_id=store_id, values=new,
                changed_at=now, changed_by=updated_by,
            )
            uow.parameters.add(made)
            after = (effective(global_set, made, store_id) if store
                     else effective(made, None))
            record = ParametersChangeRecord(
                version=made.version, store_id=store_id, changed_at=now,
                changed_by=updated_by, old_values=old, new_values=new,
            )
            return ParametersUpdate(parameters=after, change=record)

        done = await run_once(self._transactions, key, ParametersUpdate, self._clock, run)
        self.feed.publish(ParameterSet(
            version=done.change.version, store_id=store_id, values=done.change.new_values,
            changed_at=done.change.changed_at, changed_by=done.change.changed_by,
        ))
        return done

    async def list_versions(self, *, before_version: int, limit: int) -> Page[Parameters]:
        """Versions of the global parameters, newest first; the cursor is the last listed
        version (the next page holds those before it)."""
        sets = await self._transactions.read(
            lambda uow: uow.parameters.list(store_id=GLOBAL, before_version=before_version,
                                            limit=limit + 1)
        )
        return page_of([effective(s, None) for s in sets], limit, lambda p: p.version)

    async def list_changes(self, *, store_id: str | None, before_version: int, limit: int
                           ) -> Page[ParametersChangeRecord]:
        """Changes of every scope (or of one store's override), newest first, each with the
        values its scope had before."""
        if store_id:
            validate_store_id(store_id)

        def work(uow: Repositories) -> list[ParametersChangeRecord]:
            sets = uow.parameters.list(store_id=store_id or None,
                                       before_version=before_version, limit=limit + 1)
            return [_record(uow, made) for made in sets]

        records = await self._transactions.read(work)
        return page_of(records, limit, lambda record: record.version)


def _record(uow: Repositories, made: ParameterSet) -> ParametersChangeRecord:
    before = uow.parameters.as_of(made.store_id, made.version - 1)
    return ParametersChangeRecord(
        version=made.version, store_id=made.store_id, changed_at=made.changed_at,
        changed_by=made.changed_by, old_values=before.values if before else NO_VALUES,
        new_values=made.values,
    )
