"""`storedvalue serve --processes 2` as real processes on a SQLite file: the workers share
the port and the money, stop together, die with their supervisor, and keep the port from a
second HQ.

Which worker holds a connection is read from /proc (each worker's sockets against the
kernel's table of established connections): the tests need no hook in HQ for it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import (
    ADMIN_TOKEN,
    BackOffice,
    Till,
    eur,
    failure_of,
    free_port,
    fresh_postgres_database,
    new_id,
    reap,
    server_log,
    start_serve,
    stop_process,
    wait_serving,
    wait_until,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the workers' sockets from Linux's /proc")

WORKERS = 2
DEADLINE = 30.0
_ESTABLISHED, _LISTEN = "01", "0A"


class Fleet:
    """One `storedvalue serve --processes 2`, by default on a SQLite file under `tmp_path`."""

    def __init__(self, tmp_path: Path, listen: str | None = None,
                 database_url: str | None = None) -> None:
        self.listen = listen or f"127.0.0.1:{free_port()}"
        self.database_url = database_url or f"sqlite:///{tmp_path / 'hq.sqlite3'}"
        self.logs = tmp_path / "logs"
        self.env = {"XDG_DATA_HOME": str(tmp_path / "data"), "STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN}
        self.args = ["--listen", self.listen, "--database-url", self.database_url,
                     "--processes", str(WORKERS), "--grace-period", "5"]
        self.process: subprocess.Popen[str] | None = None
        self.printed: queue.Queue[str] = queue.Queue()
        self.reader: threading.Thread | None = None
        self.address = ""

    def start(self) -> None:
        self.process = process = start_serve(self.args, self.env, self.logs)
        printed = self.printed = queue.Queue()

        def read() -> None:  # stdout, line by line, without ever blocking the test
            assert process.stdout is not None
            for line in process.stdout:
                printed.put(line)

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        self.address = self.announced_address()
        wait_serving(process, self.address)

    def announced_address(self) -> str:
        try:
            line = self.printed.get(timeout=DEADLINE)
        except queue.Empty:
            pytest.fail(f"serve printed nothing within {DEADLINE} s: {self.log()}")
        assert line.startswith("storedvalue HQ listening on "), line
        return line.split()[4]

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def worker_pids(self) -> list[int]:
        """The workers' pids, from the supervisor's "serving" log entry."""

        def logged() -> list[int] | None:
            for entry in self.entries():
                if entry.get("message") == "serving" and "worker_pids" in entry:
                    return [int(pid) for pid in str(entry["worker_pids"]).split(",")]
            return None

        return wait_until(logged, timeout=DEADLINE, what="the workers' pids in the log")

    def entries(self) -> Iterator[dict[str, object]]:
        for line in self.log().splitlines():
            if line.startswith("{"):
                yield json.loads(line)

    def log(self) -> str:
        assert self.process is not None
        return server_log(self.process)

    def exit_code(self) -> int:
        assert self.process is not None
        process = self.process
        wait_until(lambda: process.poll() is not None, timeout=DEADLINE,
                   what="the supervisor to exit")
        process.communicate()
        return process.returncode

    def kill(self) -> None:
        """Kill the supervisor if it runs, and close its stdout once read to the end (also
        when it exited on its own: an unclosed pipe is reported in a later test)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        if self.reader is not None:  # the end of stdout: its workers die with it
            self.reader.join(timeout=DEADLINE)
        if process.stdout is not None and (self.reader is None or not self.reader.is_alive()):
            process.stdout.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    started = Fleet(tmp_path)
    try:
        started.start()
        yield started
    finally:
        started.kill()


def channels(address: str, count: int) -> list[grpc.Channel]:
    """`count` channels with a connection each (gRPC otherwise shares one connection among
    the channels of a process to one address)."""
    return [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(count)]


def gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def sockets_on_port(port: int, state: str) -> set[int]:
    """Inodes of this machine's TCP sockets on local `port` in `state` (/proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                    inodes.add(int(fields[9]))
    return inodes


def owned(pid: int, inodes: set[int]) -> int:
    """How many of the sockets `inodes` the process `pid` holds open."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in inodes:
            count += 1
    return count


def test_calls_from_many_connections_are_answered_by_more_than_one_worker(
    fleet: Fleet,
) -> None:
    connections = channels(fleet.address, 24)
    try:
        back_office = BackOffice(connections[0])
        till = back_office.register_till("till-1")
        card = till.issue_gift_card(500)
        answered = [Till(channel, till.terminal_id, till.token).get_card(card.card_number)
                    for channel in connections]
        established = sockets_on_port(fleet.port, _ESTABLISHED)
        held = {pid: owned(pid, established) for pid in fleet.worker_pids()}
    finally:
        for channel in connections:
            channel.close()

    assert [card.balance for card in answered] == [eur(500)] * 24
    # Each channel has its connection, accepted by one worker or the other (the kernel
    # hashes connections over the workers: all 24 on one would be a 1-in-8-million chance).
    assert sum(held.values()) >= 24, held
    assert all(count > 0 for count in held.values()), held


