"""The HQ process's configuration: one frozen dataclass, loaded once from flags and the
environment (flags win), then passed down. Nothing else reads the environment."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from storedvalue.hq.services.offline import SyncLimits

DEFAULT_LISTEN = "127.0.0.1:50051"
ENV_LISTEN = "STOREDVALUE_LISTEN"
ENV_DATABASE_URL = "STOREDVALUE_DATABASE_URL"
ENV_ADMIN_TOKEN = "STOREDVALUE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
ADMIN_NAME = "admin"


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
    STOREDVALUE_ADMIN_TOKEN."""

    grace_period_seconds: float = 10.0
    """On SIGTERM/SIGINT: how long in-flight calls get to finish before they are cancelled."""

    max_workers: int = 256
    """Threads serving calls. Each open WatchParameters stream holds one (idle, waiting on a
    condition), so this bounds the connected terminals per replica together with the unary
    calls in flight; threads are started only as streams and calls need them. A fleet larger
    than this per replica needs more replicas or a larger value."""

    parameters_poll_seconds: float = 0.5
    """How often the process reads the current parameters version from the database, to pick
    up changes made through other replicas (changes made here are pushed at once)."""

    watch_wakeup_seconds: float = 1.0
    """How often an idle WatchParameters stream checks whether its caller went away."""

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
    When set, every connection must present a certificate signed by it, and a terminal's
    bearer credential only works on a connection whose certificate's common name is that
    terminal's id. Needs `tls_cert_file` and `tls_key_file`."""

    @property
    def uses_tls(self) -> bool:
        return self.tls_cert_file is not None and self.tls_key_file is not None

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


def default_admin_token_file(environ: Mapping[str, str]) -> Path:
    return data_dir(environ) / "admin-token"


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
    max_workers: int | None = None,
    parameters_poll_seconds: float | None = None,
    sync_limits: SyncLimits | None = None,
    unknown_card_limit: int | None = None,
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    tls_client_ca_file: Path | None = None,
) -> HQConfig:
    """Build the configuration: each argument is a flag (None when not given), falling back
    to the environment, then to the default. Creates the admin token file if needed."""
    env = os.environ if environ is None else environ
    defaults = HQConfig()
    config_listen = listen or env.get(ENV_LISTEN) or DEFAULT_LISTEN
    host, _port = split_listen_address(config_listen)
    if (tls_cert_file is None) != (tls_key_file is None):
        raise ConfigError("TLS needs both a certificate file and a key file")
    if tls_client_ca_file is not None and tls_cert_file is None:
        raise ConfigError("mutual TLS (a client CA) needs the server's TLS certificate and key")
    if tls_cert_file is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve plaintext on {config_listen}: plaintext is for loopback "
            "addresses only (127.0.0.1, ::1, localhost); give a TLS certificate and key "
            "(--tls-cert, --tls-key) to listen on other addresses"
        )
    # Every check before any side effect (data directory, token file).
    if max_workers is not None and max_workers < 2:
        raise ConfigError("max workers must be at least 2")
    if unknown_card_limit is not None and unknown_card_limit < 1:
        raise ConfigError("the unknown-card limit must be at least 1 a minute")
    # The storage creates a SQLite file and its directory, private to this user.
    url = database_url or env.get(ENV_DATABASE_URL) or default_database_url(env)
    token = env.get(ENV_ADMIN_TOKEN, "").strip()
    token_file: Path | None = None
    if not token:
        token_file = admin_token_file or default_admin_token_file(env)
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
        max_workers=defaults.max_workers if max_workers is None else max_workers,
        parameters_poll_seconds=(
            defaults.parameters_poll_seconds if parameters_poll_seconds is None
            else parameters_poll_seconds
        ),
        sync_limits=sync_limits or defaults.sync_limits,
        unknown_card_limit=(
            defaults.unknown_card_limit if unknown_card_limit is None else unknown_card_limit
        ),
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        tls_client_ca_file=tls_client_ca_file,
    )
