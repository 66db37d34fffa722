"""The one error table: every HQ error has a real gRPC status code and a reason the contract
documents; a database that stays busy becomes a transient status, never INTERNAL."""

from __future__ import annotations

import re
from importlib import resources

import grpc
import pytest
from fakes import FakeStorage, FakeUnitOfWork
from google.protobuf import descriptor_pb2

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


PREFIX = "ERROR_REASON_"


def documented_codes() -> dict[str, str]:
    """Each ErrorReason value's status code, as its comment in errors.proto gives it in
    brackets ("[FAILED_PRECONDITION] ..."), read from the descriptor set reflection serves."""
    files = descriptor_pb2.FileDescriptorSet.FromString(
        resources.files("storedvalue.v1").joinpath("descriptor_set.binpb").read_bytes()).file
    (errors_file,) = [f for f in files if f.name == "storedvalue/v1/errors.proto"]
    (reasons,) = [i for i, e in enumerate(errors_file.enum_type) if e.name == "ErrorReason"]
    values = errors_file.enum_type[reasons].value
    codes = {}
    for location in errors_file.source_code_info.location:
        path = tuple(location.path)
        if len(path) == 4 and path[:3] == (5, reasons, 2):
            found = re.match(r"\s*\[([A-Z_]+)\]", location.leading_comments)
            if found:
                codes[values[path[3]].name.removeprefix(PREFIX)] = found.group(1)
    return codes


def test_every_error_reason_value_and_the_reason_hq_sends_map_one_to_one_by_the_prefix() -> None:
    enum_values = [v for v in errors_pb2.ErrorReason.values() if v != 0]

    for value in enum_values:  # enum -> reason -> the same enum value
        reason = errors.Reason(errors_pb2.ErrorReason.Name(value).removeprefix(PREFIX))
        assert errors_pb2.ErrorReason.Value(PREFIX + reason) == value
    for reason in errors.Reason:  # reason -> enum -> the same reason
        name = errors_pb2.ErrorReason.Name(errors_pb2.ErrorReason.Value(PREFIX + reason))
        assert name.removeprefix(PREFIX) == reason.value == reason.name
    assert len(errors.Reason) == len(enum_values)


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_sends_its_reason_with_the_status_code_errors_proto_gives_it(
    cls: type[errors.StoredValueError],
) -> None:
    assert isinstance(cls.reason, errors.Reason)
    assert documented_codes()[cls.reason] == cls.code


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
