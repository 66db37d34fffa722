"""The terminal: what a point-of-sale application builds once and calls for every sale."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from ._checkout import Checkout
from ._config import TerminalConfig
from ._connectivity import Connectivity
from ._database import Database
from ._errors import HandshakeFailed, TerminalError
from ._hq_channel import HQChannel
from ._hq_client import HQClient
from ._link_history import LinkHistory
from ._model import (
    Card,
    CardKind,
    ConnectivityChange,
    ConnectivityState,
    Money,
    OutboxEntry,
    Parameters,
    Sale,
    SaleLine,
    SaleResult,
    SyncLimits,
    SyncProgress,
    SyncReport,
    SyncSummary,
    Tender,
    UnsyncedAmount,
)
from ._outbox import Outbox
from ._parameters import ParametersCache, ParametersFollower
from ._sale_book import SaleBook
from ._sale_state import SaleState
from ._status_reports import StatusReporter
from ._sync import SyncAgent
from ._tenders import Tenders

_log = logging.getLogger(__name__)


class Terminal:
    """One till's link to HQ, its offline switch, its outbox and its sync agent.

    Building it opens (or creates) the terminal's SQLite file in ``data_dir``, probes HQ once
    (so it starts ONLINE when HQ answers) and starts three background threads: the health
    probe, the parameters stream and the sync agent. ``close()`` (or leaving a ``with``
    block) stops them. Methods are thread-safe.

    With ``TerminalConfig.tls``, files that cannot be used (missing, unreadable, a key that
    does not match its certificate) raise ``HandshakeFailed`` here, before anything opens.
    """

    def __init__(
        self,
        *,
        address: str,
        terminal_id: str,
        credential: str,
        data_dir: str | Path,
        config: TerminalConfig | None = None,
    ) -> None:
        self._config = config or TerminalConfig()
        self._terminal_id = terminal_id
        self._closed = False
        # First: TLS files that cannot be used raise HandshakeFailed before anything opens.
        self._channel = HQChannel(address, self._config)
        try:
            self._db = Database(Path(data_dir), terminal_id)
        except BaseException:
            self._channel.close()
            raise
        metadata = (("authorization", f"Bearer {credential}"),)
        self._connectivity = Connectivity(
            channel=self._channel, metadata=metadata, config=self._config,
            history=LinkHistory(self._db),
        )
        self._hq = HQClient(
            channel=self._channel,
            connectivity=self._connectivity,
            metadata=metadata,
            config=self._config,
        )
        self._parameters = ParametersCache(self._db)
        self._follower = ParametersFollower(
            hq=self._hq,
            connectivity=self._connectivity,
            cache=self._parameters,
            config=self._config,
        )
        self._outbox = Outbox(self._db)
        sale_state = SaleState(self._db)
        self._book = SaleBook(
            self._db, retention=timedelta(seconds=self._config.finished_sale_retention_s)
        )
        self._tenders = Tenders(
            hq=self._hq, connectivity=self._connectivity, sale_state=sale_state, book=self._book
        )
        self._sync = SyncAgent(
            hq=self._hq,
            connectivity=self._connectivity,
            outbox=self._outbox,
            book=self._book,
            tenders=self._tenders,
            parameters=self._parameters,
            refresh_parameters=self._follower.refresh,
            config=self._config,
        )
        self._checkout = Checkout(
            hq=self._hq,
            connectivity=self._connectivity,
            sale_state=sale_state,
            book=self._book,
            outbox=self._outbox,
            parameters=self._parameters,
            tenders=self._tenders,
            on_queued=self._sync.trigger,
        )
        self._reporter = StatusReporter(
            hq=self._hq,
            connectivity=self._connectivity,
            outbox=self._outbox,
            parameters=self._parameters,
            config=self._config,
        )
        self._sync.after_run(self._reporter.report_now)
        self._connectivity.add_listener(self._follower.on_connectivity)
        self._connectivity.add_listener(self._on_connectivity)
        try:
            self._sync.start()
            self._connectivity.start()
            self._follower.start()
            self._reporter.start()
        except BaseException:
            self.close()
            raise

    # -- lifecycle and observation ------------------------------------------------------

    def __enter__(self) -> Terminal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background threads and close the channel and the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        follower_done = self._follower.stop(timeout_s=1.0)
        self._reporter.stop()
        self._sync.stop()
        self._connectivity.stop()
        try:
            self._connectivity.history.persist()
        except Exception:
            _log.exception("could not keep the time of HQ's last answer")
        self._channel.close()  # cancels whatever RPC is still in flight
        if not follower_done:
            _log.warning("parameters stream ignored its cancellation; closed with the channel")
            self._follower.join()
        self._db.close()

    @property
    def terminal_id(self) -> str:
        return self._terminal_id

    @property
    def state(self) -> ConnectivityState:
        return self._connectivity.state

    @property
    def handshake_problem(self) -> HandshakeFailed | None:
        """What is wrong with TLS between this terminal and HQ, as the last attempt to reach
        HQ found it (the calls raise it meanwhile); None once a call or probe got through."""
        return self._channel.problem

    @property
    def parameters(self) -> Parameters:
        """The parameters applied now (the last version received, kept on disk)."""
        return self._parameters.current

    @property
    def sync_limits(self) -> SyncLimits | None:
        return self._parameters.sync_limits

    @property
    def last_reached_hq_at(self) -> datetime | None:
        """When HQ last answered this terminal (kept across restarts): the offline duration
        limit counts from it. None if it never did."""
        return self._connectivity.history.last_reached_hq_at

    def link_history(self) -> tuple[ConnectivityChange, ...]:
        """The latest ONLINE/OFFLINE switches (the last 100, kept across restarts), oldest
        first: what the terminal reports to HQ."""
        return self._connectivity.history.changes()

    def unsynced_amounts(self) -> tuple[UnsyncedAmount, ...]:
        """What the outbox holds of offline lines not yet acknowledged by HQ, per tender kind
        and currency: the exposure the offline risk limits bound."""
        return self._outbox.unsynced()

    def on_connectivity_change(
        self, callback: Callable[[ConnectivityChange], None]
    ) -> Callable[[], None]:
        """Call ``callback`` on every ONLINE/OFFLINE switch (from the thread that saw it);
        returns a function that unsubscribes."""
        return self._connectivity.add_listener(callback)

    def on_parameters_change(self, callback: Callable[[Parameters], None]) -> None:
        self._parameters.add_listener(callback)

    def on_sync_progress(self, callback: Callable[[SyncProgress], None]) -> None:
        self._sync.add_progress_listener(callback)

    def wait_for_state(self, state: ConnectivityState, *, timeout_s: float) -> bool:
        return self._connectivity.wait_for(state, timeout_s)

    def wait_for_parameters(self, *, version: int, timeout_s: float) -> bool:
        return self._parameters.wait_for_version(version, timeout_s)

    def wait_for_parameters_matching(
        self, condition: Callable[[Parameters], bool], *, timeout_s: float
    ) -> bool:
        """Wait until the applied parameters satisfy ``condition`` (e.g. a store's override
        arrived); False at the deadline."""
        return self._parameters.wait_for(condition, timeout_s)

    # -- the sale -----------------------------------------------------------------------

    def add_tender(self, *, transaction_id: str, card_number: str) -> Tender:
        """Lock the card at HQ for this sale and remember the lock on disk. Online only:
        a card this terminal could not lock can never be accepted offline.

        When LockCard was sent but no answer came (HQUnavailable with ``request_sent``), HQ
        may hold the lock: the sale keeps a pending tender that ``abandon_sale`` and
        ``remove_tender`` release (or that completing the sale releases), but that can't
        complete offline. Calling again for the same sale and card confirms it. Refused
        (SaleAlreadyCompleted, SaleAbandoned) for a finished sale."""
        return self._tenders.add(transaction_id, card_number)

    def remove_tender(self, *, transaction_id: str, card_number: str) -> bool:
        """Release the card: True when HQ released it now, False when the unlock was queued
        (OFFLINE) and will reach HQ at sync."""
        return self._tenders.remove(transaction_id, card_number)

    def complete_sale(self, *, transaction_id: str, lines: Sequence[SaleLine]) -> SaleResult:
        """Debit every line: online (Redeem), or offline when HQ is out of reach and every
        remaining line may complete offline. Raises OfflineNotAllowed (sale left open,
        nothing lost) otherwise. A refusal names the refused line (``line_id``) and the
        lines already debited (``paid_lines``).

        Safe to call again for the same sale after an error or a crash: lines HQ already
        debited are not sent again, request ids are reused, and once the sale is completed
        the same lines get the same result back. A line whose Redeem was sent without an
        answer and that this call leaves out is reversed (``SaleResult.reversed_lines``)."""
        return self._checkout.complete_sale(transaction_id, lines)

    def abandon_sale(self, *, transaction_id: str) -> None:
        """Release every card the sale locked, and reverse every line HQ debited or may
        have debited (online when HQ answers, else queued for sync). Abandoning again is a
        no-op; a completed sale raises SaleAlreadyCompleted."""
        self._checkout.abandon_sale(transaction_id)

    # -- recovery -----------------------------------------------------------------------

    def sale(self, *, transaction_id: str) -> Sale | None:
        """The sale's durable state (None when this terminal does not know it): status,
        tenders, each line's state, the result of a completed sale, and what HQ made of its
        offline transaction. Finished sales are kept until synced, then for
        ``TerminalConfig.finished_sale_retention_s``."""
        return self._book.sale(transaction_id)

    def open_sales(self) -> tuple[Sale, ...]:
        """Sales neither completed nor abandoned, oldest first: after a restart, finish each
        (``complete_sale`` with its lines) or abandon it."""
        return self._book.open_sales()

    def on_sale_synced(self, callback: Callable[[Sale], None]) -> None:
        """Call ``callback`` with a sale's new state each time HQ acknowledged its offline
        transaction (offline lines applied, reversals done), from the sync thread."""
        self._book.add_listener(callback)

    # -- online-only card operations ----------------------------------------------------

    def balance(self, *, card_number: str) -> Card:
        return self._hq.get_card(card_number=card_number)

    def issue_card(
        self,
        *,
        kind: CardKind,
        initial_value: Money,
        card_number: str = "",
        transaction_id: str = "",
        request_id: str | None = None,
    ) -> Card:
        """Issue a gift card (sold) or a credit memo (return). To retry after HQUnavailable
        without issuing twice, pass the same ``request_id`` again."""
        return self._hq.issue_card(
            request_id=request_id or str(uuid.uuid4()),
            kind=kind,
            initial_value=initial_value,
            card_number=card_number,
            transaction_id=transaction_id,
        )

    def add_value(
        self,
        *,
        card_number: str,
        amount: Money,
        transaction_id: str = "",
        request_id: str | None = None,
    ) -> Card:
        """Load a gift card. Retry with the same ``request_id`` to load at most once."""
        return self._hq.add_value(
            request_id=request_id or str(uuid.uuid4()),
            card_number=card_number,
            amount=amount,
            transaction_id=transaction_id,
        )

    # -- outbox and sync ----------------------------------------------------------------

    def outbox(self) -> tuple[OutboxEntry, ...]:
        """Offline transactions not yet acknowledged by HQ, oldest first."""
        return tuple(self._outbox.entries())

    def sync_reports(self) -> tuple[SyncReport, ...]:
        """Synced transactions that need a human: exceptions, rejections, remainder memos."""
        return tuple(self._outbox.reports())

    def dismiss_sync_report(self, *, sequence_number: int) -> None:
        self._outbox.dismiss_report(sequence_number)

    @property
    def last_sync(self) -> SyncSummary | None:
        """The summary of the latest sync run (background or manual)."""
        return self._sync.last_summary

    def sync_now(self) -> SyncSummary:
        """Send the outbox now, in the calling thread, and say how it went."""
        return self._sync.sync_now()

    def _on_connectivity(self, change: ConnectivityChange) -> None:
        if change.state is not ConnectivityState.ONLINE:
            return
        try:
            self._follower.refresh()
        except TerminalError as failure:
            _log.warning("could not refresh parameters: %s", failure)
        self._reporter.report_now()
        self._sync.trigger()
