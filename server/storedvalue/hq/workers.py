"""`storedvalue serve --processes N`: N worker processes, each a whole HQ, on one port.

One HQ process is bound by its event loop's thread (the GIL): on a machine with several
cores it leaves most of them idle. N worker processes on the one database each serve the
same address with SO_REUSEPORT, and the kernel spreads new connections over them (a
connection stays with the worker that accepted it). Everything a process counts or caps
(the watchers, the unknown-card limit per till, the streams) is then per worker, as it is
per replica on PostgreSQL.

The process the user started is the supervisor. It does what must happen once: the
addresses were checked as the configuration was read (as for one process), just before the
admin token file was made; the TLS files are checked (a wrong one stops HQ before it
touches the database, as with one process), the addresses held, the schema migrated; then
it starts the workers and announces them once they all serve. Workers are started with
multiprocessing's spawn (a fresh interpreter: gRPC is not fork-safe), not fork.

Sharing a port must not become sharing it with a stranger: SO_REUSEPORT lets any process
of the same user bind the port too. So before any worker starts, the supervisor binds the
address itself WITHOUT SO_REUSEPORT, which fails while anyone listens there (another HQ, of
one process or many), and then holds it with a bound, not listening, SO_REUSEPORT socket
until the workers listen (storedvalue.hq.addresses): a second `serve` checking meanwhile
finds it taken. Port 0: the first worker binds whatever port the system gives it and tells
the supervisor, and the others then bind that one.

Signals: SIGTERM or SIGINT is passed on to every worker as SIGTERM (each drains as one HQ
does) and the supervisor exits 0 once all of them exited 0; SIGHUP is passed on (every
worker reloads its TLS files). A worker that fails (exits non-zero: a crash, killed) stops
the others and the supervisor exits 1: a service manager restarts the whole, as it would
one HQ process. A worker that stopped cleanly was signalled itself (a service manager or a
terminal signals the whole process group): the others are stopped too, and all is well. A
supervisor killed outright (SIGKILL) takes its workers with it: each asked the kernel to
kill it when its parent dies (Linux's PR_SET_PDEATHSIG; elsewhere a thread watches the
parent), so nothing is left serving or holding the port and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TextIO

from storedvalue.hq.addresses import hold_addresses
from storedvalue.hq.config import ConfigError, HQConfig, split_listen_address
from storedvalue.hq.event_loops import loop_factory
from storedvalue.hq.process import (
    Announcement,
    announcement_of,
    print_announcement,
    serve_until_stopped,
    tune_garbage_collector,
)
from storedvalue.hq.server import HQApplication
from storedvalue.hq.storage import upgrade_to_head
from storedvalue.hq.structured_logging import configure_logging
from storedvalue.hq.tls import load_certificates
from storedvalue.hq.worker_entry import worker_main

log = logging.getLogger(__name__)

STOP_MARGIN_SECONDS = 30.0
"""Past the grace period, how long workers asked to stop get before they are killed."""

_PR_SET_PDEATHSIG = 1


class _Exit(Exception):
    """How the supervisor ends early: the exit code and what to say on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    reports: Connection | None
    """What the worker tells the supervisor; None once it closed."""
    serving: Announcement | None = None
    failure: str | None = None
    failure_code: int = 1
    exit_code: int | None = None


def supervise(config: HQConfig, printed: TextIO) -> int:
    """Run `config.processes` HQ worker processes on `config.listen` until SIGTERM or
    SIGINT (or until one of them exits on its own). Returns the exit code; a configuration
    HQ cannot serve with (a bad certificate file, a taken address) raises ConfigError."""
    if config.uses_tls:  # the files first, as one HQ process reads them
        load_certificates(config)
    held = hold_addresses(config.listen, config.health_listen)
    try:
        upgrade_to_head(config.database_url)
        supervisor = _Supervisor(config, printed, held)
        try:
            return supervisor.run()
        except _Exit as ended:
            print(f"storedvalue serve: {ended}", file=sys.stderr)
            return ended.code
    finally:
        for sock in held:
            sock.close()


# -- the address -------------------------------------------------------------------------------


def _with_port(listen: str, port: int) -> str:
    host, _, _ = listen.rpartition(":")
    return f"{host}:{port}"


# -- the supervisor ----------------------------------------------------------------------------


