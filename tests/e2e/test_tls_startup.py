"""`storedvalue serve` with TLS files a person got wrong: it does not start, exits 2 and
says which file and what to do, without a traceback; a certificate close to its end starts
with a warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import ADMIN_TOKEN, free_port, start_serve, stop_process, wait_serving
from .tls_deployment import Pki


def serve(tmp_path: Path, pki: Pki, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storedvalue.cli", "serve", "--listen",
         f"127.0.0.1:{free_port()}", "--database-url", f"sqlite:///{tmp_path / 'hq.sqlite3'}",
         "--tls-cert", str(pki.server.certificate), "--tls-key", str(pki.server.key), *extra],
        capture_output=True, text=True, timeout=60,
        env={"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN, "XDG_DATA_HOME": str(tmp_path / "xdg"),
},
    )


def remove_certificate(pki: Pki) -> str:
    pki.server.certificate.unlink()
    return f"the TLS certificate file {pki.server.certificate} does not exist"


def swap_key(pki: Pki) -> str:
    other = pki.ca.issue("localhost", server=True, file_name="other")
    shutil.copyfile(other.key, pki.server.key)
    return (f"the TLS key {pki.server.key} does not belong to the certificate "
            f"{pki.server.certificate}")


def expire_certificate(pki: Pki) -> str:
    expired = pki.ca.issue("localhost", server=True, file_name="expired", starts_days=-40,
                           valid_days=-1)
    shutil.copyfile(expired.certificate, pki.server.certificate)
    shutil.copyfile(expired.key, pki.server.key)
    return f"the TLS certificate {pki.server.certificate} (CN=localhost) expired on"


def unreadable_client_ca(pki: Pki) -> str:
    pki.ca.path.unlink()
    pki.ca.path.mkdir()
    return f"the client CA file {pki.ca.path} is a directory"


@pytest.mark.parametrize("break_it", [remove_certificate, swap_key, expire_certificate,
                                      unreadable_client_ca])
def test_serve_refuses_a_wrong_tls_file_with_a_message_naming_it(
    tmp_path: Path, break_it: Callable[[Pki], str],
) -> None:
    pki = Pki.create(tmp_path / "pki")
    expected = break_it(pki)

    done = serve(tmp_path, pki, "--tls-client-ca", str(pki.ca.path))

    assert done.returncode == 2, done.stderr
    assert f"storedvalue serve: {expected}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "hq.sqlite3").exists(), "checked before the database is touched"


def test_a_certificate_expiring_within_30_days_starts_with_a_warning(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    soon = pki.ca.issue("localhost", server=True, file_name="soon", valid_days=9.5)
    address = f"127.0.0.1:{free_port()}"
    health = f"127.0.0.1:{free_port()}"
    process = start_serve(
        ["--listen", address, "--database-url", f"sqlite:///{tmp_path / 'hq.sqlite3'}",
         "--tls-cert", str(soon.certificate), "--tls-key", str(soon.key),
         "--health-listen", health],
        {"STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN, "XDG_DATA_HOME": str(tmp_path / "xdg")},
        tmp_path / "logs",
    )
    try:
        wait_serving(process, health)
    finally:
        code, out, log = stop_process(process, timeout=30)

    assert code == 0
    assert f"storedvalue HQ listening on {address} (TLS)" in out
    assert "TLS certificate: CN=localhost, valid until" in out
    assert f"health (plaintext, health service only): {health}" in out
    assert "warning: the TLS certificate (CN=localhost) expires on" in out
    assert "in 9 day(s)" in out
    assert '"level": "WARNING"' in log and "expires on" in log
