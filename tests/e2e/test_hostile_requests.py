"""Property-based tests against a real `storedvalue serve` process (issue 9): generated and
raw malformed requests to every RPC, with and without the right credential. Whatever is
sent, HQ never answers INTERNAL or UNKNOWN, every error carries exactly one ErrorInfo, an
error changes nothing in the database, and every card's journal still sums to its balance.

Each runs against an HQ on SQLite and one on PostgreSQL (when STOREDVALUE_TEST_POSTGRES_URL is
set). Bounded for CI (a fixed seed, STOREDVALUE_FUZZ_EXAMPLES examples per RPC, default 40);
for a longer run:

    STOREDVALUE_FUZZ_EXAMPLES=2000 STOREDVALUE_FUZZ_SEED=$RANDOM \\
        .venv/bin/pytest tests/e2e/test_hostile_requests.py

STOREDVALUE_FUZZ_PROCESSES=2 fuzzes `storedvalue serve --processes 2` instead (a supervisor
and two workers on the one port and database).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from functools import partial

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import common_pb2, offline_pb2
from storedvalue.v1 import terminal_service_pb2 as ts

from .database_probes import DatabaseProbe, postgres_probe, sqlite_probe
from .harness import (
    ADMIN_TOKEN,
    BackOffice,
    Failure,
    eur,
    failure_of,
    free_port,
    fresh_postgres_database,
    new_id,
    start_serve,
    stop_process,
    wait_serving,
)
from .hostile_requests import KnownValues, messages, undecodable_bytes

EXAMPLES = int(os.environ.get("STOREDVALUE_FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("STOREDVALUE_FUZZ_SEED", "20261202"))
PROCESSES = int(os.environ.get("STOREDVALUE_FUZZ_PROCESSES", "1"))
CALL_TIMEOUT = 30.0
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.large_base_example],
)
# Generous: the machine is shared, and a long run multiplies the examples.
RUN_TIMEOUT = max(300, EXAMPLES * 3)

SERVICES = {
    "TerminalService": ts.DESCRIPTOR.services_by_name["TerminalService"],
    "BackOfficeService": bo.DESCRIPTOR.services_by_name["BackOfficeService"],
}
METHODS: list[MethodDescriptor] = [m for s in SERVICES.values() for m in s.methods]
PAGED_LISTS = {"ListJournalEntries": "journal", "ListParameterVersions": "versions",
               "ListOfflineExceptions": "exceptions", "ListLocks": "locks",
               "ListTerminals": "terminals", "ListParameterChanges": "changes"}
UNKNOWN_CARDS = ["79927398713", "4111111111111111", "5555555555554444"]


@dataclass
class FuzzedHQ:
    process: subprocess.Popen[str]
    channel: grpc.Channel
    database: DatabaseProbe
    known: KnownValues
    credentials: dict[str, tuple[tuple[str, str], ...]]


def _prepare(channel: grpc.Channel) -> tuple[KnownValues, dict[str, tuple[tuple[str, str], ...]]]:
    """Tills, cards, locks, an offline exception and page tokens for the fuzzer to aim at."""
    back_office = BackOffice(channel)
    till, other = back_office.register_till("fuzz-a"), back_office.register_till("fuzz-b")
    back_office.register_till("till-spare")
    version = back_office.call("UpdateParameters", bo.UpdateParametersRequest(
        request_id=new_id(), gift_card_offline_completion_allowed=True)).parameters.version
    cards = [till.issue_gift_card(50_000).card_number for _ in range(4)]
    cards.append(till.call("IssueCard", ts.IssueCardRequest(
        request_id=new_id(), kind=common_pb2.CARD_KIND_CREDIT_MEMO,
        initial_value=eur(3_000))).card.card_number)
    cards.append(till.issue_gift_card(10**15).card_number)  # at the largest balance
    cards += [till.issue_gift_card(20_000).card_number for _ in range(4)]  # free to lock
    tokens = [till.lock(number, f"sale-{i}").lock.fencing_token
              for i, number in enumerate(cards[:3], start=1)]
    tokens.append(other.lock(cards[3], "their-sale").lock.fencing_token)
    completed = timestamp_pb2.Timestamp(seconds=1_790_000_000)
    till.call("SyncOfflineBatch", ts.SyncOfflineBatchRequest(
        request_id=new_id(), transactions=[offline_pb2.OfflineTransaction(
            transaction_id="sale-0", sequence_number=1, completed_at=completed,
            parameters_version=version,
            redeem_lines=[offline_pb2.OfflineRedeemLine(
                line_id="1", card_number=cards[4], card_kind=common_pb2.CARD_KIND_CREDIT_MEMO,
                amount=eur(5_000), fencing_token=0)])]))
    exceptions = back_office.call("ListOfflineExceptions",
                                  bo.ListOfflineExceptionsRequest(page_size=1))
    page_tokens = [
        exceptions.next_page_token,
        back_office.call("ListJournalEntries", bo.ListJournalEntriesRequest(
            card_number=cards[0], page_size=1)).next_page_token,
        back_office.call("ListParameterVersions", bo.ListParameterVersionsRequest(
            page_size=1)).next_page_token,
        back_office.call("ListLocks", bo.ListLocksRequest(page_size=1)).next_page_token,
        back_office.call("ListTerminals", bo.ListTerminalsRequest(page_size=1)).next_page_token,
    ]
    known = KnownValues(
        strings={
            "card_number": cards + UNKNOWN_CARDS,
            "transaction_id": ["sale-1", "sale-2", "sale-3", "their-sale", "sale-0", "sale-9"],
            "line_id": ["1", "2"],
            "request_id": ["fuzz-request-1", "fuzz-request-2"],  # reused: REQUEST_ID_REUSED
            "currency_code": ["EUR", "EUR", "USD"],
            "terminal_id": ["till-spare", "fuzz-b", "no-such-till"],
            "exception_id": [e.exception_id for e in exceptions.exceptions] + ["exc_nope"],
            "page_token": [t for t in page_tokens if t],
            "reason": ["till broken"], "resolution": ["customer refunded"],
            "display_name": ["Store 1, till 2"],
        },
        traps={
            "card_number": ["4111111111111111 ", "79927398713\x00", "9" * 19, "0" * 8,
                            "\u00b2" * 16, "-4111111111111111", cards[0] + "\n"],
            "currency_code": ["EUR\n", "eur", "EU", "EURO", "\u20ac", "E\x00R", " EUR"],
            "transaction_id": ["s\x00", "s\n", "x" * 129, "\u200b"],
            "terminal_id": ["fuzz-b\n", "t\x00", "x" * 65, "\u00e9"],
            "request_id": ["r\x00", "r\n", "x" * 129, "\u2028"],
            "line_id": ["1\x00", "\n", "x" * 129],
        },
        ints={
            "fencing_token": [*tokens, 0],
            "amount_minor": [1, 250, 5_000, 10**15],
            "sequence_number": list(range(1, 12)),
            "parameters_version": [0, version],
            "expected_version": [0, version],
            "known_version": [0, version],
            "page_size": [0, 1, 2, 500],
            "seconds": [1_790_000_000, 60, 3_600],
            "nanos": [0, 500_000_000],
        },
    )
    credentials = {
        "till": till.metadata,
        "other till": other.metadata,
        "admin": back_office.metadata,
        "none": (),
        "unknown token": (("authorization", "Bearer svt_not-a-real-token"),),
        "malformed": (("authorization", "Basic abc"),),
    }
    return known, credentials


@pytest.fixture(scope="module", params=[
    "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[str, Callable[[], ContextManager[DatabaseProbe]]]]:
    """An empty database for the fuzzed HQ (its URL), and how to watch it from outside."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("fuzzed-hq-db") / "hq.sqlite3"
        yield f"sqlite:///{path}", partial(sqlite_probe, path)
        return
    with fresh_postgres_database("sv_fuzz") as url:
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(
            hide_password=False)
        yield url, partial(postgres_probe, conninfo)