class _Supervisor:
    def __init__(self, config: HQConfig, printed: TextIO, held: list[socket.socket]) -> None:
        self._config = config
        self._printed = printed
        self._held = held
        self._spawn = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._stopping = False
        self._stop_deadline: float | None = None
        self._failure: _Exit | None = None
        self._announced = False
        _, port = split_listen_address(config.listen)
        health_port = (split_listen_address(config.health_listen)[1]
                       if config.health_listen is not None else None)
        # Port 0 (either of them): the first worker alone, then the others on its ports.
        self._first_alone = port == 0 or health_port == 0

    def run(self) -> int:
        wake_reader, wake_writer = socket.socketpair()
        wake_reader.setblocking(False)
        wake_writer.setblocking(False)
        # The signals arrive as bytes on `wake_reader` (their numbers), beside the workers'
        # reports and exits; the handlers themselves only keep the default actions away.
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, _noted) for sig in signals}
        previous_wakeup = signal.set_wakeup_fd(wake_writer.fileno())
        try:
            self._start(range(1 if self._first_alone else self._config.processes),
                        self._config)
            return self._supervise(wake_reader)
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            wake_reader.close()
            wake_writer.close()
            self._kill_leftovers()

    def _start(self, indexes: Sequence[int], config: HQConfig) -> None:
        for index in indexes:
            reports, sent = self._spawn.Pipe(duplex=False)
            process = self._spawn.Process(
                target=worker_main, args=(index, config, sent, os.getpid()),
                name=f"storedvalue-hq-worker-{index}",
            )
            process.start()
            sent.close()
            self._workers.append(_Worker(index, process, reports))
            log.info("worker process started", extra={"worker": index, "pid": process.pid})

    def _supervise(self, wake: socket.socket) -> int:
        while any(worker.exit_code is None for worker in self._workers):
            waiting: list[object] = [wake]
            waiting += [worker.reports for worker in self._workers if worker.reports is not None]
            waiting += [worker.process.sentinel for worker in self._workers
                        if worker.exit_code is None]
            timeout = None
            if self._stop_deadline is not None:
                timeout = max(0.0, self._stop_deadline - time.monotonic())
            ready = wait(waiting, timeout)  # type: ignore[arg-type]
            if not ready and self._stop_deadline is not None:
                self._kill_leftovers()
                continue
            if wake in ready:
                self._signalled(wake)
            for worker in list(self._workers):
                if worker.reports is not None and worker.reports in ready:
                    self._report(worker)
                if worker.exit_code is None and worker.process.sentinel in ready:
                    self._exited(worker)
        if self._failure is not None:
            raise self._failure
        unclean = [worker for worker in self._workers if not _clean_exit(worker)]
        for worker in unclean:
            log.error("worker process ended badly",
                      extra={"worker": worker.index, "pid": worker.process.pid,
                             "exit_code": worker.exit_code})
        log.info("stopped")
        return 1 if unclean else 0

    def _signalled(self, wake: socket.socket) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in wake.recv(256):
                if signum == signal.SIGHUP:
                    self._forward_reload()
                elif signum in (signal.SIGTERM, signal.SIGINT):
                    if not self._stopping:
                        log.info("stop requested",
                                 extra={"signal": signal.Signals(signum).name})
                    self._stop()

    def _forward_reload(self) -> None:
        """SIGHUP to every worker serving (one still starting reads the current files)."""
        serving = [worker for worker in self._workers
                   if worker.serving is not None and worker.exit_code is None]
        log.info("SIGHUP passed on to the workers", extra={"workers": len(serving)})
        for worker in serving:
            _send(worker, signal.SIGHUP)

    def _report(self, worker: _Worker) -> None:
        assert worker.reports is not None
        try:
            report = worker.reports.recv()
        except (EOFError, OSError):  # it exited (or is exiting): its sentinel says how
            worker.reports.close()
            worker.reports = None
            return
        if isinstance(report, Announcement):
            worker.serving = report
            self._serving(worker)
        else:
            worker.failure, worker.failure_code = report

    def _serving(self, worker: _Worker) -> None:
        if self._stopping:
            return
        if self._first_alone and worker.index == 0:
            served = worker.serving
            assert served is not None
            config = self._config
            config = dataclasses.replace(
                config,
                listen=_with_port(config.listen, served.port),
                health_listen=(None if config.health_listen is None or served.health_port is None
                               else _with_port(config.health_listen, served.health_port)),
            )
            self._start(range(1, self._config.processes), config)
        if len(self._workers) == self._config.processes and all(
            other.serving is not None for other in self._workers
        ):
            self._announce()

    def _announce(self) -> None:
        for sock in self._held:  # the workers listen there now
            sock.close()
        self._held.clear()
        pids = [worker.process.pid for worker in self._workers]
        first = self._workers[0].serving
        assert first is not None
        print_announcement(
            self._config, first, self._printed,
            more=[f"worker processes: {len(pids)}, sharing the port "
                  f"(pids {', '.join(str(pid) for pid in pids)})"],
            worker_pids=",".join(str(pid) for pid in pids),
        )
        self._announced = True

    def _exited(self, worker: _Worker) -> None:
        worker.process.join()
        worker.exit_code = worker.process.exitcode
        if worker.reports is not None:
            # A last report may still be in the pipe (the failure it died of).
            with contextlib.suppress(EOFError, OSError):
                while worker.reports.poll():
                    report = worker.reports.recv()
                    if not isinstance(report, Announcement):
                        worker.failure, worker.failure_code = report
            worker.reports.close()
            worker.reports = None
        if self._stopping:
            log.info("worker process exited",
                     extra={"worker": worker.index, "pid": worker.process.pid,
                            "exit_code": worker.exit_code})
            return
        if worker.exit_code == 0 and worker.failure is None:
            # Stopped cleanly, so signalled directly: a service manager or a terminal's
            # Ctrl-C signals every process of the group, and this one was the quickest.
            log.info("worker process stopped: stopping the others",
                     extra={"worker": worker.index, "pid": worker.process.pid})
            self._stop()
            return
        how = worker.failure or f"exit code {worker.exit_code}"
        if not self._announced:
            message = (f"HQ worker process {worker.index} (pid {worker.process.pid}) failed to "
                       f"start: {how}")
            code = worker.failure_code if worker.failure is not None else 1
        else:
            message = (f"HQ worker process {worker.index} (pid {worker.process.pid}) exited "
                       f"on its own ({how}): stopping the others")
            code = 1
        log.error(message, extra={"worker": worker.index, "pid": worker.process.pid,
                                  "exit_code": worker.exit_code})
        self._failure = _Exit(code, message)
        self._stop()

    def _stop(self) -> None:
        """SIGTERM to every worker still running (each drains as one HQ does)."""
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = (time.monotonic() + self._config.grace_period_seconds
                                   + STOP_MARGIN_SECONDS)
        for worker in self._workers:
            if worker.exit_code is None:
                _send(worker, signal.SIGTERM)

    def _kill_leftovers(self) -> None:
        """Workers past the stop deadline, or outliving the supervisor's own failure."""
        for worker in self._workers:
            if worker.exit_code is None and worker.process.is_alive():
                log.error("worker process killed: it did not stop in time",
                          extra={"worker": worker.index, "pid": worker.process.pid})
                worker.process.kill()
                worker.process.join()
                worker.exit_code = worker.process.exitcode
        self._stop_deadline = None


