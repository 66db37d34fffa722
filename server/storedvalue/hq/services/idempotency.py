"""AIP-155 request ids: a retry with the same id gets the first result; the same id with
other content is REQUEST_ID_REUSED. The record is written in the same database transaction as
the effect, so a crash cannot separate them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from storedvalue.hq import records
from storedvalue.hq.domain.client_text import validate_id
from storedvalue.hq.domain.errors import RequestIdReused, StoredValueError
from storedvalue.hq.domain.value_objects import value_object
from storedvalue.hq.services.clock import Clock
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Repositories, StoredResponse

T = TypeVar("T")


@value_object
class RequestKey:
    """Identifies one mutating request. The transport computes `fingerprint` as a digest of
    the request message without its request_id."""

    caller: str
    request_id: str
    operation: str
    fingerprint: bytes

    def validate(self) -> RequestKey:
        validate_id(self.request_id, "request_id")
        return self


def replay(uow: Repositories, key: RequestKey, result_type: type[T]) -> T | None:
    """The first result of this request if it already ran; raises if the id was reused."""
    stored = uow.requests.get(key.caller, key.request_id)
    if stored is None:
        return None
    if stored.operation != key.operation or stored.fingerprint != key.fingerprint:
        raise RequestIdReused(key.request_id)
    return records.loads(result_type, stored.result_json)


def remember(uow: Repositories, key: RequestKey, result: object, now: datetime) -> None:
    # Positional, in the fields' order: every mutating call remembers its result, and a value
    # object built by keyword costs a third more.
    uow.requests.add(StoredResponse(
        key.caller,  # caller
        key.request_id,  # request_id
        key.operation,  # operation
        key.fingerprint,  # fingerprint
        records.dumps(result),  # result_json
        now,  # created_at
    ))


def once(
    uow: Repositories, key: RequestKey, result_type: type[T], now: datetime, run: Callable[[], T],
    *, look_first: bool = True,
) -> T:
    """Run `run` inside `uow` unless this request already ran; remember its result.

    `look_first=False` skips the look-up of the request id before `run` (a statement per
    call, and on PostgreSQL a round trip), for a unit's first run: nearly every request is
    new. A request that did run is then caught either way: its result's insert finds the
    id taken, or `run` ends in a business error and the look-up, made then, finds it; the
    unit of work then fails with ConcurrentUpdate, its effects are undone, and its next run
    (`look_first=True`) answers with the first result (or REQUEST_ID_REUSED)."""
    if look_first:
        earlier = replay(uow, key, result_type)
        if earlier is not None:
            return earlier
        return _run_and_remember(uow, key, now, run)
    try:
        return _run_and_remember(uow, key, now, run)
    except StoredValueError:
        if uow.requests.get(key.caller, key.request_id) is not None:
            raise ConcurrentUpdate("the request id was used before") from None
        raise


def _run_and_remember(uow: Repositories, key: RequestKey, now: datetime, run: Callable[[], T]
                      ) -> T:
    result = run()
    remember(uow, key, result, now)  # a request id already taken: ConcurrentUpdate
    return result


class Attempts:
    """How often a unit of work ran: its first run need not look its request id up first
    (`once`), a later one does."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def next(self) -> bool:
        """Count a run; whether it must look the request id up first."""
        self.count += 1
        return self.count > 1


async def run_once(
    transactions: Transactions,
    key: RequestKey,
    result_type: type[T],
    clock: Clock,
    run: Callable[[Repositories, datetime], T],
) -> T:
    """A mutating use case: `run(uow, now)` in one database transaction (retried on a lost
    race), exactly once per request id; its effect and its remembered result commit together."""
    attempts = Attempts()

    def work(uow: Repositories) -> T:
        look_first = attempts.next()
        now = clock()
        return once(uow, key, result_type, now, lambda: run(uow, now), look_first=look_first)

    return await transactions.write(work)
