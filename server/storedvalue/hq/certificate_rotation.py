"""Certificate rotation without downtime.

HQ serves TLS through gRPC's dynamic server credentials: at every new connection's handshake
gRPC asks `ServingCertificates` whether the certificates changed. `reload` (on SIGHUP, or when
the files' identity changed, looked at every `tls_reload_seconds`) checks the files with the
same rules as at start; good ones are handed to the next handshake, so new connections get
them while open ones keep theirs, and no call fails. Bad ones (a key that does not match yet
because only the certificate was replaced so far, an expired certificate) are logged and the
served ones kept: a reload never stops HQ, and a later change is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

import grpc

from storedvalue.hq.config import ConfigError, HQConfig
from storedvalue.hq.domain.moments import rfc3339
from storedvalue.hq.tls import ServerCertificates, file_signature, load_certificates, tls_files

log = logging.getLogger(__name__)

_DAY_SECONDS = 24 * 3600.0


class ServingCertificates:
    """The TLS certificates new connections get, replaceable while HQ serves.

    Only one secure port may use `credentials()`: gRPC keeps what the fetcher hands over per
    port, and the fetcher hands each new set over once."""

    def __init__(
        self,
        config: HQConfig,
        loaded: ServerCertificates,
        *,
        on_reload: Callable[[ServerCertificates], None] = lambda _certificates: None,
    ) -> None:
        self._config = config
        self._files = tls_files(config)
        self._current = loaded
        self._on_reload = on_reload
        self._handover = threading.Lock()  # gRPC's handshakes run on its own threads
        self._next: grpc.ServerCertificateConfiguration | None = None
        self._tried = loaded.signature
        self._warned_at = time.monotonic()

    @property
    def current(self) -> ServerCertificates:
        return self._current

    def credentials(self) -> grpc.ServerCredentials:
        # The fetcher returns None for "no change" (gRPC's documented contract; the type
        # stubs say it must always return a configuration).
        fetcher = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch)
        return grpc.dynamic_ssl_server_credentials(
            self._current.configuration(),
            fetcher,
            require_client_authentication=self._config.uses_mutual_tls,
        )

    def reload(self, trigger: str) -> bool:
        """Read the files again; True when new connections will get what they hold now."""
        self._tried = file_signature(self._files)
        try:
            fresh = load_certificates(self._config)
        except ConfigError as error:
            log.error("TLS files not reloaded, new connections keep the previous certificate: "
                      "%s", error, extra={"trigger": trigger})
            return False
        with self._handover:
            self._next = fresh.configuration()
            self._current = fresh
        self._on_reload(fresh)
        log.info("TLS files reloaded: new connections get them", extra={
            "trigger": trigger, "subject": fresh.subject,
            "not_after": rfc3339(fresh.not_after),
        })
        for warning in fresh.warnings:
            log.warning(warning)
        self._warned_at = time.monotonic()
        return True

    def reload_if_changed(self) -> bool:
        """Reload when a file was replaced or rewritten since the last attempt."""
        if file_signature(self._files) == self._tried:
            return False
        return self.reload("file change")

    async def watch(self) -> None:
        """Until cancelled: pick up changed files every `tls_reload_seconds` (when positive),
        and repeat the expiry warning once a day."""
        period = self._config.tls_reload_seconds or 3600.0
        while True:
            await asyncio.sleep(period)
            if self._config.tls_reload_seconds > 0:
                self.reload_if_changed()
            if time.monotonic() - self._warned_at >= _DAY_SECONDS:
                self._warned_at = time.monotonic()
                warning = self._current.expiry_warning(datetime.now(UTC))
                if warning is not None:
                    log.warning(warning)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question at each handshake: a new configuration once, else None (keep)."""
        with self._handover:
            configuration, self._next = self._next, None
        return configuration
