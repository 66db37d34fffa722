"""``storedvalue serve``: run the HQ server until SIGTERM/SIGINT.

HQ's own modules are imported only when this subcommand runs (its help shows the defaults
of HQ's configuration); without the ``hq`` extra, ``serve`` says to install it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storedvalue.hq.config import HQConfig

HQ_EXTRA = "pip install 'storedvalue[hq]'"

DESCRIPTION = """\
Run the HQ server. With no flags it serves plaintext on {listen} from a SQLite file
under ${{XDG_DATA_HOME:-~/.local/share}}/storedvalue and prints where. The admin credential
is STOREDVALUE_ADMIN_TOKEN, or else the admin token file (created on first start, mode
0600) beside the SQLite database, or in that data directory for PostgreSQL. SIGTERM or
SIGINT: health goes NOT_SERVING, in-flight calls drain within the grace period, exit code
0. SIGHUP reloads the TLS certificate, key and CA files (as does a change of them): new
connections get the new ones, open ones keep theirs, nothing stops. An address it cannot
listen on (taken by another process, not this machine's) stops it before it writes
anything: exit code 2.

--processes N (N > 1) runs N HQ worker processes on the one database and address, the
kernel spreading new connections over them; this process supervises them: it passes
SIGTERM, SIGINT and SIGHUP on, exits 0 once all of them stopped cleanly, and non-zero
(stopping the others) when one of them fails. What a process counts or orders is per
worker: the watchers, the streams per connection, the unknown-card limit per till, the
order of a till's sync batches in flight (one connection, one worker), the database
connections (PostgreSQL then has N times --database-connections).

Every flag of a file or address also comes from the environment (named beside it).
HQ needs the hq extra: {extra}."""


def register(subparsers: Any, summary: str) -> None:
    # Defaults shown come from the server's own configuration: one source of truth. Its
    # module needs none of HQ's extra dependencies.
    from storedvalue.hq.config import HQConfig

    defaults = HQConfig()
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help=summary,
        description=DESCRIPTION.format(listen=defaults.listen, extra=HQ_EXTRA),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser, defaults)
    parser.set_defaults(handler=run)


def add_arguments(parser: argparse.ArgumentParser, defaults: HQConfig) -> None:
    """The flags of `storedvalue serve`, each default in its help read from `defaults`."""
    from storedvalue.hq.config import EVENT_LOOPS, LOG_FORMATS

    limits = defaults.sync_limits
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help="address to serve on (env STOREDVALUE_LISTEN; "
                             f"default {defaults.listen})")
    parser.add_argument("--database-url", metavar="URL",
                        help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB "
                             "(env STOREDVALUE_DATABASE_URL; default a SQLite file); several "
                             "HQ processes may share either (on a SQLite file their writers "
                             "queue on PATH-writer.lock and hear each other's changes "
                             "through its notifications table)")
    parser.add_argument("--admin-token-file", type=Path, metavar="PATH",
                        help="where the admin token is kept when STOREDVALUE_ADMIN_TOKEN "
                             "is unset (default: admin-token beside the SQLite database; "
                             "for PostgreSQL, in the data directory)")
    parser.add_argument("--log-format", choices=LOG_FORMATS,
                        help="logs on stderr: text for a person, json (one object per line) "
                             "for a collector, auto: text on a terminal, else json "
                             f"(env STOREDVALUE_LOG_FORMAT; default {defaults.log_format})")
    parser.add_argument("--grace-period", type=float, metavar="SECONDS",
                        help="how long in-flight calls may finish on shutdown "
                             f"(default {defaults.grace_period_seconds:g})")
    parser.add_argument("--processes", type=int, metavar="N",
                        help="HQ worker processes serving the address together (SO_REUSEPORT; "
                             "the process started supervises them): for SQLite, the "
                             "machine's cores. The watcher cap, the streams per connection, "
                             "the unknown-card limit and the database connections are then "
                             "per worker (env STOREDVALUE_PROCESSES; "
                             f"default {defaults.processes})")
    parser.add_argument("--database-connections", type=int, metavar="N",
                        help="connections (each with its thread) to the database: "
                             "PostgreSQL's pool; SQLite's group-commit writer plus N-1 "
                             f"readers (default {defaults.database_connections})")
    parser.add_argument("--commit-gather", type=float, metavar="SECONDS",
                        help="SQLite: the longest a change waits for others to share its "
                             "commit when changes come one by one faster than commits "
                             "need; 0: never (default "
                             f"{defaults.commit_gather_seconds:g})")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS,
                        help=f"asyncio event loop to serve on (default {defaults.event_loop}, "
                             "where installed)")
    parser.add_argument("--call-deadline", type=float, metavar="SECONDS",
                        help="HQ's own limit on a unary call, waiting for its request "
                             "included; past it: DEADLINE_EXCEEDED, CALL_TOO_LONG "
                             f"(default {defaults.call_deadline_seconds:g})")
    parser.add_argument("--max-watchers", type=int, metavar="N",
                        help="most WatchParameters streams at once; more get "
                             "RESOURCE_EXHAUSTED, TOO_MANY_WATCHERS "
                             f"(default {defaults.max_watchers})")
    parser.add_argument("--max-streams-per-connection", type=int, metavar="N",
                        help="most concurrent calls on one client connection "
                             f"(default {defaults.max_streams_per_connection})")
    parser.add_argument("--keepalive", type=float, metavar="SECONDS",
                        help="ping a connection idle this long; close it if the ping is not "
                             f"answered (default {defaults.keepalive_seconds:g})")
    parser.add_argument("--keepalive-timeout", type=float, metavar="SECONDS",
                        help="how long a keepalive ping may go unanswered "
                             f"(default {defaults.keepalive_timeout_seconds:g})")
    parser.add_argument("--min-client-ping", type=float, metavar="SECONDS",
                        help="keepalive enforcement: clients pinging more often are sent "
                             f"GOAWAY (default {defaults.min_client_ping_seconds:g})")
    parser.add_argument("--notifications-poll", type=float, metavar="SECONDS",
                        help="SQLite file: how often to read the changes (parameters, "
                             "terminals revoked or moved) other HQ processes on the same file "
                             "made (PostgreSQL replicas are notified) "
                             f"(default {defaults.notifications_poll_seconds:g}; formerly "
                             "--parameters-poll, still accepted)")
    # The flag's former name, kept working for existing scripts.
    parser.add_argument("--parameters-poll", type=float, dest="notifications_poll",
                        help=argparse.SUPPRESS)
    parser.add_argument("--max-batch-transactions", type=int, metavar="N",
                        help="sync limit: transactions per SyncOfflineBatch "
                             f"(default {limits.max_transactions_per_batch})")
    parser.add_argument("--max-transaction-lines", type=int, metavar="N",
                        help="sync limit: redeem lines plus unlocks plus reversals per "
                             f"transaction (default {limits.max_lines_per_transaction})")
    parser.add_argument("--max-message-bytes", type=int, metavar="BYTES",
                        help="sync limit: bytes per sync request "
                             f"(default {limits.max_message_bytes})")
    parser.add_argument("--unknown-card-limit", type=int, metavar="N",
                        help="answers about unknown cards a till may get per minute before "
                             "HQ stops looking up cards it does not hold "
                             f"(default {defaults.unknown_card_limit})")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="TLS certificate chain, server certificate first; required to "
                             "listen beyond loopback (env STOREDVALUE_TLS_CERT)")
    parser.add_argument("--tls-key", type=Path, metavar="PEM",
                        help="its private key, unencrypted (env STOREDVALUE_TLS_KEY)")
    parser.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                        help="mutual TLS: CA of the tills' client certificates; a till's "
                             "certificate common name must be its terminal id "
                             "(env STOREDVALUE_TLS_CLIENT_CA)")
    parser.add_argument("--admin-cert-name", action="append", metavar="NAME",
                        help="mutual TLS: common name of the back office's client "
                             "certificates, repeatable (env STOREDVALUE_ADMIN_CERT_NAMES, "
                             "comma-separated; default storedvalue-admin, or any name with "
                             "--admin-client-ca)")
    parser.add_argument("--admin-client-ca", type=Path, metavar="PEM",
                        help="mutual TLS: a separate CA that issues the back office's client "
                             "certificates (env STOREDVALUE_ADMIN_CLIENT_CA)")
    parser.add_argument("--tls-reload", type=float, metavar="SECONDS",
                        help="how often to look for changed TLS files and serve new "
                             "connections with them; 0: on SIGHUP only "
                             f"(default {defaults.tls_reload_seconds:g})")
    parser.add_argument("--health-listen", metavar="HOST:PORT",
                        help="also serve the health service alone, in plaintext, on this "
                             "loopback address: probes without a client certificate "
                             "(env STOREDVALUE_HEALTH_LISTEN)")


def hq_missing(command: str) -> str | None:
    """What to tell a person running `command` where HQ's extra dependencies are not
    installed (a till's install), or None when HQ can run."""
    try:
        import storedvalue.hq.process  # noqa: F401 - the whole server, database stack included
    except ModuleNotFoundError as missing:
        if (missing.name or "storedvalue").partition(".")[0] == "storedvalue":
            raise  # our own code is broken: not a missing extra
        return (f"storedvalue {command}: HQ needs the hq extra, not installed here (no "
                f"module {missing.name!r}): {HQ_EXTRA}")
    return None


def run(args: argparse.Namespace) -> int:
    # First, while nothing has imported sqlite3 (HQ's modules below do): SQLite takes this
    # process-wide setting only before it is initialized. Workers of --processes do the same
    # (storedvalue.hq.worker_entry).
    from storedvalue.hq.sqlite_memory import disable_memory_statistics

    disable_memory_statistics()
    if (missing := hq_missing("serve")) is not None:
        print(missing, file=sys.stderr)
        return 2
    from storedvalue.hq.config import ConfigError, HQConfig, load_config
    from storedvalue.hq.process import serve
    from storedvalue.hq.services.offline import SyncLimits

    defaults = HQConfig().sync_limits
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
            database_connections=args.database_connections,
            commit_gather_seconds=args.commit_gather,
            event_loop=args.event_loop,
            call_deadline_seconds=args.call_deadline,
            max_watchers=args.max_watchers,
            max_streams_per_connection=args.max_streams_per_connection,
            keepalive_seconds=args.keepalive,
            keepalive_timeout_seconds=args.keepalive_timeout,
            min_client_ping_seconds=args.min_client_ping,
            notifications_poll_seconds=args.notifications_poll,
            sync_limits=limits,
            unknown_card_limit=args.unknown_card_limit,
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            tls_client_ca_file=args.tls_client_ca,
            admin_client_ca_file=args.admin_client_ca,
            admin_certificate_names=tuple(args.admin_cert_name) if args.admin_cert_name else None,
            tls_reload_seconds=args.tls_reload,
            health_listen=args.health_listen,
            log_format=args.log_format,
            processes=args.processes,
            check_addresses=True,
        )
        return serve(config)
    except ConfigError as error:  # also a certificate file HQ found wrong as it started
        print(f"storedvalue serve: {error}", file=sys.stderr)
        return 2
