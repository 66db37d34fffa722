"""Configuration of a terminal, one frozen dataclass passed down to every part."""

from __future__ import annotations

from dataclasses import dataclass

from ._tls import TlsFiles


@dataclass(frozen=True, kw_only=True)
class TerminalConfig:
    """How a terminal talks to HQ and how hard it tries.

    Every duration is in seconds.
    """

    call_timeout_s: float = 0.75
    """Deadline of every unary call to HQ (lock, redeem, balance, ...). It bounds how long a
    cashier waits when the link drops: the first sale after a drop completes offline within
    about this long. At most 1 s by default; raise it only for slow links."""

    sync_call_timeout_s: float = 10.0
    """Deadline of one SyncOfflineBatch call. Longer than ``call_timeout_s`` because a batch of
    hundreds of transactions is applied in one go by HQ."""

    probe_initial_backoff_s: float = 0.05
    """Delay before the second health probe after the link dropped; doubles on each failed
    probe up to ``probe_max_backoff_s``."""

    probe_max_backoff_s: float = 5.0
    """Longest delay between two health probes while OFFLINE."""

    health_service: str = ""
    """Service name asked in the standard gRPC health check (``""`` = the whole server)."""

    sync_batch_size: int = 500
    """Most offline transactions sent in one SyncOfflineBatch. The agent uses the smaller of
    this and HQ's ``SyncLimits.max_transactions_per_batch``, and cuts a batch to fit HQ's
    ``max_message_bytes``."""

    sync_batches_in_flight: int = 2
    """Batches sent to HQ before the first of them is answered, so that HQ reads the next
    batch while it applies one (HQ applies a till's batches in sequence order whatever the
    order they arrive in). 1 sends one batch at a time. Two are in flight only when HQ's
    ``max_sequence_jump`` leaves room for them, and the answers are recorded in order."""

    sync_initial_backoff_s: float = 0.1
    """First delay before resending a batch after a transient failure (UNAVAILABLE,
    DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED); doubles each time, with jitter."""

    sync_max_backoff_s: float = 10.0
    """Cap on the delay between two attempts to send the same batch."""

    sync_max_attempts: int = 5
    """Consecutive transient failures of one batch after which a sync run stops and reports
    the error. The background agent tries again at the next reconnection (or after
    ``sync_max_backoff_s`` while still online)."""

    sync_automatically: bool = True
    """Sync the outbox in the background whenever the terminal (re)connects. When False the
    outbox is only sent by ``Terminal.sync_now()`` (support tools, tests)."""

    watch_parameters: bool = True
    """Follow HQ's WatchParameters stream while online, so a parameter change reaches the
    terminal in about a second. When False the parameters are only read on (re)connection."""

    status_report_interval_s: float = 60.0
    """How often the terminal reports to HQ while online (its link history and what its outbox
    holds, for the back office). The report is also the terminal's heartbeat: a link that died
    while the till was idle is found by it (the terminal goes OFFLINE before a cashier finds
    out), and the time of HQ's last answer, from which the offline duration limit counts, is
    kept fresh on disk. HQ shows a terminal that missed two reports as offline. 0 turns the
    periodic report off (the terminal still reports when it reaches HQ and after a sync)."""

    finished_sale_retention_s: float = 7 * 24 * 3600.0
    """How long a finished sale stays readable through ``Terminal.sale`` once HQ acknowledged
    whatever it queued (a sale is never forgotten before that). A week by default."""

    tls: TlsFiles | None = None
    """TLS to HQ: the CA of HQ's certificate and, under mutual TLS, this till's certificate
    (its terminal id as common name) and key. None: plaintext, which HQ only serves on
    loopback (development). Files that cannot be used make ``Terminal()`` raise
    ``HandshakeFailed``; files replaced later are read again at the next connection."""

    def __post_init__(self) -> None:
        if self.call_timeout_s <= 0:
            raise ValueError("call_timeout_s must be positive")
        if self.sync_batch_size < 1:
            raise ValueError("sync_batch_size must be at least 1")
        if self.sync_batches_in_flight < 1:
            raise ValueError("sync_batches_in_flight must be at least 1")
        if self.finished_sale_retention_s < 0:
            raise ValueError("finished_sale_retention_s must not be negative")
        if self.status_report_interval_s < 0:
            raise ValueError("status_report_interval_s must not be negative")
        if self.sync_max_attempts < 1:
            raise ValueError("sync_max_attempts must be at least 1")
        if not 0 < self.probe_initial_backoff_s <= self.probe_max_backoff_s:
            raise ValueError("need 0 < probe_initial_backoff_s <= probe_max_backoff_s")
        if not 0 < self.sync_initial_backoff_s <= self.sync_max_backoff_s:
            raise ValueError("need 0 < sync_initial_backoff_s <= sync_max_backoff_s")
