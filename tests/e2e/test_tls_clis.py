"""`storedvalue admin` and `storedvalue terminal` against an HQ serving TLS, and mutual TLS,
with a test CA made here: the CA, client certificate and key as flags or from the
environment; a wrong certificate says what to fix instead of "unreachable"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from certificates import CertificateAuthority
from in_process_hq import InProcessHQ

from .harness import ADMIN_TOKEN
from .tls_deployment import Pki


@dataclass
class Deployment:
    hq: InProcessHQ
    pki: Pki
    mutual: bool
    root: Path

    def cli(self, *args: str, env: Mapping[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("STOREDVALUE_")}
        return subprocess.run(
            [sys.executable, "-m", "storedvalue.cli", *args],
            capture_output=True, text=True, timeout=60,
            env={**clean, "STOREDVALUE_ADMIN_TOKEN": ADMIN_TOKEN,
                 "XDG_DATA_HOME": str(self.root / "xdg"), **(env or {})},
        )

    def tls_flags(self, client: str | None) -> list[str]:
        """--ca-file, and under mutual TLS --client-cert/--client-key of `client`."""
        flags = ["--ca-file", str(self.pki.ca.path)]
        if self.mutual and client is not None:
            issued = self.pki.clients[client]
            flags += ["--client-cert", str(issued.certificate), "--client-key", str(issued.key)]
        return flags

    def admin(self, *args: str, client: str | None = "storedvalue-admin",
              env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("admin", "--target", self.hq.address, *self.tls_flags(client), *args,
                        env=env)

    def register(self, terminal_id: str) -> str:
        done = self.admin("terminals", "register", terminal_id)
        assert done.returncode == 0, done.stderr
        token: str = json.loads(done.stdout)["credential"]["bearer_token"]
        return token

    def terminal(self, terminal_id: str, token: str, *args: str, tls: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        flags = self.tls_flags(terminal_id) if tls is None else tls
        return self.cli("terminal", "--hq", self.hq.address, "--terminal-id", terminal_id,
                        "--data-dir", str(self.root / terminal_id), "--timeout", "5", *flags,
                        *args, env={"STOREDVALUE_TERMINAL_TOKEN": token, **(env or {})})


def deploy(tmp_path: Path, *, mutual: bool) -> Iterator[Deployment]:
    pki = Pki.create(tmp_path / "pki", "till-1", "till-2", "storedvalue-admin")
    with InProcessHQ(pki.hq_config(tmp_path, mutual=mutual, admin_token=ADMIN_TOKEN)) as hq:
        yield Deployment(hq, pki, mutual, tmp_path)


@pytest.fixture(params=["TLS", "mutual TLS"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    yield from deploy(tmp_path, mutual=request.param == "mutual TLS")


@pytest.fixture
def mutual(tmp_path: Path) -> Iterator[Deployment]:
    yield from deploy(tmp_path, mutual=True)


def test_both_clis_work_with_their_tls_files_given_as_flags(deployment: Deployment) -> None:
    token = deployment.register("till-1")
    params = deployment.admin("params", "set", "--gift-card-offline", "on")
    issued = deployment.terminal("till-1", token, "issue", "50.00:EUR")
    number = re.search(r"issued gift card (\d+) with", issued.stdout)
    assert params.returncode == 0, params.stderr
    assert issued.returncode == 0, issued.stderr
    assert number is not None

    sold = deployment.terminal("till-1", token, "sale", "S1", "--line",
                               f"{number.group(1)}:12.50:EUR")
    balance = deployment.terminal("till-1", token, "balance", number.group(1))
    journal = deployment.admin("journal", number.group(1))

    assert sold.returncode == 0, sold.stderr
    assert "completed online" in sold.stdout
    assert "balance 37.50 EUR" in balance.stdout
    assert [entry["kind"] for entry in json.loads(journal.stdout)][-1].endswith("REDEEM")


def test_both_clis_take_their_tls_files_from_the_environment(mutual: Deployment) -> None:
    pki = mutual.pki
    admin_env = {"STOREDVALUE_CA_FILE": str(pki.ca.path),
                 "STOREDVALUE_ADMIN_CLIENT_CERT": str(pki.clients["storedvalue-admin"].certificate),
                 "STOREDVALUE_ADMIN_CLIENT_KEY": str(pki.clients["storedvalue-admin"].key)}
    till_env = {"STOREDVALUE_CA_FILE": str(pki.ca.path),
                "STOREDVALUE_TERMINAL_CLIENT_CERT": str(pki.clients["till-1"].certificate),
                "STOREDVALUE_TERMINAL_CLIENT_KEY": str(pki.clients["till-1"].key)}

    registered = mutual.cli("admin", "--target", mutual.hq.address, "terminals", "register",
                            "till-1", env=admin_env)
    assert registered.returncode == 0, registered.stderr
    token = json.loads(registered.stdout)["credential"]["bearer_token"]
    issued = mutual.terminal("till-1", token, "issue", "20.00:EUR", tls=[], env=till_env)

    assert issued.returncode == 0, issued.stderr
    assert "with 20.00 EUR" in issued.stdout


def test_the_admin_cli_with_a_tills_certificate_is_refused_and_told_which_it_needs(
    mutual: Deployment,
) -> None:
    refused = mutual.admin("terminals", "register", "till-9", client="till-1")
    listed = mutual.admin("terminals", "list")

    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr
    assert "admin client certificate (common name storedvalue-admin)" in refused.stderr
    assert "CN=till-1" in refused.stderr
    assert "till-9" not in listed.stdout


def test_the_admin_cli_without_a_client_certificate_is_told_hq_requires_one(
    mutual: Deployment,
) -> None:
    refused = mutual.admin("terminals", "list", client=None)

    assert refused.returncode == 1
    assert "requires a client certificate (mutual TLS)" in refused.stderr
    assert "--client-cert" in refused.stderr
    assert "CLIENT_CERTIFICATE_REFUSED" in refused.stderr
    assert "Socket closed" not in refused.stderr


def test_the_terminal_cli_with_another_cas_certificate_says_what_to_fix_not_unreachable(
    mutual: Deployment,
) -> None:
    token = mutual.register("till-1")
    stranger = CertificateAuthority(mutual.root / "elsewhere", "a CA HQ does not know")
    wrong = stranger.issue("till-1")
    flags = ["--ca-file", str(mutual.pki.ca.path), "--client-cert", str(wrong.certificate),
             "--client-key", str(wrong.key)]

    refused = mutual.terminal("till-1", token, "issue", "20.00:EUR", tls=flags)
    status = mutual.terminal("till-1", token, "status", tls=flags)

    assert refused.returncode == 1
    assert "unreachable" not in refused.stderr
    assert "CLIENT_CERTIFICATE_REFUSED" in refused.stderr
    assert "does not trust CN=a CA HQ does not know" in refused.stderr
    assert status.returncode == 0, status.stderr
    assert "connectivity: ONLINE" in status.stdout
    assert "TLS: HQ at" in status.stdout and "refused this client's certificate" in status.stdout


def test_a_cli_in_plaintext_against_hq_serving_tls_is_told_to_give_the_ca(
    deployment: Deployment,
) -> None:
    token = deployment.register("till-1")

    admin = deployment.cli("admin", "--target", deployment.hq.address, "terminals", "list")
    till = deployment.terminal("till-1", token, "balance", "79927398713", tls=[])

    for done in (admin, till):
        assert done.returncode == 1
        assert "HQ_REQUIRES_TLS" in done.stderr
        assert "--ca-file" in done.stderr


def test_a_client_certificate_without_its_key_is_a_usage_error(mutual: Deployment) -> None:
    certificate = str(mutual.pki.clients["till-1"].certificate)

    admin = mutual.cli("admin", "--target", mutual.hq.address, "--ca-file",
                       str(mutual.pki.ca.path), "--client-cert", certificate, "terminals", "list")
    till = mutual.terminal("till-1", "svt_x", "status",
                           tls=["--ca-file", str(mutual.pki.ca.path), "--client-cert",
                                certificate])
    missing = mutual.terminal("till-1", "svt_x", "status",
                              tls=["--ca-file", str(mutual.root / "missing-ca.pem")])

    assert (admin.returncode, till.returncode) == (2, 2)
    assert "needs its key" in admin.stderr and "needs its key" in till.stderr
    assert missing.returncode == 2
    assert "missing-ca.pem does not exist" in missing.stderr
