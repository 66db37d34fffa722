"""Who is calling: a terminal (by its bearer credential) or a back-office admin."""

from __future__ import annotations

import enum
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from storedvalue.hq.domain.errors import PermissionDenied, Unauthenticated
from storedvalue.hq.domain.terminals import hash_token
from storedvalue.hq.services.transactions import Transactions


class Role(enum.Enum):
    """Who may call an RPC."""

    TERMINAL = "terminal"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated identity of a call; never taken from a request field."""

    terminal_id: str = ""
    admin_name: str = ""
    store_id: str = ""  # the terminal's store, as of the credential lookup
    request_scope: str = field(init=False, repr=False, compare=False)
    """The namespace of this caller's request ids (made once: the authenticator remembers
    its callers, and every mutating call reads it; a property cost 0.8K instructions a
    call, callgrind)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_scope",
                           f"admin:{self.admin_name}" if self.admin_name else self.terminal_id)

    @property
    def is_admin(self) -> bool:
        return bool(self.admin_name)


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """The verified client certificate of a call's connection (mutual TLS)."""

    common_names: tuple[str, ...]
    admin: bool = False
    """Whether it is one of the back office's certificates (told by the transport)."""


class Authenticator:
    """Resolves bearer tokens. Terminal lookups are cached for `cache_seconds` (a rotated
    credential stops working on this replica at once, on other replicas within that).
    Used from the event loop's thread only."""

    def __init__(
        self,
        transactions: Transactions,
        *,
        admin_token_hashes: Mapping[str, str],
        cache_seconds: float = 2.0,
        admin_certificate_rule: str = "",
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transactions = transactions
        self._admin_certificate_rule = admin_certificate_rule
        self._admins = dict(admin_token_hashes)  # token hash -> admin name
        self._cache_seconds = cache_seconds
        self._monotonic = monotonic
        # By the `authorization` value as the call carried it: a remembered credential is
        # found without hashing the token again (entries live `cache_seconds`).
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def authenticate(self, authorization: str | None, role: Role) -> Caller:
        """The caller behind `authorization` (the metadata value), allowed to act as
        `role`; else Unauthenticated or PermissionDenied."""
        return self.remembered(authorization, role) or _allowed(
            await self._look_up(authorization), role
        )

    def remembered(self, authorization: str | None, role: Role) -> Caller | None:
        """`authenticate` without the database: the caller if this credential was looked up
        lately, None if it must be looked up (a refusal raises as `authenticate` does)."""
        hit = self._cache.get(authorization) if authorization else None
        if hit is None or hit[0] <= self._monotonic():
            _bearer(authorization)  # a missing or malformed credential: refused right here
            return None
        return _allowed(hit[1], role)

    def check_certificate(self, caller: Caller, certificate: ClientCertificate) -> None:
        """Mutual TLS binds credentials to certificates: a terminal's credential only counts
        on a connection whose client certificate names that terminal (a stolen token is
        useless without the till's key), and the admin credential only on a connection with
        an admin certificate (a till's certificate with a leaked admin token gets nowhere in
        the back office)."""
        if caller.is_admin:
            if not certificate.admin:
                raise PermissionDenied(
                    "back-office calls under mutual TLS need an admin client certificate "
                    f"({self._admin_certificate_rule}); this connection's certificate is "
                    f"{_described(certificate.common_names)}"
                )
        elif caller.terminal_id not in certificate.common_names:
            raise Unauthenticated(
                f"the client certificate ({_described(certificate.common_names)}) does not "
                f"belong to terminal {caller.terminal_id} of this credential: a till's "
                "certificate has its terminal id as common name"
            )

    def forget(self) -> None:
        """Drop cached lookups (after a credential rotation, a revocation or a move to
        another store)."""
        self._cache.clear()

    async def _look_up(self, authorization: str | None) -> Caller | None:
        digest = hash_token(_bearer(authorization))
        caller = self._admin(digest) or await self._terminal(digest)
        if len(self._cache) > 10_000:
            self._cache.clear()
        assert authorization is not None  # _bearer refused a missing one
        self._cache[authorization] = (self._monotonic() + self._cache_seconds, caller)
        return caller

    def _admin(self, digest: str) -> Caller | None:
        for admin_hash, name in self._admins.items():
            if hmac.compare_digest(admin_hash, digest):
                return Caller(admin_name=name)
        return None

    async def _terminal(self, digest: str) -> Caller | None:
        terminal = await self._transactions.read(
            lambda uow: uow.terminals.get_by_token_hash(digest)
        )
        if terminal is None or terminal.revoked:
            return None
        return Caller(terminal_id=terminal.terminal_id, store_id=terminal.store_id)


def _described(common_names: Sequence[str]) -> str:
    return ", ".join(f"CN={name}" for name in common_names) or "without a common name"


# Module constants: in Python 3.11 `Role.TERMINAL` goes through EnumType.__getattr__'s slot,
# about twenty times the cost of a global, and every call is checked here.
_TERMINAL, _ADMIN = Role.TERMINAL, Role.ADMIN


def _allowed(caller: Caller | None, role: Role) -> Caller:
    if caller is None:
        raise Unauthenticated("unknown or revoked credential")
    if caller.admin_name:  # an admin (`is_admin`, without the property's call)
        if role is _TERMINAL:
            raise PermissionDenied("terminal calls need a terminal credential")
    elif role is _ADMIN:
        raise PermissionDenied("back-office calls need an admin credential")
    return caller


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing credential: send 'authorization: Bearer <token>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("malformed credential: expected 'Bearer <token>'")
    return token.strip()
