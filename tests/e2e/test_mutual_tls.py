"""Mutual TLS, the optional second factor: with a client CA configured, HQ accepts only
connections that present a certificate from that CA, and a till's bearer token only works on a
connection whose certificate names that till."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from in_process_hq import InProcessHQ

from storedvalue.hq.config import HQConfig
from storedvalue.v1 import terminal_service_pb2 as ts

from .harness import ADMIN_TOKEN, BackOffice, Till, expect_failure


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        pytest.skip("openssl is not installed")
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


def issue_certificate(pki: Path, name: str, *, server: bool = False) -> None:
    """`name`.key and `name`.pem signed by the test CA (common name `name`)."""
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
            cwd=pki)
    extensions = pki / f"{name}.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server
                          else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", extensions.name,
            cwd=pki)


@dataclass
class MutualTlsHQ:
    address: str
    pki: Path

    def channel(self, client: str | None) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(self.pki / "ca.pem").read_bytes(),
            private_key=(self.pki / f"{client}.key").read_bytes() if client else None,
            certificate_chain=(self.pki / f"{client}.pem").read_bytes() if client else None,
        )
        return grpc.secure_channel(self.address, credentials,
                                   options=[("grpc.ssl_target_name_override", "localhost")])


@pytest.fixture
def mtls_hq(tmp_path: Path) -> Iterator[MutualTlsHQ]:
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=storedvalue test CA", cwd=pki)
    for name, is_server in (("localhost", True), ("till-1", False), ("till-2", False),
                            ("back-office", False)):
        issue_certificate(pki, name, server=is_server)
    config = HQConfig(
        listen="127.0.0.1:0", database_url=f"sqlite:///{tmp_path / 'hq.sqlite3'}",
        admin_token=ADMIN_TOKEN,
        tls_cert_file=pki / "localhost.pem", tls_key_file=pki / "localhost.key",
        tls_client_ca_file=pki / "ca.pem",
    )
    with InProcessHQ(config) as server:
        yield MutualTlsHQ(server.address, pki)


def test_a_till_with_its_own_certificate_and_token_is_served(mtls_hq: MutualTlsHQ) -> None:
    with mtls_hq.channel("back-office") as admin_channel, mtls_hq.channel("till-1") as channel:
        till = BackOffice(admin_channel).register_till("till-1", channel)
        card = till.issue_gift_card(5_000)
        assert till.get_card(card.card_number).balance.amount_minor == 5_000


def test_a_token_used_over_another_tills_certificate_is_refused(mtls_hq: MutualTlsHQ) -> None:
    with mtls_hq.channel("back-office") as admin_channel, mtls_hq.channel("till-2") as channel:
        stolen = BackOffice(admin_channel).register_till("till-1", channel)
        failure = expect_failure(lambda: stolen.call(
            "GetCard", ts.GetCardRequest(card_number="79927398713")))
        assert failure.code is grpc.StatusCode.UNAUTHENTICATED
        assert failure.reason == "UNAUTHENTICATED"


def test_a_connection_without_a_client_certificate_is_refused(mtls_hq: MutualTlsHQ) -> None:
    with mtls_hq.channel(None) as channel:
        till = Till(channel, "till-1", "svt_whatever")
        with pytest.raises(grpc.RpcError) as refused:
            till.call("GetCard", ts.GetCardRequest(card_number="79927398713"))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # the handshake failed
