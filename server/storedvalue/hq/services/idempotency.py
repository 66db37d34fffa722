"""AIP-155 request ids: a retry with the same id gets the first result; the same id with
other content is REQUEST_ID_REUSED. The record is written in the same database transaction as
the effect, so a crash cannot separate them."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import msgspec

from storedvalue.hq import records
from storedvalue.hq.domain.client_text import validate_id
from storedvalue.hq.domain.errors import RequestIdReused, StoredValueError
from storedvalue.hq.domain.value_objects import value_object
from storedvalue.hq.services.clock import Clock
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, Repositories, StoredResponse

T = TypeVar("T")

Answer = Callable[[T], bytes]
"""The transport's answer to a service's result: its response message, encoded. A request run
with one (`once_answered`) is remembered as that answer, and a retry gets those bytes."""

# A remembered answer is stored as a JSON string (msgspec's encoding of bytes: base64), so
# that the stored result stays JSON, and is told from a result stored by `records` (a JSON
# object) by its first character. Encoding the answer costs ~5K instructions for LockCard's
# against 17.1K for its result as an object (callgrind), and the answer is no longer built
# again from the decoded result at the call's end.
_ANSWER_ENCODER = msgspec.json.Encoder()
_ANSWER_DECODER = msgspec.json.Decoder(bytes)


@value_object
class RequestKey:
    """Identifies one mutating request. The transport computes `fingerprint` from the
    request message without its request_id, serialized deterministically: those bytes
    themselves when `content_kept` (an online call's few dozen bytes), else their SHA-256
    digest (see `same_content`)."""

    caller: str
    request_id: str
    operation: str
    fingerprint: bytes

    def validate(self) -> RequestKey:
        validate_id(self.request_id, "request_id")
        return self


# Contents up to this size are their own fingerprint: digesting LockCard's or Redeem's few
# dozen bytes cost ~3.4K instructions a call (callgrind), keeping them costs a few more
# bytes in its request log row.
CONTENT_KEPT_UP_TO = 128
_DIGEST_SIZE = 32  # SHA-256's


def content_kept(size: int) -> bool:
    """Whether a request's content of `size` bytes is kept as its fingerprint (else its
    SHA-256 digest is). Never at the digest's size: a fingerprint of 32 bytes is a digest."""
    return size <= CONTENT_KEPT_UP_TO and size != _DIGEST_SIZE


def same_content(stored: bytes, fingerprint: bytes) -> bool:
    """Whether a remembered request's fingerprint (`stored`) is that of a request whose
    fingerprint is `fingerprint`. An HQ before contents were kept stored the digest of
    every request: a kept content matches its digest too."""
    if stored == fingerprint:
        return True
    return (len(stored) == _DIGEST_SIZE and len(fingerprint) != _DIGEST_SIZE
            and hashlib.sha256(fingerprint).digest() == stored)


def replay(uow: Repositories, key: RequestKey, result_type: type[T]) -> T | None:
    """The first result of this request if it already ran; raises if the id was reused."""
    stored = _earlier(uow, key)
    if stored is None:
        return None
    if _is_answer(stored.result_json):
        raise TypeError(f"{key.operation} {key.request_id!r} was remembered as its answer: "
                        "only `once_answered` replays it")
    return records.loads(result_type, stored.result_json)


def replay_answer(uow: Repositories, key: RequestKey, result_type: type[T], answer: Answer[T]
                  ) -> bytes | None:
    """The first answer to this request if it already ran; raises if the id was reused. A
    result remembered as such (by `once`, or by an HQ before answers were remembered) is
    answered as `answer` makes it: the same bytes as when it was first answered."""
    stored = _earlier(uow, key)
    if stored is None:
        return None
    text = stored.result_json
    if _is_answer(text):
        found: bytes = _ANSWER_DECODER.decode(text)
        return found
    return answer(records.loads(result_type, text))


def _earlier(uow: Repositories, key: RequestKey) -> StoredResponse | None:
    stored = uow.requests.get(key.caller, key.request_id)
    if stored is not None and (stored.operation != key.operation
                               or not same_content(stored.fingerprint, key.fingerprint)):
        raise RequestIdReused(key.request_id)
    return stored


def _is_answer(text: str) -> bool:
    return text[:1] == '"'


def remember(uow: Repositories, key: RequestKey, result: object, now: datetime) -> None:
    _remember(uow, key, records.dumps(result), now)


