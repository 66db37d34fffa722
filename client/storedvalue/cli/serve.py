"""``storedvalue serve``: run the HQ server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Run the HQ server. With no flags it serves plaintext on 127.0.0.1:50051 from a SQLite file
under ${XDG_DATA_HOME:-~/.local/share}/storedvalue and prints where. The admin credential
is STOREDVALUE_ADMIN_TOKEN, or else the admin token file (created on first start, mode
0600). SIGTERM or SIGINT: health goes NOT_SERVING, in-flight calls drain within the grace
period, exit code 0."""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="run the HQ server",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address to serve on (env STOREDVALUE_LISTEN; "
                             "default 127.0.0.1:50051)")
    parser.add_argument("--database-url", metavar="URL",
                        help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                             "(env STOREDVALUE_DATABASE_URL; default a SQLite file)")
    parser.add_argument("--admin-token-file", type=Path, metavar="PATH",
                        help="where the admin token is kept when STOREDVALUE_ADMIN_TOKEN "
                             "is unset (default beside the default database)")
    parser.add_argument("--grace-period", type=float, metavar="SECONDS",
                        help="how long in-flight calls may finish on shutdown (default 10)")
    parser.add_argument("--max-workers", type=int, metavar="N",
                        help="threads serving calls (default 32)")
    parser.add_argument("--parameters-poll", type=float, metavar="SECONDS",
                        help="how often to pick up parameter changes made through other "
                             "replicas (default 0.5)")
    parser.add_argument("--max-batch-transactions", type=int, metavar="N",
                        help="sync limit: transactions per SyncOfflineBatch (default 1000)")
    parser.add_argument("--max-transaction-lines", type=int, metavar="N",
                        help="sync limit: redeem lines plus unlocks plus reversals per "
                             "transaction (default 200)")
    parser.add_argument("--max-message-bytes", type=int, metavar="BYTES",
                        help="sync limit: bytes per sync request (default 8 MiB)")
    parser.add_argument("--unknown-card-limit", type=int, metavar="N",
                        help="answers about unknown cards a till may get per minute before "
                             "HQ stops looking up cards it does not hold (default 20)")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="TLS certificate chain; required to listen beyond loopback")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="TLS private key")
    parser.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                        help="mutual TLS: CA of the tills' client certificates; a till's "
                             "certificate common name must be its terminal id")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: other subcommands must not load the HQ's database code.
    from storedvalue.hq.config import ConfigError, load_config
    from storedvalue.hq.server import serve
    from storedvalue.hq.services.offline import SyncLimits

    defaults = SyncLimits()
    limits = SyncLimits(
        max_transactions_per_batch=(
            args.max_batch_transactions or defaults.max_transactions_per_batch
        ),
        max_lines_per_transaction=args.max_transaction_lines or defaults.max_lines_per_transaction,
        max_message_bytes=args.max_message_bytes or defaults.max_message_bytes,
    )
    try:
        config = load_config(
            listen=args.listen,
            database_url=args.database_url,
            admin_token_file=args.admin_token_file,
            grace_period_seconds=args.grace_period,
            max_workers=args.max_workers,
            parameters_poll_seconds=args.parameters_poll,
            sync_limits=limits,
            unknown_card_limit=args.unknown_card_limit,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
        )
    except ConfigError as error:
        print(f"storedvalue serve: {error}", file=sys.stderr)
        return 2
    return serve(config)
