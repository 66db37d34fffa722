"""What the end-to-end tests share: a client for a running HQ, its terminals, its errors,
and starting `storedvalue serve` processes."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import back_office_service_pb2_grpc as bo_grpc
from storedvalue.v1 import common_pb2
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

ADMIN_TOKEN = "e2e-admin-token"
POSTGRES_ENV = "STOREDVALUE_TEST_POSTGRES_URL"
CALL_TIMEOUT = 15.0
T = TypeVar("T")


def new_id() -> str:
    return str(uuid.uuid4())


def eur(amount_minor: int) -> common_pb2.Money:
    return common_pb2.Money(amount_minor=amount_minor, currency_code="EUR")


@dataclass(frozen=True)
class Failure:
    """A failed call as a till sees it: status code and the one ErrorInfo."""

    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    error_infos: int


def failure_of(error: grpc.RpcError) -> Failure:
    call: Any = error
    status = rpc_status.from_call(call)
    infos = []
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    first = infos[0] if infos else error_details_pb2.ErrorInfo()
    return Failure(
        code=call.code(),
        message=call.details() or "",
        reason=first.reason,
        domain=first.domain,
        metadata=dict(first.metadata),
        error_infos=len(infos),
    )


def expect_failure(call: Callable[[], object]) -> Failure:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return failure_of(raised.value)


class Till:
    """One registered terminal calling TerminalService with its own credential."""

    def __init__(self, channel: grpc.Channel, terminal_id: str, token: str) -> None:
        self.stub = ts_grpc.TerminalServiceStub(channel)
        self.terminal_id = terminal_id
        self.token = token
        self.metadata = (("authorization", f"Bearer {token}"),)

    def call(self, rpc: str, request: Message) -> Any:
        return getattr(self.stub, rpc)(request, metadata=self.metadata, timeout=CALL_TIMEOUT)

    def issue_gift_card(self, amount_minor: int, currency: str = "EUR") -> common_pb2.Card:
        response = self.call("IssueCard", ts.IssueCardRequest(
            request_id=new_id(), kind=common_pb2.CARD_KIND_GIFT_CARD,
            initial_value=common_pb2.Money(amount_minor=amount_minor, currency_code=currency),
        ))
        card: common_pb2.Card = response.card
        return card

    def lock(self, card_number: str, transaction_id: str) -> ts.LockCardResponse:
        response: ts.LockCardResponse = self.call("LockCard", ts.LockCardRequest(
            request_id=new_id(), card_number=card_number, transaction_id=transaction_id,
        ))
        return response

    def get_card(self, card_number: str) -> common_pb2.Card:
        card: common_pb2.Card = self.call(
            "GetCard", ts.GetCardRequest(card_number=card_number)
        ).card
        return card


class BackOffice:
    """BackOfficeService with the admin credential."""

    def __init__(self, channel: grpc.Channel, admin_token: str = ADMIN_TOKEN) -> None:
        self.channel = channel
        self.stub = bo_grpc.BackOfficeServiceStub(channel)
        self.metadata = (("authorization", f"Bearer {admin_token}"),)

    def call(self, rpc: str, request: Message) -> Any:
        return getattr(self.stub, rpc)(request, metadata=self.metadata, timeout=CALL_TIMEOUT)

    def register_till(self, terminal_id: str, channel: grpc.Channel | None = None) -> Till:
        response = self.call("RegisterTerminal", bo.RegisterTerminalRequest(
            request_id=new_id(), terminal_id=terminal_id,
        ))
        return Till(channel or self.channel, terminal_id, response.credential.bearer_token)

    def journal(self, card_number: str, page_size: int = 0) -> list[bo.JournalEntry]:
        entries: list[bo.JournalEntry] = []
        token = ""
        while True:
            page = self.call("ListJournalEntries", bo.ListJournalEntriesRequest(
                card_number=card_number, page_size=page_size, page_token=token,
            ))
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries


def wait_until(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll `condition` until it returns something truthy, failing after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# -- `storedvalue serve` processes ------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_serve(args: Sequence[str], env: Mapping[str, str], log_dir: Path
                ) -> subprocess.Popen[str]:
    """`storedvalue serve ARGS`. Its JSON log goes to a file in `log_dir` (see `server_log`):
    a pipe nobody reads would fill up and block the server."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=log_dir, prefix="serve-", suffix=".log", delete=False
    ) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "storedvalue.cli", "serve", *args],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    _LOGS[process.pid] = Path(log.name)
    _STARTED.append(process)
    return process


_LOGS: dict[int, Path] = {}
_STARTED: list[subprocess.Popen[str]] = []
"""Every `serve` that `start_serve` started, referenced until the session ends: a test or
fixture that failed before it stopped its process, or did not close the stdout of one that
died on its own, would otherwise leave the pipe to the garbage collector, whose
ResourceWarning then fails whichever test runs at that moment (an unraisable exception)."""


def reap(process: subprocess.Popen[str]) -> None:
    """Kill ``process`` if it still runs, wait for it, and close its stdout (also when it
    exited on its own)."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)
    if process.stdout is not None:
        process.stdout.close()


def reap_started() -> None:
    """`reap` every `serve` that `start_serve` started (the end of the session)."""
    while _STARTED:
        reap(_STARTED.pop())


def server_log(process: subprocess.Popen[str]) -> str:
    return _LOGS[process.pid].read_text(encoding="utf-8")


PROBE_CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                         ("grpc.max_reconnect_backoff_ms", 250)]
"""For a channel that polls a server still starting: gRPC waits 1 s, then 1.6 times longer
after each refused connection (with jitter), during which every call fails at once. A server
that took 6 s to start under load (4 s of it importing) was seen serving 4.2 s later; one up
at 9.5 s could be seen only at about 16 s. Redialling every 250 ms at most, 0.13 s later."""


def wait_serving(process: subprocess.Popen[str], address: str, timeout: float = 30.0) -> None:
    """Wait until the process's health check says SERVING (or fail if it exited)."""
    with grpc.insecure_channel(address, options=PROBE_CHANNEL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            if process.poll() is not None:
                reap(process)
                pytest.fail(f"storedvalue serve exited with {process.returncode}: "
                            f"{server_log(process)}")
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, timeout=timeout, what=f"HQ at {address} to serve")


class HQProcess:
    """`storedvalue serve` on a SQLite file under `tmp_path`, on a fixed free port so that a
    restart (after a SIGKILL) serves the same address."""

    def __init__(self, tmp_path: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.database = tmp_path / "hq.sqlite3"
        self.logs = tmp_path / "logs"
        self.env = {"XDG_DATA_HOME": str(tmp_path / "data"), "STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN}
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = start_serve(
            ["--listen", self.address, "--database-url", f"sqlite:///{self.database}"],
            self.env, self.logs)
        wait_serving(self.process, self.address)

    def kill(self) -> None:
        assert self.process is not None
        reap(self.process)

    def stop(self) -> None:
        if self.process is not None:
            reap(self.process)


def stop_process(process: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """SIGTERM, then the exit code, stdout and log (killed if it overstays `timeout`)."""
    if process.poll() is None:
        process.terminate()
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        reap(process)
        pytest.fail(f"storedvalue serve did not exit within {timeout} s of SIGTERM: "
                    f"{server_log(process)}")
    return process.returncode, out, server_log(process)


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """The SQLAlchemy URL of a new database on the server STOREDVALUE_TEST_POSTGRES_URL names
    (the test skips without it), dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    url = make_url(base)
    name = f"{prefix}_{secrets.token_hex(6)}"
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