def test_concurrent_lock_and_redeem_cycles_on_shared_cards_debit_exactly_what_was_asked(
    fleet: Fleet,
) -> None:
    sell_concurrently_and_check_balances(fleet)


def test_workers_on_postgresql_debit_exactly_what_was_asked_and_stop_cleanly(
    tmp_path: Path,
) -> None:
    with fresh_postgres_database("sv_processes") as url:
        fleet = Fleet(tmp_path, database_url=url)
        try:
            fleet.start()
            sell_concurrently_and_check_balances(fleet)
            assert fleet.process is not None
            code, _out, log = stop_process(fleet.process, timeout=DEADLINE)
        finally:
            fleet.kill()
    assert code == 0, log


def sell_concurrently_and_check_balances(fleet: Fleet) -> None:
    """Eight tills, each on its own connection, sell on two shared cards at once."""
    connections = channels(fleet.address, 8)
    try:
        back_office = BackOffice(connections[0])
        tills = [Till(channel, registered.terminal_id, registered.token)
                 for channel, registered in zip(connections, (
                     back_office.register_till(f"till-{n}") for n in range(len(connections))),
                     strict=True)]
        cards = [card.card_number for card in (tills[0].issue_gift_card(100_000),
                                               tills[0].issue_gift_card(100_000))]

        def sell(index: int) -> dict[str, int]:
            """Ten sales on whichever of the two cards is free, 1 to 10 cents each;
            what this till was debited per card."""
            till, debited = tills[index], dict.fromkeys(cards, 0)
            sales = 0
            attempt = 0
            while sales < 10:
                attempt += 1
                card = cards[(index + attempt) % len(cards)]
                sale = new_id()
                try:
                    lock = till.lock(card, sale).lock
                except grpc.RpcError as error:
                    if failure_of(error).reason == "CARD_LOCKED":
                        continue  # another till's sale holds it: try the other card
                    raise
                amount = 1 + (index + sales) % 10
                redeemed = till.call("Redeem", ts.RedeemRequest(
                    request_id=new_id(), card_number=card, transaction_id=sale,
                    line_id="line-1", fencing_token=lock.fencing_token, amount=eur(amount)))
                assert redeemed.debited == eur(amount)
                debited[card] += amount
                sales += 1
            return debited

        with ThreadPoolExecutor(len(tills)) as pool:
            results = list(pool.map(sell, range(len(tills))))
        balances = {card: tills[0].get_card(card).balance for card in cards}
    finally:
        for channel in connections:
            channel.close()

    for card in cards:
        asked = sum(result[card] for result in results)
        assert balances[card] == eur(100_000 - asked)
    assert sum(sum(result.values()) for result in results) == sum(
        1 + (index + sale) % 10 for index in range(len(results)) for sale in range(10))


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(fleet: Fleet) -> None:
    assert fleet.process is not None
    workers = fleet.worker_pids()

    code, _out, log = stop_process(fleet.process, timeout=DEADLINE)

    assert code == 0, log
    assert all(gone(pid) for pid in workers)
    stopped = [entry for entry in fleet.entries() if entry.get("message") == "stopped"]
    assert sorted(int(str(entry["pid"])) for entry in stopped if "pid" in entry) == sorted(workers)


def test_a_killed_supervisor_takes_its_workers_with_it_and_the_port_serves_again(
    fleet: Fleet, tmp_path: Path,
) -> None:
    assert fleet.process is not None
    workers = fleet.worker_pids()
    with channels(fleet.address, 1)[0] as channel:
        card = BackOffice(channel).register_till("till-1").issue_gift_card(700)

    fleet.process.send_signal(signal.SIGKILL)
    fleet.process.communicate(timeout=DEADLINE)
    wait_until(lambda: all(gone(pid) for pid in workers), timeout=DEADLINE,
               what="every worker to die with the supervisor")
    restarted = Fleet(tmp_path, listen=fleet.address)
    try:
        restarted.start()
        with channels(restarted.address, 1)[0] as channel:
            till = BackOffice(channel).register_till("till-2")
            assert till.get_card(card.card_number).balance == eur(700)
    finally:
        restarted.kill()


