"""The HQ process's configuration: one frozen dataclass, loaded once from flags and the
environment (flags win), then passed down. Nothing else reads the environment."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from storedvalue.hq.services.offline import SyncLimits

V = TypeVar("V")

DEFAULT_LISTEN = "127.0.0.1:50051"
ENV_LISTEN = "STOREDVALUE_LISTEN"
ENV_DATABASE_URL = "STOREDVALUE_DATABASE_URL"
ENV_ADMIN_TOKEN = "STOREDVALUE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_TLS_CERT = "STOREDVALUE_TLS_CERT"
ENV_TLS_KEY = "STOREDVALUE_TLS_KEY"
ENV_TLS_CLIENT_CA = "STOREDVALUE_TLS_CLIENT_CA"
ENV_ADMIN_CLIENT_CA = "STOREDVALUE_ADMIN_CLIENT_CA"
ENV_ADMIN_CERT_NAMES = "STOREDVALUE_ADMIN_CERT_NAMES"
ENV_HEALTH_LISTEN = "STOREDVALUE_HEALTH_LISTEN"
ENV_LOG_FORMAT = "STOREDVALUE_LOG_FORMAT"
ENV_PROCESSES = "STOREDVALUE_PROCESSES"
ADMIN_TOKEN_FILE_NAME = "admin-token"  # noqa: S105 - a file name, not a secret
ADMIN_NAME = "admin"
DEFAULT_ADMIN_CERTIFICATE_NAME = "storedvalue-admin"
"""Under mutual TLS, the common name a back-office client certificate has when nothing else
is configured."""
EVENT_LOOPS = ("uvloop", "asyncio")
LOG_FORMATS = ("auto", "text", "json")


class ConfigError(Exception):
    """The configuration cannot work; the message says what to change."""


@dataclass(frozen=True, slots=True)
class HQConfig:
    """How one HQ process runs."""

    listen: str = DEFAULT_LISTEN
    """HOST:PORT to serve gRPC on. Port 0 lets the OS pick (tests). Plaintext is refused on
    anything but a loopback host unless `tls_cert_file` and `tls_key_file` are set."""

    database_url: str = ""
    """SQLAlchemy URL of the database: `sqlite:///PATH` (the embedded default, a file under
    the data directory) or `postgresql+psycopg://USER@HOST/DB` for several replicas."""

    admin_token: str = field(default="", repr=False)
    """The bearer token back-office calls must present (HQ keeps only its hash in memory)."""

    admin_token_file: Path | None = None
    """Where `admin_token` was read from (created on first start); None when it came from
    STOREDVALUE_ADMIN_TOKEN. Unless given, `admin-token` beside a SQLite database file (so
    two HQs on two databases have two tokens), else in the data directory (PostgreSQL: the
    replicas of one user on one machine share it): see `admin_token_file_for`."""

    log_format: str = "auto"
    """How the process logs on stderr: "text" (a line a person reads), "json" (one object
    per line, for log collectors) or "auto": text when stderr is a terminal, else JSON."""

    grace_period_seconds: float = 10.0
    """On SIGTERM/SIGINT: how long in-flight calls get to finish before they are cancelled."""

    database_connections: int = 4
    """Connections this process opens to the database, each driven by one thread: the
    database's concurrency, whatever the number of callers (they wait in memory). PostgreSQL:
    the connection pool. SQLite: one writer (group commit) and the others as readers."""

    commit_gather_seconds: float = 0.005
    """SQLite: the longest a change waits for others to share its commit (one fsync), when
    changes have been coming one by one faster than an idle writer needs them apart (a
    busy fleet); 0: never waits. A lone till is not kept waiting: the writer stops waiting
    as soon as a wait gathers nobody (storedvalue.hq.storage.group_commit)."""

    event_loop: str = "uvloop"
    """The asyncio event loop implementation: "uvloop" (faster; the default where it is
    installed, else HQ falls back to "asyncio" and says so) or "asyncio"."""

    call_deadline_seconds: float = 30.0
    """HQ's own limit on a unary call, from its arrival to its answer, reading the request
    included: past it the call ends with DEADLINE_EXCEEDED (CALL_TOO_LONG), even when the
    client set no deadline or a longer one. WatchParameters streams are not limited."""

    max_watchers: int = 20_000
    """Most WatchParameters streams this process serves at once (each costs memory, no
    thread); one more gets RESOURCE_EXHAUSTED (TOO_MANY_WATCHERS)."""

    max_streams_per_connection: int = 128
    """Most concurrent calls on one client connection (HTTP/2 streams): a till needs a few
    (its watch stream and a call or two), so one connection cannot hold many of them. A
    client that opens more before it has read HQ's settings gets REFUSED_STREAM for them."""

    keepalive_seconds: float = 60.0
    """HQ pings a connection idle this long, and closes it when the ping is not answered
    within `keepalive_timeout_seconds`: dead tills' streams do not linger."""

    keepalive_timeout_seconds: float = 20.0
    """How long a keepalive ping may go unanswered before HQ closes the connection."""

    min_client_ping_seconds: float = 10.0
    """Keepalive enforcement: a client pinging more often than this is sent GOAWAY
    (ENHANCE_YOUR_CALM) after two offences."""

    notifications_poll_seconds: float = 0.1
    """SQLite file only: how often the process reads the notifications other HQ processes on
    the same file wrote (parameter changes, terminals revoked or moved), so that they reach
    its watch streams and credential cache. Changes made here are pushed at once; on
    PostgreSQL other replicas' changes arrive through LISTEN/NOTIFY."""

    sync_limits: SyncLimits = field(default_factory=SyncLimits)
    """Documented limits on offline sync requests (sent to terminals in GetParameters)."""

    unknown_card_limit: int = 20
    """Answers about cards a till could not use (unknown, taken, another currency) it may get
    per minute; past that, HQ answers RATE_LIMITED for any card the till does not hold a lock
    on (README: "Unknown cards"). Counted per HQ process."""

    tls_cert_file: Path | None = None
    """PEM certificate chain for TLS. With `tls_key_file`, the server speaks TLS only."""

    tls_key_file: Path | None = None
    """PEM private key matching `tls_cert_file`."""

    tls_client_ca_file: Path | None = None
    """Mutual TLS: PEM certificates of the CA that signs the tills' client certificates.
    When set, every connection must present a certificate signed by it (or by
    `admin_client_ca_file`), a terminal's bearer credential only works on a connection whose
    certificate's common name is that terminal's id, and the admin credential only on a
    connection with an admin certificate (`admin_certificate_names`). Needs `tls_cert_file`
    and `tls_key_file`."""

    admin_client_ca_file: Path | None = None
    """Mutual TLS: PEM certificate of a separate CA that issues the back office's client
    certificates (directly). Connections with its certificates are accepted too, and
    back-office calls then need one of them (with a name in `admin_certificate_names`, when
    given). None: admin certificates come from `tls_client_ca_file`, told apart by name."""

    admin_certificate_names: tuple[str, ...] = ()
    """Mutual TLS: the common names of back-office client certificates. Empty: any name
    when `admin_client_ca_file` is set, else `storedvalue-admin`."""

    tls_reload_seconds: float = 10.0
    """How often HQ looks at its certificate, key and CA files for a change, and serves new
    connections with the new ones (SIGHUP reloads them at once). 0: only on SIGHUP."""

    processes: int = 1
    """HQ processes serving `listen` together (`storedvalue serve --processes N`): 1 is one
    process, as always; above 1 the process started is a supervisor and N worker processes
    each run a whole HQ on the one database, sharing the port (SO_REUSEPORT: the kernel
    spreads new connections over them). Everything above that is counted or capped (the
    watchers, the unknown-card limit) is then per worker, as it is per replica."""

    health_listen: str | None = None
    """HOST:PORT (a loopback host) of a separate plaintext port serving only the standard
    health service: load-balancer and orchestrator probes without a client certificate.
    None: no such port (health is served on `listen` as always)."""

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def uses_mutual_tls(self) -> bool:
        return self.uses_tls and self.tls_client_ca_file is not None

    @property
    def required_admin_certificate_names(self) -> frozenset[str]:
        """Common names a back-office client certificate must have under mutual TLS; empty
        when any name from `admin_client_ca_file` will do."""
        if self.admin_certificate_names:
            return frozenset(self.admin_certificate_names)
        if self.admin_client_ca_file is not None:
            return frozenset()
        return frozenset({DEFAULT_ADMIN_CERTIFICATE_NAME})

    def admin_certificate_rule(self) -> str:
        """What makes a client certificate the back office's, in words (messages, logs)."""
        names = sorted(self.required_admin_certificate_names)
        named = f"common name {' or '.join(names)}" if names else ""
        if self.admin_client_ca_file is None:
            return named
        issued = f"issued by {self.admin_client_ca_file}"
        return f"{named}, {issued}" if named else issued

    @property
    def max_receive_message_bytes(self) -> int:
        """gRPC's own receive limit: above the documented sync limit, so an oversized sync
        request reaches HQ and gets LIMIT_EXCEEDED (with a reason) rather than a bare
        RESOURCE_EXHAUSTED from the transport."""
        return 2 * self.sync_limits.max_message_bytes + 1024 * 1024


