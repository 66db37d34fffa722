"""Certificate rotation without downtime: HQ serves new connections with new certificate,
key and CA files after SIGHUP or a change of the files, while open connections keep going;
no call fails during a rotation, bad files leave the served ones in place, and SIGHUP never
ends the server."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from certificates import CertificateAuthority, Issued
from in_process_hq import InProcessHQ

from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import (
    ADMIN_TOKEN,
    BackOffice,
    Till,
    free_port,
    reap,
    server_log,
    start_serve,
    stop_process,
    wait_serving,
    wait_until,
)
from .tls_deployment import Pki, served_certificate


def deployed_copy(issued: Issued, directory: Path) -> Issued:
    """The files HQ is started with (a rotation replaces them in place)."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = Issued(directory / "hq.pem", directory / "hq.key", issued.serial_number)
    shutil.copyfile(issued.certificate, copy.certificate)
    shutil.copyfile(issued.key, copy.key)
    copy.key.chmod(0o600)
    return copy


@dataclass
class Traffic:
    """Calls made without pause from threads until stopped: one on a long-lived connection,
    one on a new connection (a new TLS handshake) for every call."""

    pki: Pki
    address: str
    till: Till
    card_number: str

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.succeeded = {"kept connection": 0, "new connections": 0}
        self.failed: list[str] = []
        self.threads = [
            threading.Thread(target=self._kept_connection, daemon=True),
            threading.Thread(target=self._new_connections, daemon=True),
        ]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def at_least(self, calls: int) -> Callable[[], bool]:
        """A condition: each kind of traffic had `calls` more successes than now."""
        with self.lock:
            targets = {kind: count + calls for kind, count in self.succeeded.items()}

        def reached() -> bool:
            with self.lock:
                return all(self.succeeded[kind] >= n for kind, n in targets.items())

        return reached

    def _get_card(self, channel: grpc.Channel, kind: str) -> None:
        try:
            Till(channel, self.till.terminal_id, self.till.token).get_card(self.card_number)
        except grpc.RpcError as error:
            with self.lock:
                self.failed.append(f"{kind}: {error}")
        else:
            with self.lock:
                self.succeeded[kind] += 1

    def _kept_connection(self) -> None:
        with self.pki.channel(self.address, "till-1") as channel:
            while not self.stopping.is_set():
                self._get_card(channel, "kept connection")

    def _new_connections(self) -> None:
        while not self.stopping.is_set():
            with self.pki.channel(self.address, "till-1") as channel:
                self._get_card(channel, "new connections")


@dataclass
class ServedHQ:
    process: subprocess.Popen[str]
    address: str
    health: str
    pki: Pki
    files: Issued


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedHQ]:
    """`storedvalue serve` under mutual TLS, reloading on SIGHUP only (--tls-reload 0)."""
    pki = Pki.create(tmp_path / "pki", "till-1", "storedvalue-admin")
    files = deployed_copy(pki.server, tmp_path / "deployed")
    address, health = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = start_serve(
        ["--listen", address, "--database-url", f"sqlite:///{tmp_path / 'hq.sqlite3'}",
         "--tls-cert", str(files.certificate), "--tls-key", str(files.key),
         "--tls-client-ca", str(pki.ca.path), "--tls-reload", "0", "--health-listen", health,
         "--grace-period", "2"],
        {"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN, "XDG_DATA_HOME": str(tmp_path / "xdg")},
        tmp_path / "logs",
    )
    try:
        wait_serving(process, health)
        yield ServedHQ(process, address, health, pki, files)
    finally:
        reap(process)


def test_a_rotation_on_sighup_during_traffic_fails_no_call(served: ServedHQ) -> None:
    renewed = served.pki.ca.issue("localhost", server=True, file_name="renewed")
    with served.pki.channel(served.address, "storedvalue-admin") as admin_channel, \
            served.pki.channel(served.address, "till-1") as till_channel:
        till = BackOffice(admin_channel).register_till("till-1", till_channel)
        card = till.issue_gift_card(2_500)

    with Traffic(served.pki, served.address, till, card.card_number) as traffic:
        wait_until(traffic.at_least(20), timeout=60, what="traffic before the rotation")
        served.files.replace(renewed)  # certificate and key, each by an atomic rename
        served.process.send_signal(signal.SIGHUP)
        wait_until(lambda: served_certificate(
            served.address, served.pki.ca.path, served.pki.clients["till-1"],
        ).serial_number == renewed.serial_number, timeout=30,
            what="new connections to get the renewed certificate")
        wait_until(traffic.at_least(20), timeout=60, what="traffic after the rotation")

    assert traffic.failed == []
    assert served.process.poll() is None, "SIGHUP ended the server"
    code, _, log = stop_process(served.process, timeout=30)
    assert code == 0
    assert "TLS files reloaded" in log


def test_bad_files_on_sighup_keep_the_served_certificate_until_good_ones_come(
    served: ServedHQ, tmp_path: Path,
) -> None:
    before = served_certificate(served.address, served.pki.ca.path,
                                served.pki.clients["till-1"])
    renewed = served.pki.ca.issue("localhost", server=True, file_name="renewed")
    shutil.copyfile(renewed.certificate, served.files.certificate)  # its key not yet there

    served.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS files not reloaded" in server_log(served.process), timeout=30,
               what="the refused reload in the log")
    kept = served_certificate(served.address, served.pki.ca.path,
                              served.pki.clients["till-1"])
    shutil.copyfile(renewed.key, served.files.key)
    served.process.send_signal(signal.SIGHUP)
    wait_until(lambda: served_certificate(
        served.address, served.pki.ca.path, served.pki.clients["till-1"],
    ).serial_number == renewed.serial_number, timeout=30, what="the renewed certificate")

    assert kept.serial_number == before.serial_number
    assert "does not belong to the certificate" in server_log(served.process)
    assert served.process.poll() is None
    code, _, _ = stop_process(served.process, timeout=30)
    assert code == 0


