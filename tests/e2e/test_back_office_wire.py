"""The back office through the wire: locks, forced unlocks, credentials, paging, and what a
caller sees when HQ itself fails."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from in_process_hq import InProcessHQ

from storedvalue.hq.config import HQConfig
from storedvalue.hq.services.unit_of_work import Storage, UnitOfWork
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.hq.structured_logging import JsonFormatter
from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import terminal_service_pb2 as ts

from .conftest import RunningHQ
from .harness import ADMIN_TOKEN, BackOffice, Till, eur, expect_failure, new_id


def test_a_forced_unlock_frees_the_card_and_journals_the_reason(hq: RunningHQ) -> None:
    till, other = hq.till("till-1"), hq.till("till-2")
    card = till.issue_gift_card(1000)
    lock = till.lock(card.card_number, "sale-1").lock

    response = hq.back_office.call("ForceUnlockCard", bo.ForceUnlockCardRequest(
        request_id=new_id(), card_number=card.card_number, reason="till 1 destroyed",
    ))

    assert response.released_lock == lock
    assert not response.card.HasField("lock")
    assert other.lock(card.card_number, "sale-2").lock.fencing_token > lock.fencing_token
    notes = [e.note for e in hq.back_office.journal(card.card_number)
             if e.kind == bo.JOURNAL_ENTRY_KIND_FORCED_UNLOCK]
    assert notes == ["admin: till 1 destroyed"]


def test_list_locks_pages_through_every_live_lock(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    numbers = sorted(till.issue_gift_card(100).card_number for _ in range(5))
    for i, number in enumerate(numbers):
        till.lock(number, f"sale-{i}")

    seen: list[str] = []
    token = ""
    while True:
        page = hq.back_office.call("ListLocks", bo.ListLocksRequest(page_size=2,
                                                                     page_token=token))
        assert len(page.locks) <= 2
        seen.extend(lock.card_number for lock in page.locks)
        token = page.next_page_token
        if not token:
            break

    assert seen == numbers


def test_a_journal_page_token_is_good_only_for_its_own_card(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    first_card, other_card = (till.issue_gift_card(100).card_number for _ in range(2))
    for i in range(3):
        lock = till.lock(first_card, f"sale-{i}").lock
        till.call("Redeem", ts.RedeemRequest(
            request_id=new_id(), card_number=first_card, transaction_id=f"sale-{i}",
            line_id="line-1", fencing_token=lock.fencing_token, amount=eur(1)))
    first = hq.back_office.call("ListJournalEntries", bo.ListJournalEntriesRequest(
        card_number=first_card, page_size=2))
    assert first.next_page_token

    failure = expect_failure(lambda: hq.back_office.call(
        "ListJournalEntries", bo.ListJournalEntriesRequest(
            card_number=other_card, page_size=2, page_token=first.next_page_token)))

    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_FIELD"
    rest = hq.back_office.call("ListJournalEntries", bo.ListJournalEntriesRequest(
        card_number=first_card, page_size=10, page_token=first.next_page_token))
    assert len(first.entries) + len(rest.entries) == 4  # the issue and three redemptions


def test_a_rotated_credential_replaces_the_old_one_at_once(hq: RunningHQ) -> None:
    till = hq.till("till-1")
    till.call("GetParameters", ts.GetParametersRequest())

    rotated = hq.back_office.call("RotateTerminalCredential", bo.RotateTerminalCredentialRequest(
        request_id=new_id(), terminal_id="till-1",
    ))

    old = expect_failure(lambda: till.call("GetParameters", ts.GetParametersRequest()))
    assert old.code is grpc.StatusCode.UNAUTHENTICATED
    renewed = Till(hq.channel, "till-1", rotated.credential.bearer_token)
    assert renewed.call("GetParameters", ts.GetParametersRequest()).parameters.version >= 1


def test_registering_a_terminal_twice_is_terminal_already_exists(hq: RunningHQ) -> None:
    hq.till("till-1")

    failure = expect_failure(lambda: hq.till("till-1"))

    assert failure.code is grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "TERMINAL_ALREADY_EXISTS"


def test_parameter_versions_page_newest_first(hq: RunningHQ) -> None:
    for lease_hours in (1, 2, 3):
        hq.back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), lock_lease=duration_pb2.Duration(seconds=lease_hours * 3600)))

    first = hq.back_office.call("ListParameterVersions",
                                bo.ListParameterVersionsRequest(page_size=3))
    rest = hq.back_office.call("ListParameterVersions", bo.ListParameterVersionsRequest(
        page_size=3, page_token=first.next_page_token))

    assert [p.version for p in first.parameters] == [4, 3, 2]
    assert [p.version for p in rest.parameters] == [1]
    assert rest.next_page_token == ""


class FailingStorage:
    """A real storage that can be told to break, as a database driver would."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.failure: Exception | None = None

    def unit_of_work(self, *, write: bool) -> UnitOfWork:
        if self.failure is not None:
            raise self.failure
        return self.inner.unit_of_work(write=write)

    def close(self) -> None:
        self.inner.close()


def test_an_unexpected_failure_is_internal_and_the_log_masks_the_card_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite:///{tmp_path / 'hq.sqlite3'}"
    upgrade_to_head(url)
    storage = FailingStorage(SqlStorage.from_url(url))
    try:
        with InProcessHQ(HQConfig(listen="127.0.0.1:0", database_url=url,
                                  admin_token=ADMIN_TOKEN), storage=storage) as server, \
                grpc.insecure_channel(server.address) as channel:
            till = BackOffice(channel).register_till("till-1")
            card = till.issue_gift_card(100)
            storage.failure = RuntimeError(f"driver failed on card {card.card_number}")

            with caplog.at_level(logging.ERROR):
                failure = expect_failure(lambda: till.get_card(card.card_number))
    finally:
        storage.close()

    assert failure.code is grpc.StatusCode.INTERNAL
    assert failure.error_infos == 0
    assert card.card_number not in failure.message
    logged = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "driver failed on card" in logged
    assert card.card_number not in logged
    assert card.card_number[-4:] in logged