def test_a_second_serve_on_the_same_port_fails_clearly_and_the_first_keeps_serving(
    fleet: Fleet, tmp_path: Path,
) -> None:
    second = start_serve(fleet.args, fleet.env, tmp_path / "second-logs")
    try:
        second.communicate(timeout=DEADLINE)
    finally:
        reap(second)

    assert second.returncode == 2
    assert f"{fleet.listen} is already in use by another process" in server_log(second)
    wait_serving(fleet.process, fleet.address)  # type: ignore[arg-type]


def test_a_worker_that_dies_stops_the_others_and_the_supervisor_exits_non_zero(
    fleet: Fleet,
) -> None:
    killed, other = fleet.worker_pids()

    os.kill(killed, signal.SIGKILL)

    assert fleet.exit_code() != 0
    assert gone(other)
    log = fleet.log()
    assert f"(pid {killed}) exited on its own" in log
    assert any(entry.get("message") == "stopped" and entry.get("pid") == other
               for entry in fleet.entries())  # drained, not killed


def test_port_0_gives_every_worker_the_ports_the_first_one_got(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, listen="127.0.0.1:0")
    fleet.args += ["--health-listen", "127.0.0.1:0"]
    try:
        fleet.start()
        rest = [fleet.printed.get(timeout=DEADLINE) for _ in range(4)]
        health_port = int(rest[2].rpartition(":")[2])
        workers = fleet.worker_pids()
        listening = [owned(pid, sockets_on_port(fleet.port, _LISTEN)) for pid in workers]
        health_listening = [owned(pid, sockets_on_port(health_port, _LISTEN))
                            for pid in workers]
    finally:
        fleet.kill()

    assert fleet.port != 0
    assert rest[2].startswith("health (plaintext, health service only): 127.0.0.1:")
    assert health_port not in (0, fleet.port)
    assert listening == [1, 1]
    assert health_listening == [1, 1]
    assert rest[3] == (f"worker processes: {WORKERS}, sharing the port "
                       f"(pids {', '.join(str(pid) for pid in workers)})\n")


# Loaded by every interpreter started with its directory on PYTHONPATH: the second worker
# to open the database fails, as a worker whose start goes wrong would.
FAILING_SECOND_WORKER = """
import os
from pathlib import Path

import storedvalue.hq.server as server

opened_before = Path(os.environ["SV_TEST_OPENED_MARKER"])
open_storage = server.open_storage


def open_or_fail(config):
    try:
        opened_before.touch(exist_ok=False)
    except FileExistsError:
        raise RuntimeError("the disk is on fire") from None
    return open_storage(config)


server.open_storage = open_or_fail
"""


def test_a_worker_failing_at_start_stops_the_others_and_its_error_is_shown(
    tmp_path: Path,
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAILING_SECOND_WORKER)
    fleet = Fleet(tmp_path)
    fleet.env |= {"PYTHONPATH": os.pathsep.join(
                      filter(None, [str(hooks), os.environ.get("PYTHONPATH")])),
                  "SV_TEST_OPENED_MARKER": str(tmp_path / "opened")}
    fleet.process = start_serve(fleet.args, fleet.env, fleet.logs)
    try:
        code = fleet.exit_code()
        started = [int(str(entry["pid"])) for entry in fleet.entries()
                   if entry.get("message") == "worker process started"]
    finally:
        fleet.kill()

    assert code == 1
    assert "failed to start: RuntimeError: the disk is on fire" in fleet.log()
    assert len(started) == WORKERS
    assert all(gone(pid) for pid in started)


def test_sighup_reaches_every_worker_and_stops_none(fleet: Fleet) -> None:
    assert fleet.process is not None
    workers = fleet.worker_pids()

    fleet.process.send_signal(signal.SIGHUP)

    def reloaded_by() -> set[int] | None:
        pids = {int(str(entry["pid"])) for entry in fleet.entries()
                if entry.get("trigger") == "SIGHUP" and "pid" in entry}
        return pids if pids == set(workers) else None

    wait_until(reloaded_by, timeout=DEADLINE, what="every worker to handle SIGHUP")
    wait_serving(fleet.process, fleet.address)
    assert not any(gone(pid) for pid in workers)


def test_a_worker_stopped_by_its_own_sigterm_stops_the_others_and_all_is_well(
    fleet: Fleet,
) -> None:
    # What a service manager does, or Ctrl-C in a terminal: every process of the group is
    # signalled, and a worker may be done before the supervisor passes the signal on.
    signalled, other = fleet.worker_pids()

    os.kill(signalled, signal.SIGTERM)

    assert fleet.exit_code() == 0, fleet.log()
    assert gone(other)