@pytest.fixture(scope="module")
def fuzzed_hq(database: tuple[str, Callable[[], ContextManager[DatabaseProbe]]],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedHQ]:
    url, open_probe = database
    home = tmp_path_factory.mktemp("fuzzed-hq")
    address = f"127.0.0.1:{free_port()}"
    process = start_serve(
        # A high unknown-card limit: guesses would otherwise end in RATE_LIMITED early and
        # keep the fuzzer away from the rules behind the lookup.
        ["--listen", address, "--database-url", url, "--unknown-card-limit", "100000",
         "--processes", str(PROCESSES)],
        {"XDG_DATA_HOME": str(home / "data"), "STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN},
        home / "logs",
    )
    try:
        wait_serving(process, address)
        with grpc.insecure_channel(address) as channel, open_probe() as probe:
            known, credentials = _prepare(channel)
            yield FuzzedHQ(process, channel, probe, known, credentials)
    finally:
        code, _, log = stop_process(process, timeout=30)
    assert code == 0, log
    unexpected = [line[:2_000] for line in log.splitlines() if '"level": "ERROR"' in line]
    assert unexpected == [], unexpected[:3]


def _credential_names(method: MethodDescriptor) -> st.SearchStrategy[str]:
    right = "admin" if method.containing_service.name == "BackOfficeService" else "till"
    return st.sampled_from([right] * 12 + ["other till", "admin", "till", "none",
                                           "unknown token", "malformed"])


def _call(hq: FuzzedHQ, method: MethodDescriptor, body: bytes, credential: str
          ) -> Failure | None:
    """Send raw request bytes; the failure, or None when HQ answered OK."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = hq.credentials[credential]
    try:
        if method.server_streaming:
            stream = hq.channel.unary_stream(path, request_serializer=None,
                                             response_deserializer=None)
            # The stream never ends by itself: read what comes within a short deadline.
            for _ in stream(body, metadata=metadata, timeout=0.3):
                pass
        else:
            unary = hq.channel.unary_unary(path, request_serializer=None,
                                           response_deserializer=None)
            unary(body, metadata=metadata, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        failure = failure_of(error)
        if method.server_streaming and failure.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return None  # our deadline ended a stream HQ kept open: fine
        return failure
    return None


def _assert_answered_by_the_rules(hq: FuzzedHQ, method: MethodDescriptor, body: bytes,
                                  credential: str) -> None:
    before = hq.database.version()
    failure = _call(hq, method, body, credential)
    if failure is None:
        assert hq.database.unbalanced_cards() == [], method.name
        return
    assert failure.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        method.name, credential, body[:200], failure)
    assert failure.error_infos == 1, (method.name, credential, body[:200], failure)
    assert failure.domain == "storedvalue.dev" and failure.reason.isupper(), failure
    assert hq.database.version() == before, ("an error changed the database", method.name,
                                             failure)


def _method_ids(method: MethodDescriptor) -> str:
    return method.name


def _bodies(form: str, method: MethodDescriptor, known: KnownValues
            ) -> st.SearchStrategy[bytes]:
    requests = messages(method.input_type, known)
    if form == "generated":
        return requests.map(lambda request: request.SerializeToString())
    return undecodable_bytes(requests)


@pytest.mark.timeout(RUN_TIMEOUT)
@pytest.mark.parametrize("form", ["generated", "raw"])
@pytest.mark.parametrize("method", METHODS, ids=_method_ids)
@FUZZ
@seed(SEED)
@given(data=st.data())
def test_hostile_requests_are_answered_by_the_rules(
    fuzzed_hq: FuzzedHQ, method: MethodDescriptor, form: str, data: st.DataObject
) -> None:
    """`generated`: request messages with hostile fields; `raw`: bytes that are mostly no
    valid encoding of the request at all."""
    known = fuzzed_hq.known.for_list(PAGED_LISTS.get(method.name))
    body = data.draw(_bodies(form, method, known), label="body")
    credential = data.draw(_credential_names(method), label="credential")
    _assert_answered_by_the_rules(fuzzed_hq, method, body, credential)


def test_the_database_watch_sees_every_commit_of_hq(fuzzed_hq: FuzzedHQ) -> None:
    """What makes "an error changed nothing" checkable: a commit by HQ moves the version."""
    before = fuzzed_hq.database.version()
    fuzzed_hq.channel.unary_unary(
        "/storedvalue.v1.TerminalService/IssueCard",
        request_serializer=ts.IssueCardRequest.SerializeToString,
        response_deserializer=ts.IssueCardResponse.FromString,
    )(ts.IssueCardRequest(request_id=new_id(), kind=common_pb2.CARD_KIND_GIFT_CARD,
                          initial_value=eur(100)),
      metadata=fuzzed_hq.credentials["till"], timeout=CALL_TIMEOUT)
    assert fuzzed_hq.database.version() != before


def test_every_rpc_of_the_contract_is_fuzzed() -> None:
    assert len(METHODS) == 26
    assert {m.name for m in METHODS} >= {"SyncOfflineBatch", "WatchParameters",
                                          "ListJournalEntries", "ForceUnlockCard",
                                          "ReportTerminalStatus", "UpdateParameters",
                                          "RevokeTerminal", "SetTerminalStore",
                                          "ListParameterChanges", "GetStoreParameters"}