def _noted(_signum: int, _frame: object) -> None:
    """Signals are read from the wakeup socket; this handler only replaces the default
    actions (SIGHUP's and SIGTERM's would end the supervisor)."""


def _send(worker: _Worker, signum: signal.Signals) -> None:
    pid = worker.process.pid
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _clean_exit(worker: _Worker) -> bool:
    """Exit code 0, or killed by the SIGTERM the supervisor sent before the worker had set
    its own handlers (it was stopped while starting)."""
    if worker.exit_code == 0:
        return True
    return worker.serving is None and worker.exit_code == -signal.SIGTERM


# -- a worker ----------------------------------------------------------------------------------


def run_worker(index: int, config: HQConfig, reports: Connection, supervisor: int) -> None:
    """A worker process: one HQ, as `storedvalue serve` runs it, that tells the supervisor
    when it serves (or why it could not). Started through storedvalue.hq.worker_entry."""
    _die_with(supervisor)
    configure_logging(log_format=config.log_format, fields={"worker": index, "pid": os.getpid()})
    tune_garbage_collector()

    def serving(app: HQApplication) -> None:
        reports.send(announcement_of(app))

    try:
        with asyncio.Runner(loop_factory=loop_factory(config.event_loop)) as runner:
            code = runner.run(serve_until_stopped(config, serving))
    except ConfigError as error:  # a certificate file found wrong as it started
        log.error("HQ worker cannot start: %s", error)
        _tell(reports, (str(error), 2))
        sys.exit(2)
    except Exception as error:
        log.exception("HQ worker failed")
        _tell(reports, (f"{type(error).__name__}: {error}", 1))
        sys.exit(1)
    sys.exit(code)


def _tell(reports: Connection, failure: tuple[str, int]) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: nobody to tell
        reports.send(failure)


def _die_with(supervisor: int) -> None:
    """End this worker when the supervisor dies, however it dies: never a worker left
    serving, holding the port and the database, after the supervisor was killed."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The supervisor may have died before the request above: this process was then
    # adopted by another.
    if os.getppid() != supervisor:
        os._exit(1)
    if sys.platform != "linux":
        threading.Thread(target=_watch_parent, args=(supervisor,), daemon=True,
                         name="hq-supervisor-watch").start()


def _watch_parent(supervisor: int) -> None:
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)
