"""A test certificate authority made in the test (the `cryptography` package): a CA, server
certificates for 127.0.0.1 and localhost, and client certificates whose common name is a
till's terminal id (or the back office's name), valid, expired or not yet valid."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    certificate: Path
    key: Path
    serial_number: int

    def replace(self, other: Issued) -> None:
        """Put `other`'s certificate and key in this one's files, each by an atomic rename
        (as a certificate deployment does)."""
        for source, target in ((other.certificate, self.certificate), (other.key, self.key)):
            staged = target.with_name(target.name + ".new")
            staged.write_bytes(source.read_bytes())
            os.chmod(staged, 0o600)
            staged.replace(target)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


class CertificateAuthority:
    """A CA whose certificate is `<directory>/<stem>.pem`; `issue` writes
    `<directory>/<file name>.pem` and `.key`."""

    def __init__(self, directory: Path, name: str = "storedvalue test CA", *,
                 stem: str = "ca") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.path = directory / f"{stem}.pem"
        self.path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, server: bool = False, file_name: str | None = None,
              valid_days: float = 90, starts_days: float = -1) -> Issued:
        """A certificate for `common_name`, valid from `starts_days` to `valid_days` from
        now (negative: in the past). A server certificate names 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + timedelta(days=starts_days))
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        stem = file_name or common_name
        issued = Issued(self.directory / f"{stem}.pem", self.directory / f"{stem}.key",
                        certificate.serial_number)
        issued.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        _write_key(issued.key, key)
        return issued
