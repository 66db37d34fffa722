"""`storedvalue serve`: HQ as a process, on an event loop in the main thread.

SIGTERM and SIGINT drain in-flight calls and exit 0. SIGHUP reloads the TLS files (new
connections get the new certificates) and never ends the process. With `--processes N`
(N > 1) this process supervises N workers that each run `serve_until_stopped`
(storedvalue.hq.workers); the lines printed are the same, once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from storedvalue.hq.config import HQConfig, redacted_url, split_listen_address
from storedvalue.hq.domain.moments import rfc3339
from storedvalue.hq.event_loops import loop_factory
from storedvalue.hq.server import HQApplication
from storedvalue.hq.structured_logging import configure_logging

log = logging.getLogger(__name__)


# The cyclic garbage collector's young generation: collected after this many more container
# objects allocated than freed (Python's default: 700). A batch of 500 offline transactions
# allocates some fifteen per transaction, all alive until the batch is answered: at 700 the
# collector ran ten times a batch, moving them on to older generations to traverse them
# again, for nothing (HQ frees nearly everything by reference count): 13K instructions per
# synced transaction, 4% of HQ's CPU (bench/hq_sync_cpu.py under callgrind). At 10,000 it
# runs about once a batch; garbage in cycles waits a little longer.
YOUNG_GENERATION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """HQ's process setting for the cyclic garbage collector (the older generations keep
    Python's defaults)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, older, oldest)


def serve(config: HQConfig, *, out: TextIO | None = None) -> int:
    """Run HQ until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code;
    a configuration HQ cannot serve with (a bad certificate file) raises ConfigError.
    With `config.processes` above 1 this process supervises that many workers, each a whole
    HQ on the same port (storedvalue.hq.workers)."""
    configure_logging(log_format=config.log_format)
    printed = out or sys.stdout
    if config.processes > 1:
        from storedvalue.hq.workers import supervise

        return supervise(config, printed)
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        return runner.run(serve_until_stopped(
            config, lambda app: print_announcement(config, announcement_of(app), printed)))


async def serve_until_stopped(config: HQConfig,
                              on_serving: Callable[[HQApplication], None]) -> int:
    """HQ on this event loop from open to a drained stop (SIGTERM or SIGINT); `on_serving`
    is told once it serves. Returns the exit code (0)."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    app: HQApplication | None = None

    def request_stop(signum: int) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    def request_reload() -> None:
        if app is None:  # still starting: the files being read now are the current ones
            log.info("SIGHUP while starting: nothing to reload yet")
        else:
            app.reload_certificates("SIGHUP")

    # From the very start: SIGHUP's default action would end the process.
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, request_reload)
    try:
        app = await HQApplication.open(config)
        await app.start()
        on_serving(app)
        await stop_requested.wait()
        grace = config.grace_period_seconds
        log.info("draining", extra={"grace_period_seconds": grace})
        await app.stop(grace)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


@dataclass(frozen=True)
class Announcement:
    """What a serving HQ tells whoever started it (a worker tells its supervisor, which
    prints it once for all of them)."""

    port: int
    health_port: int | None
    certificate_subject: str | None
    certificate_not_after: datetime | None
    warnings: tuple[str, ...]
    event_loop: str


def announcement_of(app: HQApplication) -> Announcement:
    served = app.certificates.current if app.certificates is not None else None
    return Announcement(
        port=app.port,
        health_port=app.health_port,
        certificate_subject=None if served is None else served.subject,
        certificate_not_after=None if served is None else served.not_after,
        warnings=() if served is None else tuple(served.warnings),
        event_loop=type(asyncio.get_running_loop()).__module__,
    )


def listen_address(config: HQConfig, port: int) -> str:
    """HOST:PORT as HQ prints it: the configured host with the port actually bound."""
    host, _ = split_listen_address(config.listen)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def print_announcement(config: HQConfig, served: Announcement, printed: TextIO,
                       more: Sequence[str] = (), **logged: Any) -> None:
    """Where HQ listens, with what, and what needs attention, on stdout and in the log
    (`more`: lines printed after these; `logged`: more fields of the log entry)."""
    address = listen_address(config, served.port)
    database = redacted_url(config.database_url)
    token_source = (
        str(config.admin_token_file) if config.admin_token_file else "STOREDVALUE_ADMIN_TOKEN"
    )
    transport = "plaintext"
    if config.uses_mutual_tls:
        transport = f"mutual TLS, client certificates from {config.tls_client_ca_file}"
    elif config.uses_tls:
        transport = "TLS"
    lines = [f"storedvalue HQ listening on {address} ({transport})",
             f"database: {database}",
             f"admin token: {token_source}"]
    if served.certificate_not_after is not None:
        lines.append(f"TLS certificate: {served.certificate_subject}, valid until "
                     f"{rfc3339(served.certificate_not_after)} (SIGHUP or a change of the files "
                     "reloads it)")
    if config.uses_mutual_tls:
        lines.append(f"back office: admin token and a client certificate with "
                     f"{config.admin_certificate_rule()}")
    if served.health_port is not None:
        health_host, _ = split_listen_address(config.health_listen or "")
        lines.append(f"health (plaintext, health service only): {health_host}:"
                     f"{served.health_port}")
    lines.extend(more)
    for line in lines:
        print(line, file=printed)
    for warning in served.warnings:  # logged as HQ started; here for whoever reads the console
        print(f"warning: {warning}", file=printed)
    printed.flush()
    log.info("serving", extra={"listen": address, "database": database,
                               "admin_token_source": token_source,
                               "event_loop": served.event_loop, **logged})
