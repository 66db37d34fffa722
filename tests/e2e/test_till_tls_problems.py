"""The terminal library tells a TLS problem apart from HQ being out of reach: a till whose
certificate HQ refuses (or that does not trust HQ's) gets HandshakeFailed saying what to fix,
does not switch to OFFLINE nor complete sales offline for it, and works as soon as it is
fixed, on the till (new files) or at HQ, without being restarted."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from certificates import CertificateAuthority, Issued
from in_process_hq import InProcessHQ

from storedvalue.terminal import (
    ConnectivityState,
    HandshakeFailed,
    HQUnavailable,
    Money,
    SaleLine,
    Terminal,
    TerminalConfig,
    TlsFiles,
    TlsProblem,
)
from storedvalue.v1 import back_office_service_pb2 as bo

from .harness import ADMIN_TOKEN, BackOffice, Till, new_id, wait_until
from .tls_deployment import Pki

FAST = TerminalConfig(call_timeout_s=2.0, probe_initial_backoff_s=0.02, probe_max_backoff_s=0.2,
                      sync_automatically=False)


@dataclass
class Store:
    hq: InProcessHQ
    pki: Pki
    root: Path
    token: str
    """till-1's bearer token."""
    counter: Till
    """Another till, that issues the cards."""

    def till_files(self, issued: Issued | None, ca: Path | None = None) -> TlsFiles:
        """The till's own copies of these files (a fix replaces them in place)."""
        files = self.root / "till-files"
        files.mkdir(exist_ok=True)
        (files / "ca.pem").write_bytes((ca or self.pki.ca.path).read_bytes())
        if issued is None:
            return TlsFiles(ca_file=files / "ca.pem")
        install(issued, files)
        return TlsFiles(ca_file=files / "ca.pem", certificate_file=files / "till.pem",
                        key_file=files / "till.key")

    def terminal(self, tls: TlsFiles | None) -> Terminal:
        return Terminal(address=self.hq.address, terminal_id="till-1", credential=self.token,
                        data_dir=self.root / "till-1", config=replace(FAST, tls=tls))

    def card(self, balance: int = 5_000) -> str:
        return self.counter.issue_gift_card(balance).card_number


def install(issued: Issued, directory: Path) -> None:
    """A certificate and key put in place the way a deployment does: each by a rename."""
    for source, name in ((issued.certificate, "till.pem"), (issued.key, "till.key")):
        staged = directory / f"{name}.new"
        staged.write_bytes(source.read_bytes())
        staged.replace(directory / name)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    pki = Pki.create(tmp_path / "pki", "till-1", "till-2", "storedvalue-admin")
    with InProcessHQ(pki.hq_config(tmp_path, admin_token=ADMIN_TOKEN)) as hq, \
            pki.channel(hq.address, "storedvalue-admin") as admin, \
            pki.channel(hq.address, "till-2") as counter_channel:
        back_office = BackOffice(admin)
        back_office.call("UpdateParameters", bo.UpdateParametersRequest(
            request_id=new_id(), gift_card_offline_completion_allowed=True,
            credit_memo_offline_completion_allowed=True))
        token = back_office.call("RegisterTerminal", bo.RegisterTerminalRequest(
            request_id=new_id(), terminal_id="till-1")).credential.bearer_token
        yield Store(hq, pki, tmp_path, token, back_office.register_till("till-2", counter_channel))


def another_ca(store: Store) -> tuple[Issued, str]:
    stranger = CertificateAuthority(store.root / "stranger", "a CA HQ does not know")
    return stranger.issue("till-1"), "HQ does not trust CN=a CA HQ does not know"


def expired(store: Store) -> tuple[Issued, str]:
    return (store.pki.ca.issue("till-1", file_name="expired", starts_days=-60, valid_days=-3),
            "it (CN=till-1) expired on")


@pytest.mark.parametrize("wrong", [another_ca, expired])
def test_a_refused_certificate_is_a_typed_error_saying_why_and_new_files_fix_it(
    store: Store, wrong: Callable[[Store], tuple[Issued, str]],
) -> None:
    number = store.card()
    issued, why = wrong(store)
    tls = store.till_files(issued)
    assert tls.certificate_file is not None

    with store.terminal(tls) as till:
        state, problem = till.state, till.handshake_problem
        with pytest.raises(HandshakeFailed) as refused:
            till.add_tender(transaction_id="S1", card_number=number)
        install(store.pki.clients["till-1"], tls.certificate_file.parent)
        tender = till.add_tender(transaction_id="S1", card_number=number)
        fixed = till.handshake_problem

    assert state is ConnectivityState.ONLINE  # HQ is reachable: no reason to sell offline
    assert problem is not None and problem.problem is TlsProblem.CLIENT_CERTIFICATE_REFUSED
    assert refused.value.problem is TlsProblem.CLIENT_CERTIFICATE_REFUSED
    assert f"refused this client's certificate {tls.certificate_file}" in refused.value.message
    assert why in refused.value.message
    assert "--tls-client-ca" in refused.value.message
    assert tender.balance == Money(5_000, "EUR")
    assert fixed is None