def remember_answer(uow: Repositories, key: RequestKey, answer: bytes, now: datetime) -> None:
    _remember(uow, key, _ANSWER_ENCODER.encode(answer).decode(), now)


def _remember(uow: Repositories, key: RequestKey, result_json: str, now: datetime) -> None:
    # Positional, in the fields' order: every mutating call remembers its result, and a value
    # object built by keyword costs a third more.
    uow.requests.add(StoredResponse(
        key.caller,  # caller
        key.request_id,  # request_id
        key.operation,  # operation
        key.fingerprint,  # fingerprint
        result_json,  # result_json
        now,  # created_at
    ))


def once(
    uow: Repositories, key: RequestKey, result_type: type[T], now: datetime,
    run: Callable[[Repositories, datetime], T], *, look_first: bool = True,
) -> T:
    """Run `run(uow, now)` unless this request already ran; remember its result. (`run` is
    called with the unit and its time rather than made a closure over them: a lambda per
    call, and its cells, cost ~1.5K instructions a LockCard, callgrind.)

    `look_first=False` skips the look-up of the request id before `run` (a statement per
    call, and on PostgreSQL a round trip), for a unit's first run: nearly every request is
    new. A request that did run is then caught either way: its result's insert finds the
    id taken, or `run` ends in a business error and the look-up, made then, finds it; the
    unit of work then fails with ConcurrentUpdate, its effects are undone, and its next run
    (`look_first=True`) answers with the first result (or REQUEST_ID_REUSED).

    The look-up does not close the race: a copy of the request delivered at the same time
    (a retry, another replica) may commit between it and `run` (PostgreSQL, READ
    COMMITTED), and `run` then fails on that copy's effect (TERMINAL_ALREADY_EXISTS): that
    error is checked the same way, so the caller gets the first result."""
    if look_first:
        earlier = replay(uow, key, result_type)
        if earlier is not None:
            return earlier
    try:
        result = run(uow, now)
        remember(uow, key, result, now)  # a request id already taken: ConcurrentUpdate
        return result
    except StoredValueError:
        if uow.requests.get(key.caller, key.request_id) is not None:
            raise ConcurrentUpdate("the request id was used before") from None
        raise


def once_answered(
    uow: Repositories, key: RequestKey, result_type: type[T], now: datetime,
    run: Callable[[Repositories, datetime], T], answer: Answer[T], *, look_first: bool = True,
) -> bytes:
    """`once`, answered: `run`'s result made into the transport's answer (`answer`), which is
    what is remembered and what a retry gets (`replay_answer`)."""
    if look_first:
        earlier = replay_answer(uow, key, result_type, answer)
        if earlier is not None:
            return earlier
    try:
        encoded = answer(run(uow, now))
        remember_answer(uow, key, encoded, now)  # a request id already taken: ConcurrentUpdate
        return encoded
    except StoredValueError:
        if uow.requests.get(key.caller, key.request_id) is not None:
            raise ConcurrentUpdate("the request id was used before") from None
        raise


def run_once(
    transactions: Transactions,
    key: RequestKey,
    result_type: type[T],
    clock: Clock,
    run: Callable[[Repositories, datetime], T],
) -> Awaitable[T]:
    """A mutating use case: `run(uow, now)` in one database transaction (retried on a lost
    race), exactly once per request id; its effect and its remembered result commit together.
    Awaited by the caller: `transactions.write`'s awaitable is handed back as it is, not
    awaited in a coroutine of its own (a coroutine layer costs ~0.7K instructions a call
    more than a plain call, callgrind, and its every resumption passes through it)."""
    runs = 0  # a unit's first run need not look its request id up first (`once`)

    def work(uow: Repositories) -> T:
        nonlocal runs
        runs += 1
        look_first = runs > 1
        now = clock()
        return once(uow, key, result_type, now, run, look_first=look_first)

    return transactions.write(work)


def run_once_answered(
    transactions: Transactions,
    key: RequestKey,
    result_type: type[T],
    clock: Clock,
    run: Callable[[Repositories, datetime], T],
    answer: Answer[T],
) -> Awaitable[bytes]:
    """`run_once`, answered as `once_answered` answers (awaited by the caller, likewise)."""
    runs = 0  # as in run_once

    def work(uow: Repositories) -> bytes:
        nonlocal runs
        runs += 1
        look_first = runs > 1
        now = clock()
        return once_answered(uow, key, result_type, now, run, answer, look_first=look_first)

    return transactions.write(work)
