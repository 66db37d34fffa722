"""Two real HQ processes on one SQLite file, one of them stopped (SIGSTOP, as a debugger or
a frozen disk stops it) in the middle of its commit, holding the processes' writer lock and
SQLite's: the other one goes on answering reads, fails its writes with HQ_BUSY after the
busy timeout (shortened here) without applying them, and writes again once the stopped one
goes on, which finishes its commit and answers its caller."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import (
    ADMIN_TOKEN,
    BackOffice,
    expect_failure,
    free_port,
    new_id,
    reap,
    start_serve,
    stop_process,
    wait_serving,
    wait_until,
)

pytestmark = [pytest.mark.slow]
BUSY_TIMEOUT_MS = 1_000
DEADLINE = 30.0

# Loaded by every interpreter started with its directory on PYTHONPATH: a shorter busy
# timeout, and, in the process given SV_TEST_STOP_AT_COMMIT, the first commit after that
# file appears stops the whole process (the file is taken away first, so only once).
HOOKS = """
import os
import signal

from storedvalue.hq.storage import group_commit, transaction

group_commit.SQLITE_BUSY_TIMEOUT_MS = int(os.environ["SV_TEST_BUSY_TIMEOUT_MS"])
stop_file = os.environ.get("SV_TEST_STOP_AT_COMMIT")
if stop_file:
    commit = transaction.Transaction.commit

    def stopping_commit(self):
        try:
            os.unlink(stop_file)
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGSTOP)
        commit(self)

    transaction.Transaction.commit = stopping_commit
"""


def stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "T"


def test_a_process_stopped_mid_commit_makes_the_others_writes_fail_busy_until_it_goes_on(
    tmp_path: Path,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(HOOKS)
    stop_file = tmp_path / "stop-at-next-commit"
    env = {"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks),
                                                       os.environ.get("PYTHONPATH")])),
           "SV_TEST_BUSY_TIMEOUT_MS": str(BUSY_TIMEOUT_MS)}
    database_url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes: list[subprocess.Popen[str]] = [
        start_serve(["--listen", address, "--database-url", database_url,
                     "--grace-period", "5"], env | extra, tmp_path)
        for address, extra in zip(
            addresses, [{"SV_TEST_STOP_AT_COMMIT": str(stop_file)}, {}], strict=True)
    ]
    stopping = processes[0]
    channels: list[grpc.Channel] = []
    try:
        for process, address in zip(processes, addresses, strict=True):
            wait_serving(process, address)
        channels = [grpc.insecure_channel(address) for address in addresses]
        stopping_office, other_office = (BackOffice(channel) for channel in channels)
        till = other_office.register_till("reader", channels[1])
        before = till.call("GetParameters", ts.GetParametersRequest()).parameters
        change = bo.UpdateParametersRequest(
            request_id=new_id(),
            credit_memo_offline_completion_allowed=(
                not before.credit_memo_offline_completion_allowed),
        )

        with ThreadPoolExecutor(max_workers=1) as pool:
            stop_file.touch()
            # A write on the first process: it stops in its commit. (The till it registers
            # then calls the other process.)
            registering = pool.submit(stopping_office.register_till, "registered-meanwhile",
                                      channels[1])
            wait_until(lambda: not stop_file.exists() and stopped(stopping.pid),
                       timeout=DEADLINE, what="the first process to stop in its commit")

            started = time.monotonic()
            busy = expect_failure(lambda: other_office.call("UpdateParameters", change))
            waited = time.monotonic() - started
            during = till.call("GetParameters", ts.GetParametersRequest()).parameters

            stopping.send_signal(signal.SIGCONT)
            registered = registering.result(timeout=DEADLINE)

        updated = other_office.call("UpdateParameters", change).parameters
        # What the stopped process was committing is there for the other one too.
        registered.call("GetParameters", ts.GetParametersRequest())
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
        for channel in channels:
            channel.close()
        exits = []
        for process in processes:
            try:
                exits.append(stop_process(process, timeout=15))
            except BaseException:  # the other one is not left running
                for rest in processes:
                    reap(rest)
                raise

    assert (busy.code, busy.reason) == (grpc.StatusCode.UNAVAILABLE, "HQ_BUSY")
    assert waited >= BUSY_TIMEOUT_MS / 1000
    assert during == before  # the failed change was not applied; reads went on
    assert updated.version > before.version
    assert (updated.credit_memo_offline_completion_allowed
            != before.credit_memo_offline_completion_allowed)
    assert [code for code, _out, _log in exits] == [0, 0], [log for _c, _o, log in exits]