def test_a_sale_whose_till_certificate_hq_stops_accepting_does_not_complete_offline(
    store: Store,
) -> None:
    number = store.card()
    next_ca = CertificateAuthority(store.root / "next-ca", "next tills CA")
    tls = store.till_files(store.pki.clients["till-1"])
    assert tls.certificate_file is not None
    lines = [SaleLine("L1", number, Money(1_250, "EUR"))]

    with store.terminal(tls) as till:
        till.add_tender(transaction_id="S1", card_number=number)
        # HQ moves its tills to a new CA and restarts; this till was not given a new one.
        store.hq.stop()
        store.hq.reconfigure(tls_client_ca_file=next_ca.path)
        store.hq.start()
        wait_until(lambda: till.handshake_problem is not None
                   and till.state is ConnectivityState.ONLINE, timeout=30,
                   what="the till to find its certificate refused")
        with pytest.raises(HandshakeFailed) as refused:
            till.complete_sale(transaction_id="S1", lines=lines)
        outbox, open_sales = till.outbox(), till.open_sales()

        install(next_ca.issue("till-1"), tls.certificate_file.parent)
        result = till.complete_sale(transaction_id="S1", lines=lines)

    assert refused.value.problem is TlsProblem.CLIENT_CERTIFICATE_REFUSED
    assert outbox == ()  # not completed offline
    assert [sale.transaction_id for sale in open_sales] == ["S1"]
    assert not result.completed_offline
    assert result.lines[0].balance_after == Money(3_750, "EUR")


def test_a_till_without_a_client_certificate_is_told_hq_requires_one(store: Store) -> None:
    with store.terminal(store.till_files(None)) as till, \
            pytest.raises(HandshakeFailed) as refused:
        till.balance(card_number=store.card())

    assert refused.value.problem is TlsProblem.CLIENT_CERTIFICATE_REFUSED
    assert "requires a client certificate (mutual TLS)" in refused.value.message


def test_a_till_that_does_not_trust_hqs_certificate_is_told_to_check_its_ca_file(
    store: Store,
) -> None:
    stranger = CertificateAuthority(store.root / "stranger", "a CA HQ does not use")
    tls = store.till_files(store.pki.clients["till-1"], ca=stranger.path)
    number = store.card()

    with store.terminal(tls) as till:
        with pytest.raises(HandshakeFailed) as untrusted:
            till.balance(card_number=number)
        assert tls.ca_file is not None
        tls.ca_file.write_bytes(store.pki.ca.path.read_bytes())
        card = till.balance(card_number=number)

    assert untrusted.value.problem is TlsProblem.HQ_NOT_TRUSTED
    assert f"signed by the CA file {tls.ca_file}" in untrusted.value.message
    assert card.balance == Money(5_000, "EUR")


def test_a_plaintext_till_against_hq_serving_tls_is_told_to_configure_tls(
    store: Store,
) -> None:
    with store.terminal(None) as till, pytest.raises(HandshakeFailed) as plaintext:
        till.balance(card_number=store.card())

    assert plaintext.value.problem is TlsProblem.HQ_REQUIRES_TLS
    assert till.state is ConnectivityState.ONLINE


def test_a_fix_at_hq_reaches_the_till_without_touching_it(store: Store) -> None:
    next_ca = CertificateAuthority(store.root / "next-ca", "next tills CA")
    tls = store.till_files(next_ca.issue("till-1"))
    number = store.card()
    trusted = store.hq.config.tls_client_ca_file
    assert trusted is not None

    with store.terminal(tls) as till:
        with pytest.raises(HandshakeFailed):
            till.balance(card_number=number)
        trusted.write_bytes(store.pki.ca.path.read_bytes() + next_ca.path.read_bytes())
        assert store.hq.reload_certificates()
        card = till.balance(card_number=number)

    assert card.balance == Money(5_000, "EUR")


def test_hq_out_of_reach_under_tls_is_still_offline_and_sells_offline(store: Store) -> None:
    number = store.card()
    with store.terminal(store.till_files(store.pki.clients["till-1"])) as till:
        assert till.wait_for_parameters(version=1, timeout_s=10)
        till.add_tender(transaction_id="S1", card_number=number)
        store.hq.stop()
        with pytest.raises(HQUnavailable):
            till.balance(card_number=number)
        result = till.complete_sale(transaction_id="S1",
                                    lines=[SaleLine("L1", number, Money(500, "EUR"))])
        state = till.state

    assert state is ConnectivityState.OFFLINE
    assert result.completed_offline