def test_sighup_never_ends_a_plaintext_server(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    process = start_serve(
        ["--listen", address, "--database-url", f"sqlite:///{tmp_path / 'hq.sqlite3'}"],
        {"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN, "XDG_DATA_HOME": str(tmp_path / "xdg")},
        tmp_path / "logs",
    )
    try:
        wait_serving(process, address)
        for handled in (1, 2):  # one at a time: signals sent together may merge into one

            def logged(count: int = handled) -> bool:
                return server_log(process).count("no TLS certificates to reload") == count

            process.send_signal(signal.SIGHUP)
            wait_until(logged, timeout=30, what=f"SIGHUP {handled} handled")
        wait_serving(process, address)
    finally:
        code, _, log = stop_process(process, timeout=30)
    assert code == 0, log


def test_changed_files_are_picked_up_without_a_signal(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki", "till-1")
    files = deployed_copy(pki.server, tmp_path / "deployed")
    renewed = pki.ca.issue("localhost", server=True, file_name="renewed")
    config = pki.hq_config(tmp_path, tls_cert_file=files.certificate, tls_key_file=files.key,
                           tls_reload_seconds=0.1)
    with InProcessHQ(config) as hq:
        files.replace(renewed)

        wait_until(lambda: served_certificate(hq.address, pki.ca.path, pki.clients["till-1"],
                                              ).serial_number == renewed.serial_number,
                   timeout=30, what="the changed files to be served")


def test_a_new_client_ca_is_trusted_from_the_reload_on_alongside_the_old_one(
    tmp_path: Path,
) -> None:
    pki = Pki.create(tmp_path / "pki", "till-1", "storedvalue-admin")
    next_ca = CertificateAuthority(tmp_path / "next-ca", "next tills CA")
    pki.clients["till-2"] = next_ca.issue("till-2")
    trusted = tmp_path / "tills-ca.pem"
    shutil.copyfile(pki.ca.path, trusted)
    config = pki.hq_config(tmp_path, admin_token=ADMIN_TOKEN, tls_client_ca_file=trusted,
                           tls_reload_seconds=0)
    with InProcessHQ(config) as hq, pki.channel(hq.address, "storedvalue-admin") as admin:
        back_office = BackOffice(admin)
        with pki.channel(hq.address, "till-2") as channel:
            newcomer = back_office.register_till("till-2", channel)
            with pytest.raises(grpc.RpcError) as refused:
                newcomer.get_card("79927398713")
        trusted.write_bytes(pki.ca.path.read_bytes() + next_ca.path.read_bytes())

        assert hq.reload_certificates()
        with pki.channel(hq.address, "till-2") as channel, \
                pki.channel(hq.address, "till-1") as old_channel:
            card = Till(channel, "till-2", newcomer.token).issue_gift_card(700)
            veteran = back_office.register_till("till-1", old_channel)
            seen = veteran.call("GetCard", ts.GetCardRequest(card_number=card.card_number))

    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # its handshake failed
    assert seen.card.balance.amount_minor == 700
