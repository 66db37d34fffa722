"""A request delivered twice at once over two connections (a retry racing its original, two
HQ replicas on one PostgreSQL database): the copy that loses the race must get the first
result, never a business error caused by the first copy's own effect."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storedvalue.hq.domain.errors import TerminalAlreadyExists
from storedvalue.hq.services.idempotency import RequestKey, once, once_answered
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate, StoredResponse

NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
KEY = RequestKey("admin:test", "register-till-9", "RegisterTerminal", b"till-9")


class RequestLog:
    """The request log as one transaction reads it under READ COMMITTED: each read sees
    what other transactions committed by then."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StoredResponse] = {}

    def get(self, caller: str, request_id: str) -> StoredResponse | None:
        return self.rows.get((caller, request_id))

    def add(self, response: StoredResponse) -> None:
        if (response.caller, response.request_id) in self.rows:
            raise ConcurrentUpdate("request id taken")
        self.rows[(response.caller, response.request_id)] = response


class UnitOfWork:
    def __init__(self) -> None:
        self.requests = RequestLog()


def _the_first_copy_commits_then_refuse(uow: UnitOfWork, _now: datetime) -> str:
    """What the second copy's run sees when the first copy commits after the second looked
    its request id up: the terminal the first registered, so TERMINAL_ALREADY_EXISTS."""
    uow.requests.rows[(KEY.caller, KEY.request_id)] = StoredResponse(
        KEY.caller, KEY.request_id, KEY.operation, KEY.fingerprint, '"first"', NOW)
    raise TerminalAlreadyExists("till-9")


@pytest.mark.parametrize("look_first", [True, False])
def test_a_copy_refused_because_its_twin_committed_meanwhile_is_retried(look_first: bool
                                                                        ) -> None:
    uow = UnitOfWork()
    with pytest.raises(ConcurrentUpdate):  # the unit of work runs again and replays
        once(uow, KEY, str, NOW, _the_first_copy_commits_then_refuse,  # type: ignore[arg-type]
             look_first=look_first)


@pytest.mark.parametrize("look_first", [True, False])
def test_an_answered_copy_refused_because_its_twin_committed_meanwhile_is_retried(
        look_first: bool) -> None:
    uow = UnitOfWork()
    with pytest.raises(ConcurrentUpdate):
        once_answered(uow, KEY, str, NOW,  # type: ignore[arg-type]
                      _the_first_copy_commits_then_refuse,  # type: ignore[arg-type]
                      lambda r: b"", look_first=look_first)


def test_a_refusal_with_no_twin_is_the_callers_answer() -> None:
    uow = UnitOfWork()

    def refuse(_uow: UnitOfWork, _now: datetime) -> str:
        raise TerminalAlreadyExists("till-9")

    with pytest.raises(TerminalAlreadyExists):
        once(uow, KEY, str, NOW, refuse)  # type: ignore[arg-type]
