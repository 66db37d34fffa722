"""Mutual TLS, the optional second factor: with a client CA configured, HQ accepts only
connections that present a certificate from that CA; a till's bearer token only works on a
connection whose certificate names that till, and the admin token only on a connection with
an admin certificate. Probes without a certificate use the plaintext health port."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from certificates import CertificateAuthority
from grpc_health.v1 import health_pb2, health_pb2_grpc
from in_process_hq import InProcessHQ, hq_config

from storedvalue.v1 import back_office_service_pb2 as bo
from storedvalue.v1 import terminal_service_pb2 as ts
from storedvalue.v1 import terminal_service_pb2_grpc as ts_grpc

from .harness import ADMIN_TOKEN, BackOffice, Till, expect_failure, new_id
from .tls_deployment import Pki


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki.create(tmp_path / "pki", "till-1", "till-2", "storedvalue-admin", "back-office")


@pytest.fixture
def mtls_hq(pki: Pki, tmp_path: Path) -> Iterator[InProcessHQ]:
    config = pki.hq_config(tmp_path, admin_token=ADMIN_TOKEN, health_listen="127.0.0.1:0")
    with InProcessHQ(config) as server:
        yield server


def test_a_till_with_its_own_certificate_and_token_is_served(
    mtls_hq: InProcessHQ, pki: Pki,
) -> None:
    with pki.channel(mtls_hq.address, "storedvalue-admin") as admin_channel, \
            pki.channel(mtls_hq.address, "till-1") as channel:
        till = BackOffice(admin_channel).register_till("till-1", channel)
        card = till.issue_gift_card(5_000)
        assert till.get_card(card.card_number).balance.amount_minor == 5_000


def test_a_token_used_over_another_tills_certificate_is_refused(
    mtls_hq: InProcessHQ, pki: Pki,
) -> None:
    with pki.channel(mtls_hq.address, "storedvalue-admin") as admin_channel, \
            pki.channel(mtls_hq.address, "till-2") as channel:
        stolen = BackOffice(admin_channel).register_till("till-1", channel)
        failure = expect_failure(lambda: stolen.call(
            "GetCard", ts.GetCardRequest(card_number="79927398713")))
        assert failure.code is grpc.StatusCode.UNAUTHENTICATED
        assert failure.reason == "UNAUTHENTICATED"
        assert "CN=till-2" in failure.message and "terminal till-1" in failure.message


def test_a_connection_without_a_client_certificate_is_refused(
    mtls_hq: InProcessHQ, pki: Pki,
) -> None:
    with pki.channel(mtls_hq.address) as channel:
        till = Till(channel, "till-1", "svt_whatever")
        with pytest.raises(grpc.RpcError) as refused:
            till.call("GetCard", ts.GetCardRequest(card_number="79927398713"))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # the handshake failed


@pytest.mark.parametrize("client", ["till-1", "back-office"])
def test_the_admin_token_over_a_certificate_that_is_not_an_admins_is_refused(
    mtls_hq: InProcessHQ, pki: Pki, client: str,
) -> None:
    with pki.channel(mtls_hq.address, client) as channel, \
            pki.channel(mtls_hq.address, "storedvalue-admin") as admin_channel:
        leaked = BackOffice(channel)
        failure = expect_failure(lambda: leaked.call("RegisterTerminal", bo.RegisterTerminalRequest(
            request_id=new_id(), terminal_id="till-9")))
        registered = BackOffice(admin_channel).call("ListTerminals", bo.ListTerminalsRequest())

    assert failure.code is grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "PERMISSION_DENIED"
    assert "admin client certificate (common name storedvalue-admin)" in failure.message
    assert f"CN={client}" in failure.message
    assert "till-9" not in [terminal.terminal_id for terminal in registered.terminals]


def test_a_separate_admin_ca_issues_the_only_certificates_the_back_office_takes(
    pki: Pki, tmp_path: Path,
) -> None:
    admins = CertificateAuthority(tmp_path / "admins", "storedvalue admin CA")
    pki.clients["ops"] = admins.issue("ops")
    # The tills' CA issuing a certificate with the default admin name does not make it one.
    config = pki.hq_config(tmp_path, admin_token=ADMIN_TOKEN, admin_client_ca_file=admins.path)
    with InProcessHQ(config) as hq, pki.channel(hq.address, "ops") as ops, \
            pki.channel(hq.address, "storedvalue-admin") as impostor, \
            pki.channel(hq.address, "till-1") as till_channel:
        till = BackOffice(ops).register_till("till-1", till_channel)
        refused = expect_failure(lambda: BackOffice(impostor).call(
            "ListTerminals", bo.ListTerminalsRequest()))
        card = till.issue_gift_card(1_000)

    assert card.balance.amount_minor == 1_000
    assert refused.code is grpc.StatusCode.PERMISSION_DENIED
    assert f"issued by {admins.path}" in refused.message


def test_probes_without_a_certificate_use_the_plaintext_health_port_and_nothing_else(
    mtls_hq: InProcessHQ,
) -> None:
    assert mtls_hq.health_port is not None
    with grpc.insecure_channel(f"127.0.0.1:{mtls_hq.health_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        service = health.Check(health_pb2.HealthCheckRequest(
            service="storedvalue.v1.TerminalService"), timeout=10).status
        with pytest.raises(grpc.RpcError) as not_here:
            ts_grpc.TerminalServiceStub(channel).GetCard(
                ts.GetCardRequest(card_number="79927398713"), timeout=10)

    assert status == service == health_pb2.HealthCheckResponse.SERVING
    assert not_here.value.code() is grpc.StatusCode.UNIMPLEMENTED


def readme_test_ca_commands() -> str:
    """The shell block of the README that makes a test CA (section "Deploying with TLS")."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Deploying with TLS", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readmes_openssl_commands_make_a_working_mutual_tls_deployment(
    tmp_path: Path,
) -> None:
    made = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_test_ca_commands()],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    pki = tmp_path / "pki"
    config = hq_config(tmp_path, admin_token=ADMIN_TOKEN, tls_cert_file=pki / "hq.pem",
                       tls_key_file=pki / "hq.key", tls_client_ca_file=pki / "ca.pem")

    def channel(client: str) -> grpc.Channel:
        return grpc.secure_channel(address, grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(), (pki / f"{client}.key").read_bytes(),
            (pki / f"{client}.pem").read_bytes()))

    with InProcessHQ(config) as hq:
        address = hq.address  # 127.0.0.1, a name HQ's certificate carries
        with channel("storedvalue-admin") as admin, channel("till-1") as till_channel:
            till = BackOffice(admin).register_till("till-1", till_channel)
            card = till.issue_gift_card(900)

    assert card.balance.amount_minor == 900
