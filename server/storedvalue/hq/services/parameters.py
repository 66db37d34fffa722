"""Versioned parameters, and the feed that pushes new versions to watching terminals."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime

from storedvalue.hq.domain.errors import ParametersVersionConflict
from storedvalue.hq.domain.parameters import Parameters, ParametersChange, initial_parameters
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.idempotency import RequestKey, run_once
from storedvalue.hq.services.transactions import run_in_transaction
from storedvalue.hq.services.unit_of_work import Storage, UnitOfWork

log = logging.getLogger(__name__)


class ParametersFeed:
    """The newest parameters this process knows, and a way to wait for a newer version.

    Updates made through this process are published at once; a poller (`follow`) picks up
    versions made by other HQ replicas on the same database."""

    def __init__(self) -> None:
        self._latest: Parameters | None = None
        self._changed = threading.Condition()
        self._closed = False

    @property
    def latest(self) -> Parameters | None:
        with self._changed:
            return self._latest

    def publish(self, parameters: Parameters) -> None:
        with self._changed:
            if self._latest is None or parameters.version > self._latest.version:
                self._latest = parameters
                self._changed.notify_all()

    def wait_newer(self, known_version: int, timeout: float) -> Parameters | None:
        """A version newer than `known_version`, waiting up to `timeout` seconds; None if
        there is none yet or the feed closed."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._closed
                or (self._latest is not None and self._latest.version > known_version),
                timeout=timeout,
            )
            if self._latest is not None and self._latest.version > known_version:
                return self._latest
            return None

    @property
    def closed(self) -> bool:
        with self._changed:
            return self._closed

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def follow(self, service: ParametersService, *, interval: float, stop: threading.Event
               ) -> None:
        """Poll the database until `stop` is set (run it in a daemon thread)."""
        while not stop.wait(interval):
            try:
                self.publish(service.current())
            except Exception:  # a database hiccup must not kill the poller
                log.exception("parameters poll failed")


@dataclass(frozen=True, slots=True)
class ParametersPage:
    versions: tuple[Parameters, ...]
    next_before_version: int  # 0 when this is the last page


class ParametersService:
    def __init__(self, storage: Storage, *, feed: ParametersFeed | None = None,
                 clock: Clock = utc_now) -> None:
        self._storage = storage
        self.feed = feed or ParametersFeed()
        self._clock = clock

    def ensure_initialized(self) -> Parameters:
        """Create version 1 on a new database; return the current version."""

        def work(uow: UnitOfWork) -> Parameters:
            current = uow.parameters.current()
            if current is None:
                current = initial_parameters(self._clock())
                uow.parameters.add(current)
            return current

        current = run_in_transaction(self._storage, work)
        self.feed.publish(current)
        return current

    def current(self) -> Parameters:
        current = run_in_transaction(
            self._storage, lambda uow: uow.parameters.current(), write=False
        )
        if current is None:
            return self.ensure_initialized()
        return current

    def update(self, *, key: RequestKey, updated_by: str, change: ParametersChange,
               expected_version: int) -> Parameters:
        key.validate()

        def run(uow: UnitOfWork, now: datetime) -> Parameters:
            current = uow.parameters.current() or initial_parameters(now)
            if expected_version and expected_version != current.version:
                raise ParametersVersionConflict(expected_version, current.version)
            new = change.apply_to(current, now=now, updated_by=updated_by)
            uow.parameters.add(new)
            return new

        new = run_once(self._storage, key, Parameters, self._clock, run)
        self.feed.publish(new)
        return new

    def list_versions(self, *, before_version: int, limit: int) -> ParametersPage:
        versions = run_in_transaction(
            self._storage,
            lambda uow: uow.parameters.list(before_version=before_version, limit=limit + 1),
            write=False,
        )
        more = len(versions) > limit
        page = tuple(versions[:limit])
        return ParametersPage(page, page[-1].version if more and page else 0)
