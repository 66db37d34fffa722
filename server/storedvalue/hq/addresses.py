"""Whether HQ can listen where it was told to, asked of the kernel before anything starts.

gRPC says only "Failed to bind to address ..." (a RuntimeError, after the database was
migrated and the admin token file written) when an address is taken, is not one of this
machine's, or names an unknown host. So `storedvalue serve` binds the addresses itself
first, as gRPC will (SO_REUSEADDR, each address the host resolves to), and turns what the
kernel answers into a ConfigError a person can act on (exit code 2, no traceback):

- one process checks them and lets them go at once (gRPC binds them without SO_REUSEPORT
  moments later, so a process that took one meanwhile still makes HQ fail: `bind_failure`
  then asks the kernel why, with the same words);
- the supervisor of `--processes N` also holds them (storedvalue.hq.workers) until its
  workers listen there with SO_REUSEPORT: a second `serve` checking meanwhile finds them
  taken.

A taken address is tried again for a few seconds first: the HQ killed a moment ago (and
restarted on its address by a service manager) may still be exiting.
"""

from __future__ import annotations

import errno
import socket
import time

from storedvalue.hq.config import ConfigError, split_listen_address

ADDRESS_WAIT_SECONDS = 3.0
"""How long a taken address is waited for before HQ gives up: the processes of an HQ killed
a moment ago may still be exiting."""

_UNAVAILABLE = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def check_addresses(listen: str, health_listen: str | None) -> None:
    """ConfigError unless HQ can listen on both addresses (the health one when given)."""
    for sock in hold_addresses(listen, health_listen, hold=False):
        sock.close()


def hold_addresses(listen: str, health_listen: str | None, *, hold: bool = True
                   ) -> list[socket.socket]:
    """Check that HQ can listen on the addresses (the main one, the health one) and, with
    `hold`, keep them from other processes: bound sockets with SO_REUSEPORT, not listening,
    which processes binding with SO_REUSEPORT too (HQ's workers) may share. Port 0 is
    never taken (any free port) and is not held; its host is checked."""
    held: list[socket.socket] = []
    try:
        for address, what in ((listen, ""), (health_listen, " (--health-listen)")):
            if address is not None:
                held += _hold(address, what, hold=hold)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


def bind_failure(listen: str, what: str, detail: str) -> ConfigError:
    """What to say when gRPC could not bind `listen` (`what`: which address it is;
    `detail`: what gRPC said): the kernel is asked again, the answer in the same words as
    the check's."""
    try:
        for sock in _check_and_hold(*split_listen_address(listen), hold=False):
            sock.close()
    except OSError as error:
        return refusal(listen, what, error)
    return ConfigError(f"cannot listen on {listen}{what}: {detail}")


def refusal(listen: str, what: str, error: OSError) -> ConfigError:
    """The kernel's refusal of an address, for a person."""
    if isinstance(error, socket.gaierror):
        host, _ = split_listen_address(listen)
        return ConfigError(f"cannot listen on {listen}{what}: unknown host {host!r} "
                           f"({error.strerror})")
    if error.errno == errno.EADDRINUSE:
        return ConfigError(f"{listen}{what} is already in use by another process (another "
                           "HQ?): stop it or give another address")
    if error.errno in _UNAVAILABLE:
        return ConfigError(f"cannot listen on {listen}{what}: not an address of this machine "
                           f"({error.strerror})")
    return ConfigError(f"cannot listen on {listen}{what}: {error.strerror}")


def _hold(listen: str, what: str, *, hold: bool) -> list[socket.socket]:
    host, port = split_listen_address(listen)
    deadline = time.monotonic() + ADDRESS_WAIT_SECONDS
    while True:
        try:
            return _check_and_hold(host, port, hold=hold and port != 0)
        except OSError as error:
            if error.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise refusal(listen, what, error) from None
        # A kernel resource to poll, no event to wait on: the sockets of processes still
        # exiting close when they are gone.
        time.sleep(0.1)


def _check_and_hold(host: str, port: int, *, hold: bool) -> list[socket.socket]:
    """Each of the host's addresses (localhost: IPv4 and IPv6, as gRPC binds them) bound
    first without SO_REUSEPORT (EADDRINUSE while anyone listens there), then, with `hold`,
    held with it. An address of the host this machine does not have (no IPv6) is skipped,
    as gRPC skips it; none at all is an error (OSError, as the kernel said it)."""
    addresses = {
        (family, sockaddr[:2])
        for family, _type, _proto, _name, sockaddr in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        if family in (socket.AF_INET, socket.AF_INET6)
    }
    held: list[socket.socket] = []
    unavailable: OSError | None = None
    bound = 0
    try:
        for family, sockaddr in sorted(addresses, key=str):
            with socket.socket(family, socket.SOCK_STREAM) as check:
                # SO_REUSEADDR as gRPC sets it: connections of an earlier HQ in TIME_WAIT do
                # not count, a listening socket does.
                check.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    check.bind(sockaddr)
                except OSError as error:
                    if error.errno in _UNAVAILABLE:
                        unavailable = error
                        continue
                    raise
            bound += 1
            if hold:
                sock = socket.socket(family, socket.SOCK_STREAM)
                held.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(sockaddr)
        if bound == 0 and unavailable is not None:
            raise unavailable
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held
