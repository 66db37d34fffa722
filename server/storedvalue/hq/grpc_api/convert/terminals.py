"""Terminals as the back office sees them, and the reports tills send of themselves."""

from __future__ import annotations

from datetime import timedelta

from storedvalue.hq.domain.errors import InvalidField
from storedvalue.hq.domain.terminal_reports import (
    DEFAULT_NEXT_REPORT_WITHIN,
    LinkChange,
    LinkState,
    TerminalLink,
    TerminalReport,
)
from storedvalue.hq.grpc_api.convert.common import (
    duration_from_proto,
    duration_to_proto,
    enum_to_proto,
    moment_from_proto,
    optional_timestamp,
    timestamp,
)
from storedvalue.hq.grpc_api.convert.offline import (
    sync_status_to_proto,
    unsynced_from_proto,
    unsynced_to_proto,
)
from storedvalue.hq.services.back_office import TerminalView
from storedvalue.v1 import back_office_service_pb2 as bo_pb
from storedvalue.v1 import terminal_status_pb2

_LINK_STATES_TO_PROTO = enum_to_proto(LinkState, terminal_status_pb2.LinkState, "LINK_STATE_")
_LINK_STATES_BY_PROTO = {value: state for state, value in _LINK_STATES_TO_PROTO.items()}


def terminal_to_proto(view: TerminalView) -> bo_pb.Terminal:
    terminal = view.terminal
    received = view.report
    return bo_pb.Terminal(
        terminal_id=terminal.terminal_id,
        display_name=terminal.display_name,
        registered_at=timestamp(terminal.registered_at),
        credential_issued_at=timestamp(terminal.credential_issued_at),
        sync_status=sync_status_to_proto(view.sync_status),
        store_id=terminal.store_id,
        link=link_to_proto(view.link),
        last_report=report_to_proto(received.report) if received is not None else None,
        last_report_received_at=(
            timestamp(received.received_at) if received is not None else None
        ),
        revoked_at=optional_timestamp(terminal.revoked_at),
        revoked_by=terminal.revoked_by,
        revocation_reason=terminal.revocation_reason,
    )


def link_to_proto(link: TerminalLink) -> bo_pb.TerminalLink:
    return bo_pb.TerminalLink(
        state=(_LINK_STATES_TO_PROTO[link.state] if link.state is not None
               else terminal_status_pb2.LINK_STATE_UNSPECIFIED),
        since=optional_timestamp(link.since),
    )


def report_to_proto(report: TerminalReport) -> terminal_status_pb2.TerminalStatusReport:
    return terminal_status_pb2.TerminalStatusReport(
        reported_at=timestamp(report.reported_at),
        link_history=[
            terminal_status_pb2.LinkChange(
                state=_LINK_STATES_TO_PROTO[change.state],
                changed_at=timestamp(change.changed_at), cause=change.cause,
            )
            for change in report.link_history
        ],
        outbox=terminal_status_pb2.OutboxSummary(
            transaction_count=report.outbox_transactions,
            unsynced_amounts=[unsynced_to_proto(held) for held in report.unsynced_amounts],
            oldest_completed_at=optional_timestamp(report.oldest_completed_at),
            last_sequence_number=report.last_sequence_number,
        ),
        parameters_version=report.parameters_version,
        next_report_within=duration_to_proto(report.next_report_within),
    )


def report_from_proto(report: terminal_status_pb2.TerminalStatusReport) -> TerminalReport:
    if not report.HasField("reported_at"):
        raise InvalidField("report.reported_at", "is required")
    history = []
    for index, change in enumerate(report.link_history):
        state = _LINK_STATES_BY_PROTO.get(change.state)
        if state is None or not change.HasField("changed_at"):
            raise InvalidField(f"report.link_history[{index}]",
                               "needs a state (ONLINE or OFFLINE) and changed_at")
        history.append(LinkChange(
            state, moment_from_proto(change.changed_at, f"report.link_history[{index}].changed_at"),
            change.cause,
        ))
    outbox = report.outbox
    within: timedelta = (
        duration_from_proto(report.next_report_within, "report.next_report_within")
        if report.HasField("next_report_within") else DEFAULT_NEXT_REPORT_WITHIN
    )
    return TerminalReport(
        reported_at=moment_from_proto(report.reported_at, "report.reported_at"),
        link_history=tuple(history),
        outbox_transactions=outbox.transaction_count,
        unsynced_amounts=tuple(unsynced_from_proto(held) for held in outbox.unsynced_amounts),
        oldest_completed_at=(
            moment_from_proto(outbox.oldest_completed_at, "report.outbox.oldest_completed_at")
            if outbox.HasField("oldest_completed_at") else None
        ),
        last_sequence_number=outbox.last_sequence_number,
        parameters_version=report.parameters_version,
        next_report_within=within,
    )

