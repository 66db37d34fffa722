"""The TLS options of the commands that connect to HQ (``admin``, ``terminal``): flags, else
environment variables, turned into the terminal library's ``TlsFiles``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from storedvalue.terminal import TlsFiles

ENV_CA_FILE = "STOREDVALUE_CA_FILE"
ENV_SERVER_NAME = "STOREDVALUE_SERVER_NAME"
ENV_TLS = "STOREDVALUE_TLS"


def add_tls_options(parser: argparse.ArgumentParser, *, whose: str, cert_env: str,
                    key_env: str) -> None:
    """--ca-file, --client-cert, --client-key, --server-name and --tls on ``parser``."""
    parser.add_argument("--ca-file", type=Path, metavar="PEM",
                        help=f"CA of HQ's certificate: connect with TLS (env {ENV_CA_FILE}; "
                             "default plaintext, which HQ serves on loopback only)")
    parser.add_argument("--client-cert", type=Path, metavar="PEM",
                        help=f"mutual TLS: {whose} client certificate (env {cert_env})")
    parser.add_argument("--client-key", type=Path, metavar="PEM",
                        help=f"its private key, unencrypted (env {key_env})")
    parser.add_argument("--server-name", metavar="NAME",
                        help="the name in HQ's certificate, when the address's host is not "
                             f"it (env {ENV_SERVER_NAME})")
    parser.add_argument("--tls", action="store_true",
                        help="TLS trusting the system's CAs, without --ca-file "
                             f"(env {ENV_TLS}=1)")


def tls_files(args: argparse.Namespace, *, cert_env: str, key_env: str,
              environ: Mapping[str, str] | None = None) -> TlsFiles | None:
    """The TLS the options and environment ask for; None: plaintext. ValueError when a
    certificate comes without its key or the other way round."""
    env = os.environ if environ is None else environ
    ca_file = args.ca_file or _path(env, ENV_CA_FILE)
    certificate = args.client_cert or _path(env, cert_env)
    key = args.client_key or _path(env, key_env)
    server_name = args.server_name or env.get(ENV_SERVER_NAME, "")
    wanted = args.tls or env.get(ENV_TLS, "") in ("1", "true", "yes", "on")
    if ca_file is None and certificate is None and key is None and not wanted:
        return None
    if (certificate is None) != (key is None):
        raise ValueError(f"a client certificate needs its key: give both --client-cert and "
                         f"--client-key (or {cert_env} and {key_env})")
    return TlsFiles(ca_file=ca_file, certificate_file=certificate, key_file=key,
                    server_name=server_name)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value) if value else None
