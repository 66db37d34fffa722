"""What tills report of themselves (ReportTerminalStatus): HQ keeps each one's newest report
for the back office. No request-id log: a report is a statement of fact, and keeping only
the newest by the till's own clock makes a resend or a late one change nothing."""

from __future__ import annotations

from datetime import datetime

from storedvalue.hq.domain.terminal_reports import ReceivedReport, TerminalReport
from storedvalue.hq.services.clock import Clock, utc_now
from storedvalue.hq.services.transactions import Transactions
from storedvalue.hq.services.unit_of_work import Repositories


class TerminalReportService:
    def __init__(self, transactions: Transactions, *, clock: Clock = utc_now) -> None:
        self._transactions = transactions
        self._clock = clock

    async def report(self, *, terminal_id: str, report: TerminalReport) -> datetime:
        """Keep the report (unless a newer one is held); when HQ received it."""
        report.validate()
        received_at = self._clock()

        def work(uow: Repositories) -> bool:
            return uow.reports.save(terminal_id, ReceivedReport(report, received_at))

        await self._transactions.write(work)
        return received_at
