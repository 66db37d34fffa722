"""`storedvalue serve`: HQ as a process, on an event loop in the main thread.

SIGTERM and SIGINT drain in-flight calls and exit 0. SIGHUP reloads the TLS files (new
connections get the new certificates) and never ends the process.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from typing import TextIO

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
    a configuration HQ cannot serve with (a bad certificate file) raises ConfigError."""
    configure_logging(log_format=config.log_format)
    tune_garbage_collector()
    with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
        return runner.run(_serve(config, out or sys.stdout))


async def _serve(config: HQConfig, printed: TextIO) -> int:
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
        _announce(app, printed)
        await stop_requested.wait()
        grace = config.grace_period_seconds
        log.info("draining", extra={"grace_period_seconds": grace})
        await app.stop(grace)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0


def _announce(app: HQApplication, printed: TextIO) -> None:
    """Where HQ listens, with what, and what needs attention, on stdout and in the log."""
    config = app.config
    host, _ = split_listen_address(config.listen)
    address = f"[{host}]:{app.port}" if ":" in host else f"{host}:{app.port}"
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
    warnings: tuple[str, ...] = ()
    if app.certificates is not None:
        served = app.certificates.current
        lines.append(f"TLS certificate: {served.subject}, valid until "
                     f"{rfc3339(served.not_after)} (SIGHUP or a change of the files "
                     "reloads it)")
        warnings = served.warnings
    if config.uses_mutual_tls:
        lines.append(f"back office: admin token and a client certificate with "
                     f"{config.admin_certificate_rule()}")
    if app.health_port is not None:
        health_host, _ = split_listen_address(config.health_listen or "")
        lines.append(f"health (plaintext, health service only): {health_host}:{app.health_port}")
    for line in lines:
        print(line, file=printed)
    for warning in warnings:  # logged as HQ started; here for whoever reads the console
        print(f"warning: {warning}", file=printed)
    printed.flush()
    log.info("serving", extra={"listen": address, "database": database,
                               "admin_token_source": token_source,
                               "event_loop": type(asyncio.get_running_loop()).__module__})
