"""HQ's TLS files: read and checked before HQ serves, and again on every reload.

A file that is missing, unreadable, not PEM, a key that does not match its certificate, or a
certificate that has expired (or is not valid yet) is a `ConfigError` whose message names the
file and what to do; HQ does not start with it, and a reload keeps the files it serves. A
certificate that expires within 30 days, a private key other users can read, or a server
certificate without subjectAltName is a warning.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from storedvalue.hq.config import ConfigError, HQConfig
from storedvalue.hq.domain.moments import rfc3339

EXPIRY_WARNING = timedelta(days=30)
"""A certificate that expires sooner than this is reported at start, on reload, and daily."""

FileSignature = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class ServerCertificates:
    """One checked set of HQ's TLS files."""

    certificate_chain: bytes
    """PEM, the server's certificate first."""
    private_key: bytes
    client_cas: bytes | None
    """PEM of every CA whose client certificates are accepted (the tills' and the admin
    CA's); None without mutual TLS."""
    admin_issuers: tuple[x509.Certificate, ...]
    """The separate admin CA's certificates (empty when there is none)."""
    subject: str
    not_after: datetime
    signature: FileSignature
    """The files' identity (device, inode, size, mtime) when they were read."""
    warnings: tuple[str, ...]

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.certificate_chain)], root_certificates=self.client_cas
        )

    def expiry_warning(self, now: datetime) -> str | None:
        return _expiry_warning(self.subject, self.not_after, now)


def tls_files(config: HQConfig) -> tuple[Path, ...]:
    """Every TLS file HQ reads, in a fixed order."""
    return tuple(path for path in (config.tls_cert_file, config.tls_key_file,
                                   config.tls_client_ca_file, config.admin_client_ca_file)
                 if path is not None)


def file_signature(paths: Sequence[Path]) -> FileSignature:
    """What changes when any of these files is replaced or rewritten (a missing file counts
    as a change too, so that it is reported)."""
    signature = []
    for path in paths:
        try:
            status = path.stat()
        except OSError:
            signature.append((-1, -1, -1, -1))
        else:
            signature.append((status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns))
    return tuple(signature)


def load_certificates(config: HQConfig, *, now: datetime | None = None) -> ServerCertificates:
    """Read and check the configured TLS files; ConfigError says which file and why."""
    assert config.tls_cert_file is not None and config.tls_key_file is not None
    now = now or datetime.now(UTC)
    signature = file_signature(tls_files(config))  # before reading: a later change is seen
    warnings: list[str] = []
    chain_path, key_path = config.tls_cert_file, config.tls_key_file
    chain_pem = _read(chain_path, "TLS certificate file")
    chain = _certificates(chain_pem, chain_path, "TLS certificate file")
    leaf = chain[0]
    subject = leaf.subject.rfc4514_string() or "no subject"
    _check_validity(leaf, chain_path, "the TLS certificate", now)
    key_pem = _read(key_path, "TLS key file")
    key = _private_key(key_pem, key_path)
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise ConfigError(
            f"the TLS key {key_path} does not belong to the certificate {chain_path} "
            f"({subject}): give the key the certificate was issued for"
        )
    if _readable_by_others(key_path):
        warnings.append(f"the TLS key {key_path} is readable by other users: chmod 600 it")
    try:
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        warnings.append(f"the TLS certificate {chain_path} has no subjectAltName: clients check "
                        "HQ's host name against it, and most ignore the common name")
    client_cas: bytes | None = None
    admin_issuers: tuple[x509.Certificate, ...] = ()
    if config.tls_client_ca_file is not None:
        client_cas = _ca_bundle(config.tls_client_ca_file, "client CA file", now, warnings)
        if config.admin_client_ca_file is not None:
            admin_pem = _ca_bundle(config.admin_client_ca_file, "admin CA file", now, warnings)
            admin_issuers = tuple(x509.load_pem_x509_certificates(admin_pem))
            client_cas = client_cas.rstrip(b"\n") + b"\n" + admin_pem
    expiring = _expiry_warning(subject, leaf.not_valid_after_utc, now)
    if expiring is not None:
        warnings.insert(0, expiring)
    return ServerCertificates(
        certificate_chain=chain_pem, private_key=key_pem, client_cas=client_cas,
        admin_issuers=admin_issuers, subject=subject, not_after=leaf.not_valid_after_utc,
        signature=signature, warnings=tuple(warnings),
    )


def issued_by(certificate: x509.Certificate, issuers: Sequence[x509.Certificate]) -> bool:
    """Whether one of `issuers` signed `certificate` directly."""
    for issuer in issuers:
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
            continue  # another issuer's name, or the same name and another key
        return True
    return False


# -- reading ----------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"the {what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"the {what} {path} is a directory, not a PEM file") from None
    except OSError as error:
        raise ConfigError(f"cannot read the {what} {path}: {error.strerror or error} (HQ's "
                          "user must be able to read it)") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigError(f"the {what} {path} holds no PEM certificate (a block starting with "
                          "-----BEGIN CERTIFICATE-----)") from None


def _private_key(data: bytes, path: Path) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:  # it needs a password
        raise ConfigError(f"the TLS key {path} is encrypted: HQ needs it unencrypted (openssl "
                          "pkey -in KEY -out PLAIN), readable by HQ's user only") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"the TLS key file {path} holds no PEM private key (a block starting "
                          "with -----BEGIN PRIVATE KEY-----)") from None


def _ca_bundle(path: Path, what: str, now: datetime, warnings: list[str]) -> bytes:
    data = _read(path, what)
    certificates = _certificates(data, path, what)
    current = [c for c in certificates if c.not_valid_before_utc <= now < c.not_valid_after_utc]
    if not current:
        _check_validity(certificates[0], path, f"the {what}'s certificate", now)
    for certificate in certificates:
        if certificate not in current:
            warnings.append(f"the {what} {path} holds a certificate that is not valid now "
                            f"({certificate.subject.rfc4514_string()}): client certificates "
                            "it issued are refused")
    return data


def _check_validity(certificate: x509.Certificate, path: Path, what: str, now: datetime) -> None:
    subject = certificate.subject.rfc4514_string() or "no subject"
    if certificate.not_valid_after_utc <= now:
        raise ConfigError(f"{what} {path} ({subject}) expired on "
                          f"{rfc3339(certificate.not_valid_after_utc)}: renew it")
    if certificate.not_valid_before_utc > now:
        raise ConfigError(f"{what} {path} ({subject}) is not valid before "
                          f"{rfc3339(certificate.not_valid_before_utc)}: check this "
                          "machine's clock, or wait")


def _public_der(key: object) -> bytes:
    der: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def _readable_by_others(path: Path) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def _expiry_warning(subject: str, not_after: datetime, now: datetime) -> str | None:
    left = not_after - now
    if left >= EXPIRY_WARNING:
        return None
    return (f"the TLS certificate ({subject}) expires on {rfc3339(not_after)}, in "
            f"{max(left.days, 0)} day(s): put a renewed certificate and key in place; HQ "
            "picks them up on SIGHUP or within its reload interval, without a restart")
