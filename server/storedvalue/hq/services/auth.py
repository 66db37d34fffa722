"""Who is calling: a terminal (by its bearer credential) or a back-office admin."""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from storedvalue.hq.domain.errors import PermissionDenied, Unauthenticated
from storedvalue.hq.domain.terminals import hash_token
from storedvalue.hq.services.transactions import run_in_transaction
from storedvalue.hq.services.unit_of_work import Storage


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated identity of a call; never taken from a request field."""

    terminal_id: str = ""
    admin_name: str = ""

    @property
    def is_admin(self) -> bool:
        return bool(self.admin_name)

    @property
    def request_scope(self) -> str:
        """The namespace of this caller's request ids."""
        return f"admin:{self.admin_name}" if self.is_admin else self.terminal_id


class Authenticator:
    """Resolves bearer tokens. Terminal lookups are cached for `cache_seconds` (a rotated
    credential stops working on this replica at once, on other replicas within that)."""

    def __init__(
        self,
        storage: Storage,
        *,
        admin_token_hashes: Mapping[str, str],
        cache_seconds: float = 2.0,
        bind_client_certificates: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._storage = storage
        # With mutual TLS, a terminal's credential only counts on a connection whose client
        # certificate names that terminal: a stolen token is useless without the till's key.
        self._bind_certificates = bind_client_certificates
        self._admins = dict(admin_token_hashes)  # token hash -> admin name
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    @property
    def binds_client_certificates(self) -> bool:
        """Whether `terminal` checks the connection's client certificate (else callers need
        not look it up)."""
        return self._bind_certificates

    def authenticate(self, authorization: str | None) -> Caller:
        token = _bearer(authorization)
        digest = hash_token(token)
        for admin_hash, name in self._admins.items():
            if hmac.compare_digest(admin_hash, digest):
                return Caller(admin_name=name)
        terminal_id = self._terminal_for(digest)
        if terminal_id is None:
            raise Unauthenticated("unknown or revoked credential")
        return Caller(terminal_id=terminal_id)

    def terminal(
        self, authorization: str | None, *, certificate_names: Sequence[str] = ()
    ) -> Caller:
        """The calling terminal. `certificate_names`: the common names of the verified client
        certificate of the connection (mutual TLS), checked when certificates are bound."""
        caller = self.authenticate(authorization)
        if caller.is_admin:
            raise PermissionDenied("terminal calls need a terminal credential")
        if self._bind_certificates and caller.terminal_id not in certificate_names:
            raise Unauthenticated(
                "the client certificate does not belong to the terminal of this credential"
            )
        return caller

    def admin(self, authorization: str | None) -> Caller:
        caller = self.authenticate(authorization)
        if not caller.is_admin:
            raise PermissionDenied("back-office calls need an admin credential")
        return caller

    def forget(self) -> None:
        """Drop cached lookups (after a credential rotation in this process)."""
        with self._lock:
            self._cache.clear()

    def _terminal_for(self, digest: str) -> str | None:
        now = self._monotonic()
        with self._lock:
            hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        terminal = run_in_transaction(
            self._storage, lambda uow: uow.terminals.get_by_token_hash(digest), write=False
        )
        terminal_id = terminal.terminal_id if terminal is not None else None
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + self._cache_seconds, terminal_id)
        return terminal_id


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing credential: send 'authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed credential: expected 'Bearer <token>'")
    return token.strip()
