"""The one error table: every HQ error has a real gRPC status code and a reason the contract
documents; a database that stays busy becomes a transient status, never INTERNAL."""

from __future__ import annotations

import grpc
import pytest
from fakes import FakeStorage, FakeUnitOfWork

from storedvalue.hq.domain import errors
from storedvalue.hq.services.transactions import MAX_ATTEMPTS, run_in_transaction
from storedvalue.hq.services.unit_of_work import ConcurrentUpdate
from storedvalue.v1 import errors_pb2


def all_error_classes() -> list[type[errors.StoredValueError]]:
    seen: list[type[errors.StoredValueError]] = []
    pending = [errors.StoredValueError]
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in seen if cls.reason != "UNSPECIFIED"]


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_has_a_grpc_code_and_a_documented_reason(
    cls: type[errors.StoredValueError],
) -> None:
    assert grpc.StatusCode[cls.code] is not grpc.StatusCode.INTERNAL
    assert f"ERROR_REASON_{cls.reason}" in errors_pb2.ErrorReason.keys()  # noqa: SIM118 - an enum wrapper, not a dict


class LosingUnitOfWork(FakeUnitOfWork):
    """A unit of work whose commit always loses a race."""

    def commit(self) -> None:
        assert isinstance(self._storage, AlwaysLosingStorage)
        self._storage.attempts += 1
        raise ConcurrentUpdate("lost")


class AlwaysLosingStorage(FakeStorage):
    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def unit_of_work(self, *, write: bool) -> FakeUnitOfWork:
        return LosingUnitOfWork(self)


def test_a_database_busy_through_every_retry_is_hq_busy_unavailable() -> None:
    storage = AlwaysLosingStorage()
    with pytest.raises(errors.HQBusy) as busy:
        run_in_transaction(storage, lambda uow: None)
    assert storage.attempts == MAX_ATTEMPTS
    assert (busy.value.code, busy.value.reason) == ("UNAVAILABLE", "HQ_BUSY")
