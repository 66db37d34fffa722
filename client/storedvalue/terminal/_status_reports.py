"""The terminal's reports to HQ (ReportTerminalStatus): its link history and what its outbox
still holds, so the back office sees each till's exposure and outages.

A report goes when the terminal reaches HQ (on start and on every return online), after each
sync run, and every ``status_report_interval_s`` while online: that one doubles as the
heartbeat that catches a link that died silently while the till was idle (the report fails,
the terminal goes OFFLINE) and keeps the last answer from HQ fresh on disk.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._errors import TerminalError
from ._hq_client import HQClient
from ._hq_records import StatusReport
from ._outbox import Outbox
from ._parameters import ParametersCache

_log = logging.getLogger(__name__)


class StatusReporter:
    def __init__(
        self,
        *,
        hq: HQClient,
        connectivity: Connectivity,
        outbox: Outbox,
        parameters: ParametersCache,
        config: TerminalConfig,
    ) -> None:
        self._hq = hq
        self._connectivity = connectivity
        self._outbox = outbox
        self._parameters = parameters
        self._interval = config.status_report_interval_s
        self._mutex = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="storedvalue-terminal-reports", daemon=True
        )

    def start(self) -> None:
        if self._interval > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._connectivity.wake()
        if self._thread.is_alive():
            self._thread.join()

    def current(self) -> StatusReport:
        """The report as it would be sent now."""
        interval = self._interval
        return StatusReport(
            reported_at=datetime.now(UTC),
            link_history=self._connectivity.history.changes(),
            outbox_transactions=len(self._outbox),
            unsynced_amounts=self._outbox.unsynced(),
            oldest_completed_at=self._outbox.oldest_completed_at(),
            last_sequence_number=self._outbox.last_sequence_number(),
            parameters_version=self._parameters.current.version,
            # Two periods: one missed report does not make HQ show the till offline.
            next_report_within=timedelta(seconds=2 * interval) if interval > 0 else None,
        )

    def report_now(self) -> bool:
        """Send a report if ONLINE; False when it could not be sent (a transient failure
        also switches the terminal OFFLINE, as any call does)."""
        if not self._connectivity.online:
            return False
        with self._mutex:  # one report at a time: HQ keeps the newest anyway
            try:
                self._hq.report_status(self.current())
            except TerminalError as failure:
                _log.warning("status report not sent: %s", failure)
                return False
        self._connectivity.history.persist()
        return True

    def _loop(self) -> None:
        while self._connectivity.wait_online(self._stopping):
            if self._stopping.wait(self._interval):
                return
            self.report_now()
