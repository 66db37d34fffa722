"""`storedvalue serve` told to listen where it cannot (an address another process holds, one
this machine does not have): it exits 2 with a message saying so, without a traceback,
before it writes anything (no database, no admin token file), and the HQ already there
keeps serving. An embedded HQ that gRPC cannot bind says the same and lets go of what it
had bound."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from in_process_hq import hq_config

from storedvalue.hq.config import ConfigError
from storedvalue.hq.server import create_server

from .harness import (
    ADMIN_TOKEN,
    HQProcess,
    free_port,
    reap,
    server_log,
    start_serve,
    wait_serving,
)
from .tls_deployment import Pki

DEADLINE = 30.0


@pytest.fixture
def first(tmp_path: Path) -> Iterator[HQProcess]:
    hq = HQProcess(tmp_path / "first")
    try:
        hq.start()
        yield hq
    finally:
        hq.stop()


def serve_fails(tmp_path: Path, *args: str) -> tuple[int, str]:
    """A second `storedvalue serve ARGS` (one process) on a database of its own under
    `tmp_path / "second"`, with no admin token given: its exit code and log."""
    second = tmp_path / "second"
    process = start_serve(
        [*args, "--database-url", f"sqlite:///{second / 'db' / 'hq.sqlite3'}"],
        {"XDG_DATA_HOME": str(second / "data"), "STOREDVALUE_ADMIN_TOKEN": ""},
        tmp_path / "second-logs",
    )
    try:
        process.communicate(timeout=DEADLINE)
    finally:
        reap(process)
    return process.returncode, server_log(process)


def assert_nothing_written(tmp_path: Path) -> None:
    """Neither the database nor the admin token file (nor their directories) was made."""
    assert not (tmp_path / "second" / "db").exists()
    assert not (tmp_path / "second" / "data").exists()


def test_a_second_serve_on_a_taken_port_exits_2_saying_so_and_the_first_keeps_serving(
    first: HQProcess, tmp_path: Path,
) -> None:
    code, log = serve_fails(tmp_path, "--listen", first.address)

    assert code == 2, log
    assert (f"storedvalue serve: {first.address} is already in use by another process "
            "(another HQ?): stop it or give another address") in log
    assert "Traceback" not in log
    assert_nothing_written(tmp_path)
    assert first.process is not None
    wait_serving(first.process, first.address)


def test_a_taken_health_port_exits_2_naming_it_and_the_first_keeps_serving(
    first: HQProcess, tmp_path: Path,
) -> None:
    code, log = serve_fails(tmp_path, "--listen", f"127.0.0.1:{free_port()}",
                            "--health-listen", first.address)

    assert code == 2, log
    assert (f"storedvalue serve: {first.address} (--health-listen) is already in use by "
            "another process") in log
    assert "Traceback" not in log
    assert_nothing_written(tmp_path)
    assert first.process is not None
    wait_serving(first.process, first.address)


def test_an_address_this_machine_does_not_have_exits_2_saying_so(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    listen = f"192.0.2.1:{free_port()}"  # TEST-NET-1: documentation only, never assigned

    code, log = serve_fails(tmp_path, "--listen", listen,
                            "--tls-cert", str(pki.server.certificate),
                            "--tls-key", str(pki.server.key))

    assert code == 2, log
    assert f"storedvalue serve: cannot listen on {listen}: not an address of this machine" in log
    assert "Traceback" not in log
    assert_nothing_written(tmp_path)


def test_several_processes_on_an_address_this_machine_does_not_have_exit_2_saying_so(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path / "pki")
    listen = f"192.0.2.1:{free_port()}"

    code, log = serve_fails(tmp_path, "--listen", listen, "--processes", "2",
                            "--tls-cert", str(pki.server.certificate),
                            "--tls-key", str(pki.server.key))

    assert code == 2, log
    assert f"storedvalue serve: cannot listen on {listen}: not an address of this machine" in log
    assert_nothing_written(tmp_path)


# -- an embedded HQ: no check first, gRPC's failure explained ---------------------------------


@pytest.fixture
def taken() -> Iterator[str]:
    """An address another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield f"127.0.0.1:{holder.getsockname()[1]}"


def test_an_embedded_hq_on_a_taken_address_raises_a_config_error_saying_so(
    tmp_path: Path, taken: str,
) -> None:
    with pytest.raises(ConfigError, match=f"{taken} is already in use by another process"):
        create_server(hq_config(tmp_path, admin_token=ADMIN_TOKEN, listen=taken))


def test_an_embedded_hq_whose_health_port_is_taken_lets_go_of_its_main_port(
    tmp_path: Path, taken: str,
) -> None:
    listen = f"127.0.0.1:{free_port()}"

    with pytest.raises(ConfigError, match=rf"{taken} \(--health-listen\) is already in use"):
        create_server(hq_config(tmp_path, admin_token=ADMIN_TOKEN, listen=listen,
                                health_listen=taken))

    # Free again at once: listening there without SO_REUSEPORT succeeds.
    with socket.socket() as again:
        again.bind(("127.0.0.1", int(listen.rpartition(":")[2])))
        again.listen()


def test_serve_processes_still_refuse_a_taken_port(first: HQProcess, tmp_path: Path) -> None:
    code, log = serve_fails(tmp_path, "--listen", first.address, "--processes", "2")

    assert code == 2, log
    assert f"{first.address} is already in use by another process" in log
    assert_nothing_written(tmp_path)
    assert isinstance(first.process, subprocess.Popen)
    wait_serving(first.process, first.address)