def data_dir(environ: Mapping[str, str]) -> Path:
    """${XDG_DATA_HOME:-~/.local/share}/storedvalue"""
    base = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "storedvalue"


def default_database_url(environ: Mapping[str, str]) -> str:
    return f"sqlite:///{data_dir(environ) / 'hq.sqlite3'}"


def admin_token_file_for(database_url: str | None, environ: Mapping[str, str]) -> Path:
    """Where the admin token is kept for an HQ on `database_url` (None: the default
    database): `admin-token` in the directory of a SQLite database file; for PostgreSQL or
    a SQLite memory database, in the data directory."""
    if database_url:
        # SQLAlchemy reads the URL (HQ's extra): the same reading the storage makes.
        from sqlalchemy.engine import make_url

        from storedvalue.hq.storage.engines import sqlite_file_path

        database_file = sqlite_file_path(make_url(database_url))
        if database_file is not None:
            return database_file.parent / ADMIN_TOKEN_FILE_NAME
    return data_dir(environ) / ADMIN_TOKEN_FILE_NAME


def redacted_url(url: str) -> str:
    """A database URL fit for logs: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def split_listen_address(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen address {listen!r} must be HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_or_create_admin_token(path: Path) -> str:
    """The admin token kept in `path`; on first start, a new random one written there with
    mode 0600 (only the HQ's user may read it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="utf-8").strip()
        if not token:
            raise ConfigError(f"admin token file {path} is empty; delete it to get a new token"
                              ) from None
        return token
    token = "sva_" + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token


def load_config(
    *,
    environ: Mapping[str, str] | None = None,
    listen: str | None = None,
    database_url: str | None = None,
    admin_token_file: Path | None = None,
    grace_period_seconds: float | None = None,
    database_connections: int | None = None,
    commit_gather_seconds: float | None = None,
    event_loop: str | None = None,
    call_deadline_seconds: float | None = None,
    max_watchers: int | None = None,
    max_streams_per_connection: int | None = None,
    keepalive_seconds: float | None = None,
    keepalive_timeout_seconds: float | None = None,
    min_client_ping_seconds: float | None = None,
    notifications_poll_seconds: float | None = None,
    sync_limits: SyncLimits | None = None,
    unknown_card_limit: int | None = None,
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    tls_client_ca_file: Path | None = None,
    admin_client_ca_file: Path | None = None,
    admin_certificate_names: tuple[str, ...] | None = None,
    tls_reload_seconds: float | None = None,
    health_listen: str | None = None,
    log_format: str | None = None,
    processes: int | None = None,
    check_addresses: bool = False,
) -> HQConfig:
    """Build the configuration: each argument is a flag (None when not given), falling back
    to the environment, then to the default. Creates the admin token file if needed. With
    `check_addresses` (`storedvalue serve`), first makes sure HQ can listen on the addresses
    (storedvalue.hq.addresses): a taken one stops HQ before it writes anything."""
    env = os.environ if environ is None else environ
    defaults = HQConfig()
    config_listen = listen or env.get(ENV_LISTEN) or DEFAULT_LISTEN
    host, _port = split_listen_address(config_listen)
    tls_cert_file = tls_cert_file or _path(env, ENV_TLS_CERT)
    tls_key_file = tls_key_file or _path(env, ENV_TLS_KEY)
    tls_client_ca_file = tls_client_ca_file or _path(env, ENV_TLS_CLIENT_CA)
    admin_client_ca_file = admin_client_ca_file or _path(env, ENV_ADMIN_CLIENT_CA)
    if admin_certificate_names is None:
        admin_certificate_names = tuple(
            name.strip() for name in env.get(ENV_ADMIN_CERT_NAMES, "").split(",") if name.strip()
        )
    health_listen = health_listen or env.get(ENV_HEALTH_LISTEN) or None
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ConfigError("TLS needs both a certificate file and a key file")
    if tls_client_ca_file is not None and tls_cert_file is None:
        raise ConfigError("mutual TLS (a client CA) needs the server's TLS certificate and key")
    if (admin_client_ca_file is not None or admin_certificate_names) and (
        tls_client_ca_file is None
    ):
        raise ConfigError("admin client certificates (an admin CA or admin certificate names) "
                          "need mutual TLS: give the tills' client CA too (--tls-client-ca)")
    if any(not name or len(name) > 64 for name in admin_certificate_names):
        raise ConfigError("an admin certificate name must be 1 to 64 characters")
    if tls_reload_seconds is not None and tls_reload_seconds < 0:
        raise ConfigError("the certificate reload interval must be 0 (SIGHUP only) or positive")
    if health_listen is not None:
        health_host, _ = split_listen_address(health_listen)
        if not is_loopback(health_host):
            raise ConfigError(
                f"the plaintext health port {health_listen} must be on a loopback address "
                "(127.0.0.1, ::1, localhost); a prober on another host can present a client "
                "certificate to the main port instead"
            )
    if tls_cert_file is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve plaintext on {config_listen}: plaintext is for loopback "
            "addresses only (127.0.0.1, ::1, localhost); give a TLS certificate and key "
            "(--tls-cert, --tls-key) to listen on other addresses"
        )
    # Every check before any side effect (data directory, token file).
    if database_connections is not None and database_connections < 2:
        raise ConfigError("database connections must be at least 2 (SQLite: a writer and a "
                          "reader)")
    if commit_gather_seconds is not None and not 0 <= commit_gather_seconds <= 1:
        raise ConfigError("the commit gather wait must be 0 (none) to 1 second")
    if event_loop is not None and event_loop not in EVENT_LOOPS:
        raise ConfigError(f"event loop must be one of {', '.join(EVENT_LOOPS)}")
    log_format = log_format or env.get(ENV_LOG_FORMAT) or defaults.log_format
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    for name, value in (("call deadline", call_deadline_seconds),
                        ("keepalive", keepalive_seconds),
                        ("keepalive timeout", keepalive_timeout_seconds),
                        ("minimum client ping interval", min_client_ping_seconds)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} must be a positive number of seconds")
    for name, count in (("max watchers", max_watchers),
                        ("max streams per connection", max_streams_per_connection)):
        if count is not None and count < 1:
            raise ConfigError(f"{name} must be at least 1")
    if unknown_card_limit is not None and unknown_card_limit < 1:
        raise ConfigError("the unknown-card limit must be at least 1 a minute")
    processes = _process_count(processes, env)
    # The storage creates a SQLite file and its directory, private to this user.
    url = database_url or env.get(ENV_DATABASE_URL) or default_database_url(env)
    if processes > 1 and _is_memory_database(url):
        raise ConfigError("several HQ processes need a database they can share: a SQLite "
                          "file or PostgreSQL, not a SQLite memory database")
    if check_addresses:
        from storedvalue.hq.addresses import check_addresses as check

        check(config_listen, health_listen)
    token = env.get(ENV_ADMIN_TOKEN, "").strip()
    token_file: Path | None = None
    if not token:
        token_file = admin_token_file or admin_token_file_for(url, env)
        token = read_or_create_admin_token(token_file)
    return HQConfig(
        listen=config_listen,
        database_url=url,
        admin_token=token,
        admin_token_file=token_file,
        grace_period_seconds=(
            defaults.grace_period_seconds if grace_period_seconds is None
            else grace_period_seconds
        ),
        database_connections=_given(database_connections, defaults.database_connections),
        commit_gather_seconds=_given(commit_gather_seconds, defaults.commit_gather_seconds),
        event_loop=_given(event_loop, defaults.event_loop),
        call_deadline_seconds=_given(call_deadline_seconds, defaults.call_deadline_seconds),
        max_watchers=_given(max_watchers, defaults.max_watchers),
        max_streams_per_connection=_given(
            max_streams_per_connection, defaults.max_streams_per_connection
        ),
        keepalive_seconds=_given(keepalive_seconds, defaults.keepalive_seconds),
        keepalive_timeout_seconds=_given(
            keepalive_timeout_seconds, defaults.keepalive_timeout_seconds
        ),
        min_client_ping_seconds=_given(min_client_ping_seconds, defaults.min_client_ping_seconds),
        notifications_poll_seconds=_given(notifications_poll_seconds,
                                          defaults.notifications_poll_seconds),
        sync_limits=sync_limits or defaults.sync_limits,
        unknown_card_limit=(
            defaults.unknown_card_limit if unknown_card_limit is None else unknown_card_limit
        ),
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        tls_client_ca_file=tls_client_ca_file,
        admin_client_ca_file=admin_client_ca_file,
        admin_certificate_names=admin_certificate_names,
        tls_reload_seconds=_given(tls_reload_seconds, defaults.tls_reload_seconds),
        health_listen=health_listen,
        log_format=log_format,
        processes=processes,
    )


def _process_count(flag: int | None, env: Mapping[str, str]) -> int:
    """--processes, else STOREDVALUE_PROCESSES, else 1; at least 1."""
    if flag is None:
        value = env.get(ENV_PROCESSES, "").strip()
        if not value:
            return 1
        try:
            flag = int(value)
        except ValueError:
            raise ConfigError(f"{ENV_PROCESSES} must be a whole number of processes, not "
                              f"{value!r}") from None
    if flag < 1:
        raise ConfigError("the number of HQ processes must be at least 1")
    return flag


def _is_memory_database(url: str) -> bool:
    from sqlalchemy.engine import make_url

    from storedvalue.hq.storage.engines import is_sqlite_memory

    return is_sqlite_memory(make_url(url))


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name, "").strip()
    return Path(value) if value else None


def _given(flag: V | None, default: V) -> V:
    return default if flag is None else flag
