"""HQ's TLS files are checked before HQ serves with them: each problem a person can make
(a missing or unreadable file, something that is not PEM, an encrypted key, a key for
another certificate, an expired or future certificate) is one ConfigError naming the file,
and a certificate close to its end is a warning."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from certificates import CertificateAuthority, Issued
from cryptography.hazmat.primitives import serialization

from storedvalue.hq.config import ConfigError, HQConfig
from storedvalue.hq.tls import load_certificates


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority(tmp_path / "pki")


def serving(server: Issued, **changes: Any) -> HQConfig:
    return replace(HQConfig(tls_cert_file=server.certificate, tls_key_file=server.key),
                   **changes)


def test_good_files_load_with_their_subject_and_end_of_validity(
    ca: CertificateAuthority,
) -> None:
    server = ca.issue("localhost", server=True, valid_days=90)

    loaded = load_certificates(serving(server, tls_client_ca_file=ca.path))

    assert loaded.subject == "CN=localhost"
    assert loaded.not_after - datetime.now(UTC) > timedelta(days=89)
    assert loaded.client_cas == ca.path.read_bytes()
    assert loaded.warnings == ()


def test_a_missing_certificate_file_is_named(ca: CertificateAuthority, tmp_path: Path) -> None:
    server = ca.issue("localhost", server=True)
    missing = tmp_path / "nowhere.pem"

    with pytest.raises(ConfigError, match=f"TLS certificate file {missing} does not exist"):
        load_certificates(serving(server, tls_cert_file=missing))


def test_a_missing_client_ca_file_is_named(ca: CertificateAuthority, tmp_path: Path) -> None:
    server = ca.issue("localhost", server=True)
    missing = tmp_path / "no-ca.pem"

    with pytest.raises(ConfigError, match=f"client CA file {missing} does not exist"):
        load_certificates(serving(server, tls_client_ca_file=missing))


def test_an_unreadable_key_file_says_it_cannot_be_read(ca: CertificateAuthority) -> None:
    server = ca.issue("localhost", server=True)
    unreadable = server.key.with_name("key-directory")
    unreadable.mkdir()  # root reads any file: a directory is what it cannot read as one

    with pytest.raises(ConfigError, match=f"TLS key file {unreadable} is a directory"):
        load_certificates(serving(server, tls_key_file=unreadable))


def test_a_file_that_is_not_pem_is_refused(ca: CertificateAuthority) -> None:
    server = ca.issue("localhost", server=True)
    server.certificate.write_text("not a certificate\n")

    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        load_certificates(serving(server))


def test_a_key_for_another_certificate_is_a_mismatch_naming_both_files(
    ca: CertificateAuthority,
) -> None:
    server = ca.issue("localhost", server=True)
    other = ca.issue("localhost", server=True, file_name="other")

    with pytest.raises(ConfigError, match=f"the TLS key {other.key} does not belong to the "
                                          f"certificate {server.certificate}"):
        load_certificates(serving(server, tls_key_file=other.key))


def test_an_encrypted_key_is_refused_with_how_to_decrypt_it(ca: CertificateAuthority) -> None:
    server = ca.issue("localhost", server=True)
    key = serialization.load_pem_private_key(server.key.read_bytes(), password=None)
    server.key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))

    with pytest.raises(ConfigError, match="is encrypted: HQ needs it unencrypted"):
        load_certificates(serving(server))


def test_an_expired_certificate_says_when_it_expired(ca: CertificateAuthority) -> None:
    server = ca.issue("localhost", server=True, starts_days=-30, valid_days=-2)
    ended = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%d")

    with pytest.raises(ConfigError, match=rf"expired on {ended}.*renew it"):
        load_certificates(serving(server))


def test_a_certificate_not_valid_yet_points_at_the_clock(ca: CertificateAuthority) -> None:
    server = ca.issue("localhost", server=True, starts_days=2, valid_days=30)

    with pytest.raises(ConfigError, match=r"is not valid before .*clock"):
        load_certificates(serving(server))


def test_a_certificate_expiring_within_30_days_is_a_warning(ca: CertificateAuthority) -> None:
    soon = ca.issue("localhost", server=True, valid_days=12.5)
    later = ca.issue("localhost", server=True, valid_days=31, file_name="later")

    warned = load_certificates(serving(soon)).warnings

    assert len(warned) == 1
    assert "expires on" in warned[0] and "in 12 day(s)" in warned[0]
    assert load_certificates(serving(later)).warnings == ()


def test_a_key_other_users_can_read_is_a_warning(ca: CertificateAuthority) -> None:
    server = ca.issue("localhost", server=True)
    server.key.chmod(0o644)

    assert load_certificates(serving(server)).warnings == (
        f"the TLS key {server.key} is readable by other users: chmod 600 it",)


def test_the_admin_ca_is_trusted_for_connections_and_kept_apart(
    ca: CertificateAuthority, tmp_path: Path,
) -> None:
    admins = CertificateAuthority(tmp_path / "admins", "admin CA")
    server = ca.issue("localhost", server=True)

    loaded = load_certificates(serving(server, tls_client_ca_file=ca.path,
                                       admin_client_ca_file=admins.path))

    assert loaded.client_cas is not None
    assert ca.path.read_bytes().strip() in loaded.client_cas
    assert admins.path.read_bytes().strip() in loaded.client_cas
    assert loaded.admin_issuers == (admins.certificate,)
