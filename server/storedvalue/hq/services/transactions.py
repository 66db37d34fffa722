"""Running a use case in one database transaction, retried when it loses a race."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from storedvalue.hq.domain.errors import HQBusy
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Storage, UnitOfWork

T = TypeVar("T")
log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8


def run_in_transaction(storage: Storage, work: Callable[[UnitOfWork], T], *, write: bool = True
                       ) -> T:
    """Run `work` in a unit of work and commit it. Domain errors roll back and propagate
    (nothing changed); a lost race (`ConcurrentUpdate`) rolls back and runs `work` again on
    fresh data, with a short jittered pause so racing replicas spread out."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with storage.unit_of_work(write=write) as uow:
                result = work(uow)
                if write:
                    uow.commit()
                return result
        except ConcurrentUpdate as lost:
            if attempt == MAX_ATTEMPTS:
                # A status the till understands as transient (UNAVAILABLE), not INTERNAL.
                raise HQBusy() from lost
            log.debug("concurrent update, retrying (attempt %d)", attempt)
            time.sleep(random.uniform(0, 0.002 * attempt))  # noqa: S311 - jitter, not crypto
    raise AssertionError("unreachable")
