"""Who a mutual-TLS connection's client certificate says it is, read from the call's
authentication context: its common names and, for back-office calls only, whether it is an
admin certificate (a configured common name and/or issued by the separate admin CA)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

import grpc
from cryptography import x509

from storedvalue.hq.services.auth import ClientCertificate
from storedvalue.hq.tls import issued_by

_MAX_REMEMBERED = 1_000


class ClientCertificates:
    """Used from the event loop's thread only."""

    def __init__(self, *, admin_names: frozenset[str],
                 admin_issuers: Sequence[x509.Certificate] = ()) -> None:
        self._admin_names = admin_names
        self._admin_issuers = tuple(admin_issuers)
        # A connection presents the same certificate on every call: its verdict is kept by
        # the certificate's PEM, so the signature is checked once, not per call.
        self._issued_by_admin_ca: dict[bytes, bool] = {}

    def use_admin_issuers(self, issuers: Sequence[x509.Certificate]) -> None:
        """After a reload: the admin CA's certificates now."""
        self._admin_issuers = tuple(issuers)
        self._issued_by_admin_ca = {}

    def of(self, context: grpc.aio.ServicerContext[Any, Any], *, admin: bool
           ) -> ClientCertificate:
        """The connection's certificate; `admin`: say whether it is the back office's (only
        back-office calls need to know)."""
        # grpcio returns property name -> iterable of bytes (its type stubs say otherwise).
        properties: Mapping[str, Iterable[bytes]] = cast(Any, context.auth_context()) or {}
        names = tuple(name.decode("utf-8", "replace")
                      for name in properties.get("x509_common_name", ()))
        if not admin:
            return ClientCertificate(names)
        return ClientCertificate(names, admin=self._is_admin(names, properties))

    def _is_admin(self, names: tuple[str, ...], properties: Mapping[str, Iterable[bytes]]
                  ) -> bool:
        if self._admin_names and self._admin_names.isdisjoint(names):
            return False
        if not self._admin_issuers:
            return bool(self._admin_names)
        pem = next(iter(properties.get("x509_pem_cert", ())), None)
        if pem is None:
            return False
        verdict = self._issued_by_admin_ca.get(pem)
        if verdict is None:
            try:
                verdict = issued_by(x509.load_pem_x509_certificate(pem), self._admin_issuers)
            except ValueError:
                verdict = False
            if len(self._issued_by_admin_ca) >= _MAX_REMEMBERED:
                self._issued_by_admin_ca.clear()
            self._issued_by_admin_ca[pem] = verdict
        return verdict