def test_tls_files_that_cannot_be_used_fail_the_terminal_as_it_is_built(store: Store) -> None:
    other = store.pki.ca.issue("till-1", file_name="other")
    tls = store.till_files(store.pki.clients["till-1"])
    assert tls.key_file is not None
    tls.key_file.write_bytes(other.key.read_bytes())

    with pytest.raises(HandshakeFailed) as unusable:
        store.terminal(tls)
    with pytest.raises(HandshakeFailed) as missing:
        store.terminal(TlsFiles(ca_file=store.root / "no-such-ca.pem"))
    install(store.pki.clients["till-1"], tls.key_file.parent)
    with store.terminal(tls) as till:  # the data directory was left free
        wait_until(lambda: till.state is ConnectivityState.ONLINE, timeout=10, what="ONLINE")

    assert unusable.value.problem is TlsProblem.CLIENT_FILES_UNUSABLE
    assert "the key does not belong to the certificate" in unusable.value.message
    assert f"{store.root / 'no-such-ca.pem'} does not exist" in missing.value.message



def test_a_link_already_reset_is_no_tls_problem_and_the_check_leaks_nothing() -> None:
    """The check meets reset links (a relay or a load balancer dropping connections): here
    the connection is reset before the check's handshake starts. That is a lost link, not a
    TLS problem, and the check closes what it opened (the tests turn an unclosed socket's
    ResourceWarning into an error; `ssl.wrap_socket` leaked one in exactly this case)."""
    from storedvalue.terminal._tls import _plaintext_meets_tls

    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        for _ in range(5):
            with socket.create_connection(listener.getsockname(), timeout=2.0) as sock:
                accepted, _ = listener.accept()
                # A zero linger makes close() send an RST, not a FIN.
                accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                accepted.close()
                readable, _, _ = select.select([sock], [], [], 2.0)
                assert readable, "the reset never reached the client"
                assert _plaintext_meets_tls(sock, address, time.monotonic() + 2.0) is None


@pytest.mark.parametrize("ending", ["reset", "close"])
def test_a_relay_that_drops_connections_before_hq_answers_is_a_lost_link_not_tls(
    store: Store, ending: str
) -> None:
    """A load balancer or relay with no HQ behind it accepts and then resets or closes the
    connection before any TLS answer: the till is out of reach (HQUnavailable, it may go
    OFFLINE and sell offline), not told to fix a certificate that is fine."""
    from storedvalue.terminal._tls import diagnose_handshake

    tls = store.till_files(store.pki.clients["till-1"])
    dropped = 0
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        def drop_every_connection() -> None:
            nonlocal dropped
            while True:
                try:
                    accepted, _ = listener.accept()
                except OSError:
                    return  # the listener was closed: the test is over
                if ending == "reset":
                    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                accepted.close()
                dropped += 1

        acceptor = threading.Thread(target=drop_every_connection, daemon=True)
        acceptor.start()
        seen = [diagnose_handshake(address, tls, timeout_s=2.0) for _ in range(10)]
        with Terminal(address=address, terminal_id="till-1", credential=store.token,
                      data_dir=store.root / "till-1",
                      config=replace(FAST, tls=tls)) as till, pytest.raises(HQUnavailable):
            till.balance(card_number=store.card())
        listener.shutdown(socket.SHUT_RDWR)
    acceptor.join(timeout=5)

    assert seen == [None] * 10
    assert dropped >= 10


def test_the_tls_check_keeps_to_its_time_against_a_peer_that_trickles() -> None:
    """A peer that sends the start of a TLS record a byte at a time never lets one read time
    out: the check still ends within its own time (the till's call is waiting on it), as a
    lost link."""
    from storedvalue.terminal._tls import diagnose_handshake

    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"

        def trickle() -> None:
            accepted, _ = listener.accept()
            with accepted:
                for byte in (b"\x16\x03\x03\x40\x00" + b"\x02" * 300):
                    if stop.wait(0.05):
                        return
                    try:
                        accepted.sendall(bytes([byte]))
                    except OSError:
                        return

        server = threading.Thread(target=trickle, daemon=True)
        server.start()
        started = time.monotonic()
        seen = diagnose_handshake(address, None, timeout_s=1.0)
        took = time.monotonic() - started
        stop.set()
        server.join(timeout=5)

    assert seen is None
    assert took < 5.0, f"the check took {took:.1f} s against its 1 s"  # the peer trickles 15 s
