"""A TLS deployment made in the test: a test CA, HQ's server certificate (for 127.0.0.1 and
localhost), client certificates for tills and the back office, and channels that present
them."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
from certificates import CertificateAuthority, Issued
from cryptography import x509
from in_process_hq import hq_config

from storedvalue.hq.config import HQConfig


@dataclass
class Pki:
    """The test CA and what it issued, as files under one directory."""

    ca: CertificateAuthority
    server: Issued
    clients: dict[str, Issued]

    @classmethod
    def create(cls, directory: Path, *clients: str) -> Pki:
        ca = CertificateAuthority(directory)
        server = ca.issue("localhost", server=True, file_name="hq")
        return cls(ca, server, {name: ca.issue(name) for name in clients})

    def hq_config(self, data_dir: Path, *, mutual: bool = True, **changes: Any) -> HQConfig:
        """An in-process HQ serving TLS with this CA's server certificate; `mutual`: client
        certificates from this CA required."""
        config = hq_config(data_dir, tls_cert_file=self.server.certificate,
                           tls_key_file=self.server.key,
                           tls_client_ca_file=self.ca.path if mutual else None)
        return replace(config, **changes)

    def channel(self, address: str, client: str | None = None) -> grpc.Channel:
        """A channel trusting the test CA, presenting `client`'s certificate if given."""
        issued = self.clients[client] if client else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca.path.read_bytes(),
            private_key=issued.key.read_bytes() if issued else None,
            certificate_chain=issued.certificate.read_bytes() if issued else None,
        )
        return grpc.secure_channel(address, credentials)


def served_certificate(address: str, ca: Path, client: Issued | None = None) -> x509.Certificate:
    """The certificate HQ presents to a new connection (a TLS handshake of our own)."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2"])
    if client is not None:
        context.load_cert_chain(str(client.certificate), str(client.key))
    with context.wrap_socket(socket.create_connection((host, int(port)), timeout=10),
                             server_hostname=host) as connection:
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)
