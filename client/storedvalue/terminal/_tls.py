"""TLS to HQ from PEM files, and telling a TLS problem apart from HQ being out of reach.

gRPC reports both the same way: UNAVAILABLE, "failed to connect to all addresses". Under TLS
1.3 a client certificate HQ refuses is not even named: HQ closes the connection right after
the handshake ("Socket closed"). So when a connection attempt failed like that, the library
makes one handshake of its own with Python's `ssl` and the same files, which says what is
wrong: HQ refused this client's certificate (missing, expired, from a CA HQ does not trust),
this client does not trust HQ's certificate (its CA, its name, its dates), or one side
speaks TLS and the other does not. A connection that cannot even be opened is a lost link.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from cryptography import x509

from ._errors import HandshakeFailed, TlsProblem

# How gRPC says a call never got a connection (it was not sent), and the last error it saw
# while connecting when that error may be a TLS problem rather than a refused or
# unreachable address.
_NOT_CONNECTED = "failed to connect to all addresses"
_TLS_LIKE = ("Socket closed", "andshake", "SSL", "TSI_", "erification", "certificate",
             "Connection reset", "End of TCP stream")
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """How a client reaches HQ over TLS: PEM files, read when the channel is built and read
    again when they change (a renewed certificate is used from the next connection on)."""

    ca_file: Path | None = None
    """CA certificate(s) that signed HQ's certificate. None: the system's trusted roots."""

    certificate_file: Path | None = None
    """Mutual TLS: this client's certificate (chain). A till's certificate has its terminal
    id as common name; the back office's, an admin name HQ was configured with."""

    key_file: Path | None = None
    """The private key of ``certificate_file`` (unencrypted PEM)."""

    server_name: str = ""
    """The name HQ's certificate carries when it is not the host of the address (connecting
    by IP address to a certificate for a DNS name, for instance). Empty: the host."""

    def __post_init__(self) -> None:
        for name in ("ca_file", "certificate_file", "key_file"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        if (self.certificate_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key, and a key its certificate")

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for f in (self.ca_file, self.certificate_file, self.key_file)
                     if f is not None)

    def ssl_context(self) -> ssl.SSLContext:
        """These files as a Python TLS client context (which checks them: readable, PEM,
        the key matching the certificate); HandshakeFailed (CLIENT_FILES_UNUSABLE) says
        which file is wrong."""
        context = ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
        if self.ca_file is not None:
            _use(lambda: context.load_verify_locations(cafile=str(self.ca_file)),
                 "CA file", self.ca_file)
        certificate, key = self.certificate_file, self.key_file
        if certificate is not None and key is not None:

            def encrypted() -> bytes:  # asked for a password: never prompt on a till
                raise HandshakeFailed(TlsProblem.CLIENT_FILES_UNUSABLE,
                                      f"the key file {key} is encrypted: give it unencrypted "
                                      "(openssl pkey -in KEY -out PLAIN), readable by this "
                                      "client's user only")

            _use(lambda: context.load_cert_chain(str(certificate), str(key), password=encrypted),
                 "client certificate or key file", certificate, key)
        return context

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials from these files, checked first (see ``ssl_context``)."""
        self.ssl_context()
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA file"),
            private_key=_read(self.key_file, "key file"),
            certificate_chain=_read(self.certificate_file, "client certificate file"),
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def signature(self) -> tuple[tuple[int, int, int], ...]:
        """What changes when one of the files is replaced or rewritten."""
        identity = []
        for path in self.files:
            try:
                status = path.stat()
            except OSError:
                identity.append((-1, -1, -1))
            else:
                identity.append((status.st_ino, status.st_size, status.st_mtime_ns))
        return tuple(identity)


def handshake_failure(failure: grpc.RpcError, *, address: str, tls: TlsFiles | None,
                      timeout_s: float) -> HandshakeFailed | None:
    """Why a call failed to connect to HQ at ``address``, when the reason is TLS (checked by
    a handshake of its own, at most ``timeout_s``); None when it is not (HQ is out of reach,
    or the failure was not about connecting)."""
    if not may_be_tls_failure(failure):
        return None
    return diagnose_handshake(address, tls, timeout_s)


def may_be_tls_failure(failure: grpc.RpcError) -> bool:
    """Whether the call failed to get a connection (so it was never sent) in a way a TLS
    problem looks like."""
    code = getattr(failure, "code", None)
    details = getattr(failure, "details", None)
    if not callable(code) or not callable(details) or code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    text = details() or ""
    return _NOT_CONNECTED in text and any(marker in text for marker in _TLS_LIKE)


def diagnose_handshake(address: str, tls: TlsFiles | None, timeout_s: float
                       ) -> HandshakeFailed | None:
    """Connect to ``address`` and handshake as a client with ``tls`` would (plaintext when
    None): what is wrong with TLS there, or None when nothing is (or HQ is out of reach).
    The whole check, connection included, takes at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except (OSError, ValueError):
        return None  # out of reach (or an address this check cannot parse): not TLS
    with sock:
        if tls is None:
            return _plaintext_meets_tls(sock, address, deadline)
        try:
            context = tls.ssl_context()
        except HandshakeFailed as unusable:
            return unusable
        return _handshake(sock, context, tls, host, address, deadline)


# -- the checks -------------------------------------------------------------------------------


def _handshake(sock: socket.socket, context: ssl.SSLContext, tls: TlsFiles, host: str,
               address: str, deadline: float) -> HandshakeFailed | None:
    connection = _Tls(sock, context, server_hostname=tls.server_name or host,
                      deadline=deadline)
    # A TLS server answers every ClientHello (a ServerHello or an alert); a connection reset
    # or closed before any answer is a lost link (a relay or load balancer with nowhere to
    # send it), not a TLS matter.
    try:
        connection.handshake()
        # Once HQ accepted the certificate it sends its HTTP/2 settings at once; under
        # TLS 1.3 a refused certificate gets the connection closed instead.
        answered = connection.read(1)
    except ssl.SSLCertVerificationError as error:
        return _hq_not_trusted(tls, host, address, error.verify_message or str(error))
    except ssl.SSLError as error:
        if error.reason == "WRONG_VERSION_NUMBER":
            return HandshakeFailed(
                TlsProblem.HQ_NOT_TLS,
                f"HQ at {address} answered in plaintext: it serves without TLS (start it with "
                "--tls-cert and --tls-key) or this is not its TLS port; or connect in plaintext "
                "(loopback only)")
        if isinstance(error, ssl.SSLEOFError) and not connection.heard_from_peer:
            return None
        if isinstance(error, ssl.SSLEOFError) or "ALERT" in (error.reason or ""):
            return _client_certificate_refused(tls, address, f"HQ ended the handshake: "
                                               f"{error.reason or error}")
        return HandshakeFailed(TlsProblem.HANDSHAKE_FAILED,
                               f"the TLS handshake with HQ at {address} failed: {error}")
    except (ConnectionResetError, BrokenPipeError):
        if not connection.heard_from_peer:
            return None
        return _client_certificate_refused(tls, address, "HQ reset the connection")
    except OSError:
        return None  # a timeout or a lost link: not a TLS matter
    if answered:
        return None
    return _client_certificate_refused(tls, address, "HQ closed the connection after the "
                                       "handshake")


def _plaintext_meets_tls(sock: socket.socket, address: str, deadline: float
                         ) -> HandshakeFailed | None:
    """A plaintext client whose connections HQ closes: does HQ speak TLS there?"""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE  # only asking whether TLS is spoken at all
    try:
        _Tls(sock, probe, server_hostname=None, deadline=deadline).handshake()
    except (ssl.SSLError, OSError):
        return None
    return HandshakeFailed(
        TlsProblem.HQ_REQUIRES_TLS,
        f"HQ at {address} speaks TLS and this client connects in plaintext: give it the CA "
        "of HQ's certificate (TerminalConfig(tls=TlsFiles(ca_file=...)); the CLIs' --ca-file), "
        "and under mutual TLS its own certificate and key")


class _Tls:
    """A client TLS session over a connected socket through memory buffers. Not
    `ssl.SSLSocket`: `wrap_socket` leaks the SSLSocket it made when the peer has already
    reset the connection (CPython 3.11 raises ECONNRESET from inside it before
    anything can close it), and a reset link is exactly what this check meets. The socket
    stays the caller's to close; socket errors (timeouts, resets) and `ssl` errors pass."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 server_hostname: str | None, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing,
                                     server_hostname=server_hostname)
        self.heard_from_peer = False
        """Whether the peer sent anything at all (a TLS server answers every ClientHello)."""

    def handshake(self) -> None:
        self._until_done(self._tls.do_handshake)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of application data; b"" once the peer closed."""
        try:
            return self._until_done(lambda: self._tls.read(size))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def _until_done(self, step: Callable[[], _T]) -> _T:
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                self._send_pending()
                self._before_waiting()
                received = self._sock.recv(16384)
                if received:
                    self.heard_from_peer = True
                    self._incoming.write(received)
                else:
                    self._incoming.write_eof()
                continue
            self._send_pending()
            return result

    def _send_pending(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._before_waiting()
            self._sock.sendall(pending)

    def _before_waiting(self) -> None:
        """What is left of the check's time is what the next socket operation may take."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the TLS check ran out of time")
        self._sock.settimeout(left)


def _hq_not_trusted(tls: TlsFiles, host: str, address: str, why: str) -> HandshakeFailed:
    ca = f"the CA file {tls.ca_file}" if tls.ca_file else "the system's trusted CAs"
    name = tls.server_name or host
    return HandshakeFailed(
        TlsProblem.HQ_NOT_TRUSTED,
        f"this client does not trust HQ's certificate at {address}: {why}. The certificate "
        f"must be signed by {ca}, name {name} (or give the name it has as server name) and be "
        "valid today; fix this client's CA file or server name, or HQ's certificate")


def _client_certificate_refused(tls: TlsFiles, address: str, seen: str) -> HandshakeFailed:
    if tls.certificate_file is None:
        return HandshakeFailed(
            TlsProblem.CLIENT_CERTIFICATE_REFUSED,
            f"HQ at {address} requires a client certificate (mutual TLS) and this client has "
            "none: give it its certificate and key (TlsFiles certificate_file and key_file; "
            "the CLIs' --client-cert and --client-key)")
    certificate = tls.certificate_file
    why = "HQ does not trust the CA that issued it"
    with contextlib.suppress(OSError, ValueError, IndexError):
        leaf = x509.load_pem_x509_certificates(certificate.read_bytes())[0]
        now = datetime.now(UTC)
        subject = leaf.subject.rfc4514_string()
        if leaf.not_valid_after_utc <= now:
            why = f"it ({subject}) expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
        elif leaf.not_valid_before_utc > now:
            starts = f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
            why = f"it ({subject}) is not valid before {starts} (check this machine's clock)"
        else:
            why = (f"HQ does not trust {leaf.issuer.rfc4514_string()}, the CA that issued it "
                   f"({subject}), or it is not meant for TLS clients")
    return HandshakeFailed(
        TlsProblem.CLIENT_CERTIFICATE_REFUSED,
        f"HQ at {address} refused this client's certificate {certificate} ({seen}): {why}. "
        "Put a certificate and key issued by the CA HQ trusts for clients (its "
        "--tls-client-ca) in their place: they are read again at the next call")


def _use(load: Callable[[], object], what: str, *paths: Path | None) -> None:
    try:
        load()
    except FileNotFoundError as error:
        raise HandshakeFailed(TlsProblem.CLIENT_FILES_UNUSABLE,
                              f"the {what} {error.filename or paths[0]} does not exist") from None
    except (OSError, ssl.SSLError) as error:
        names = " / ".join(str(path) for path in paths if path is not None)
        raise HandshakeFailed(
            TlsProblem.CLIENT_FILES_UNUSABLE,
            f"the {what} {names} cannot be used: {_ssl_reason(error)} (PEM files, the key "
            "unencrypted and matching the certificate)") from None


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise HandshakeFailed(TlsProblem.CLIENT_FILES_UNUSABLE,
                              f"cannot read the {what} {path}: {error.strerror}") from None


def _ssl_reason(error: OSError) -> str:
    reason = cast(str | None, getattr(error, "reason", None))
    if reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    return reason.replace("_", " ").lower() if reason else (error.strerror or str(error))
