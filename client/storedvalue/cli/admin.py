"""``storedvalue admin``: the back office from a shell (parameters, locks, exceptions,
journals, terminals), through BackOfficeService.

``terminals``, ``locks`` and ``exceptions`` print tables for a person (``--json`` for
scripts: the messages, with proto field names); the other commands print JSON, lists as one
JSON array over all pages. A refused call prints its status code, reason and metadata on
stderr and exits 1; a TLS handshake that failed says what to fix, and exits 1 too.

Under mutual TLS the back office needs a client certificate HQ takes as an admin's (by
default the common name storedvalue-admin; see `storedvalue serve --help`) besides its token.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from storedvalue.terminal import HandshakeFailed, TlsFiles, handshake_failure
from storedvalue.v1 import back_office_service_pb2 as pb
from storedvalue.v1 import back_office_service_pb2_grpc as pb_grpc
from storedvalue.v1 import common_pb2

from . import _back_office_tables as tables
from ._display import parse_money
from ._tls_options import add_tls_options, tls_files

ENV_TARGET = "STOREDVALUE_TARGET"
ENV_ADMIN_TOKEN = "STOREDVALUE_ADMIN_TOKEN"  # noqa: S105 - a variable name
ENV_CLIENT_CERT = "STOREDVALUE_ADMIN_CLIENT_CERT"
ENV_CLIENT_KEY = "STOREDVALUE_ADMIN_CLIENT_KEY"
DEFAULT_TARGET = "127.0.0.1:50051"
Handler = Callable[[pb_grpc.BackOfficeServiceStub, argparse.Namespace, "Call"], Any]


class Call:
    """Per-call settings: the admin credential and a deadline."""

    def __init__(self, token: str, timeout: float) -> None:
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    def __call__(self, method: Any, request: Message) -> Any:
        return method(request, metadata=self.metadata, timeout=self.timeout)


def _request_id(args: argparse.Namespace) -> str:
    return args.request_id or str(uuid.uuid4())


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "yes", "1"):
        return True
    if value.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError("expected on or off")


def _lease(value: str) -> duration_pb2.Duration:
    match = re.fullmatch(r"(\d+)([smhd]?)", value.strip())
    if not match:
        raise argparse.ArgumentTypeError("expected e.g. 90m, 4h, 2d or seconds")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    lease = duration_pb2.Duration()
    lease.FromTimedelta(timedelta(seconds=int(match.group(1)) * unit))
    return lease


def _amount(value: str) -> common_pb2.Money:
    amount, _, currency = value.rpartition(":")
    try:
        money = parse_money(amount, currency)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{error}; expected AMOUNT:CURRENCY, e.g. 50.00:EUR"
                                         ) from None
    return common_pb2.Money(amount_minor=money.amount_minor, currency_code=money.currency_code)


def _pages(fetch: Callable[[str], Any], items: str) -> Iterator[Any]:
    token = ""
    while True:
        response = fetch(token)
        yield from getattr(response, items)
        token = response.next_page_token
        if not token:
            return


# -- handlers --------------------------------------------------------------------------------


def params_show(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call
                ) -> Any:
    if args.store:
        return call(stub.GetStoreParameters, pb.GetStoreParametersRequest(store_id=args.store))
    if args.all:
        return list(_pages(lambda t: call(stub.ListParameterVersions,
                                          pb.ListParameterVersionsRequest(page_token=t)),
                           "parameters"))
    response = call(stub.ListParameterVersions, pb.ListParameterVersionsRequest(page_size=1))
    return response.parameters[0] if response.parameters else None


def params_set(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call
               ) -> Any:
    request = pb.UpdateParametersRequest(
        request_id=_request_id(args), expected_version=args.expected_version or 0,
        store_id=args.store or "", clear_fields=args.clear or [],
    )
    if args.gift_card_offline is not None:
        request.gift_card_offline_completion_allowed = args.gift_card_offline
    if args.credit_memo_offline is not None:
        request.credit_memo_offline_completion_allowed = args.credit_memo_offline
    if args.lock_lease is not None:
        request.lock_lease.CopyFrom(args.lock_lease)
    for kind in ("gift_card", "credit_memo"):
        limits = getattr(request, f"{kind}_offline_limits")
        for option, field in (("max_line", "max_line_amount"),
                              ("max_unsynced", "max_unsynced_amount"),
                              ("max_offline", "max_offline_duration")):
            value = getattr(args, f"{kind}_{option}")
            if value is not None:
                getattr(limits, field).CopyFrom(value)
    return call(stub.UpdateParameters, request)


def params_changes(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call
                   ) -> Any:
    return list(_pages(lambda t: call(stub.ListParameterChanges, pb.ListParameterChangesRequest(
        store_id=args.store or "", page_token=t)), "changes"))


def locks_list(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call
               ) -> Any:
    locks = tables.locks_by_age(_pages(lambda t: call(stub.ListLocks, pb.ListLocksRequest(
        terminal_id=args.terminal or "", include_expired=args.include_expired, page_token=t,
    )), "locks"))
    return locks if args.json else Text(tables.locks_table(locks, _now()))


def unlock(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call) -> Any:
    return call(stub.ForceUnlockCard, pb.ForceUnlockCardRequest(
        request_id=_request_id(args), card_number=args.card_number, reason=args.reason,
    ))


def exceptions_list(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call
                    ) -> Any:
    groups = tables.exception_groups(_pages(lambda t: call(
        stub.ListOfflineExceptions, pb.ListOfflineExceptionsRequest(
            include_resolved=args.include_resolved, terminal_id=args.terminal or "",
            card_number=args.card or "", page_token=t,
        )), "exceptions"))
    if args.json:
        return {"groups": [{"kind": kind, "count": len(found),
                            "exceptions": [_to_json(exc) for exc in found]}
                           for kind, found in groups]}
    return Text(tables.exceptions_text(groups, _now()))


def exceptions_resolve(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                       call: Call) -> Any:
    return call(stub.ResolveOfflineException, pb.ResolveOfflineExceptionRequest(
        request_id=_request_id(args), exception_id=args.exception_id,
        resolution=args.resolution,
    ))


def journal(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace, call: Call) -> Any:
    return list(_pages(lambda t: call(stub.ListJournalEntries, pb.ListJournalEntriesRequest(
        card_number=args.card_number, page_size=500, page_token=t,
    )), "entries"))


def terminals_register(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                       call: Call) -> Any:
    return call(stub.RegisterTerminal, pb.RegisterTerminalRequest(
        request_id=_request_id(args), terminal_id=args.terminal_id,
        display_name=args.display_name or "", store_id=args.store or "",
    ))


def terminals_rotate(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                     call: Call) -> Any:
    return call(stub.RotateTerminalCredential, pb.RotateTerminalCredentialRequest(
        request_id=_request_id(args), terminal_id=args.terminal_id,
    ))


def terminals_revoke(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                     call: Call) -> Any:
    return call(stub.RevokeTerminal, pb.RevokeTerminalRequest(
        request_id=_request_id(args), terminal_id=args.terminal_id, reason=args.reason,
    ))


def terminals_move(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                   call: Call) -> Any:
    return call(stub.SetTerminalStore, pb.SetTerminalStoreRequest(
        request_id=_request_id(args), terminal_id=args.terminal_id, store_id=args.store or "",
    ))


def terminals_list(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                   call: Call) -> Any:
    terminals = list(_pages(lambda t: call(stub.ListTerminals,
                                           pb.ListTerminalsRequest(page_token=t)), "terminals"))
    return terminals if args.json else Text(tables.terminals_table(terminals, _now()))


def terminals_status(stub: pb_grpc.BackOfficeServiceStub, args: argparse.Namespace,
                     call: Call) -> Any:
    return call(stub.GetTerminalSyncStatus,
                pb.GetTerminalSyncStatusRequest(terminal_id=args.terminal_id)).sync_status


# -- parser ----------------------------------------------------------------------------------


def register(subparsers: Any, summary: str) -> None:
    admin: argparse.ArgumentParser = subparsers.add_parser(
        "admin", help=summary,
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    admin.add_argument("--target", metavar="HOST:PORT",
                       help=f"HQ address (env {ENV_TARGET}, else STOREDVALUE_LISTEN, "
                            f"else {DEFAULT_TARGET})")
    admin.add_argument("--admin-token", metavar="TOKEN",
                       help=f"admin credential (env {ENV_ADMIN_TOKEN}, else the admin token "
                            "file)")
    admin.add_argument("--admin-token-file", type=Path, metavar="PATH",
                       help="where to read the admin token (default: the file "
                            "`storedvalue serve` uses: beside the SQLite database of "
                            "STOREDVALUE_DATABASE_URL, else in the data directory)")
    add_tls_options(admin, whose="the back office's", cert_env=ENV_CLIENT_CERT,
                    key_env=ENV_CLIENT_KEY)
    admin.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="deadline of each call (default %(default)g)")
    admin.add_argument("--request-id", metavar="ID",
                       help="request id of a mutating call (to retry one); default a new UUID")
    admin.set_defaults(handler=lambda args: _usage(admin))
    groups = admin.add_subparsers(dest="admin_command", metavar="WHAT")

    def command(parent: Any, name: str, handler: Handler, help_text: str
                ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = parent.add_parser(name, help=help_text)
        parser.set_defaults(handler=lambda args: run(args, handler))
        return parser

    def listing(parent: Any, name: str, handler: Handler, help_text: str,
                options: Callable[[argparse.ArgumentParser], object] = lambda _: None,
                ) -> Any:
        """A group whose bare name lists (a table, or --json), as does its `list` action;
        returns its actions."""
        parser = command(parent, name, handler, help_text)
        actions = parser.add_subparsers(metavar="ACTION")
        for lister in (parser, command(actions, "list", handler, "the same list")):
            lister.add_argument("--json", action="store_true",
                                help="print the list as JSON, for scripts")
            options(lister)
        return actions

    params = groups.add_parser("params", help="HQ parameters: global and per store"
                               ).add_subparsers(metavar="ACTION")
    show = command(params, "show", params_show, "show the current parameters")
    show.add_argument("--all", action="store_true", help="every global version, newest first")
    show.add_argument("--store", metavar="STORE_ID",
                      help="what this store's terminals get, and its override")
    set_ = command(params, "set", params_set, "change parameters (a new version); with "
                   "--store, that store's override")
    set_.add_argument("--store", metavar="STORE_ID", help="edit this store's override")
    set_.add_argument("--gift-card-offline", type=_on_off, metavar="on|off")
    set_.add_argument("--credit-memo-offline", type=_on_off, metavar="on|off")
    set_.add_argument("--lock-lease", type=_lease, metavar="DURATION", help="e.g. 4h, 90m")
    for kind, label in (("gift-card", "gift card"), ("credit-memo", "credit memo")):
        set_.add_argument(f"--{kind}-max-line", type=_amount, metavar="AMOUNT:CURRENCY",
                          help=f"largest {label} line completed offline, e.g. 50.00:EUR")
        set_.add_argument(f"--{kind}-max-unsynced", type=_amount, metavar="AMOUNT:CURRENCY",
                          help=f"most {label} sales a till may hold unsynced offline")
        set_.add_argument(f"--{kind}-max-offline", type=_lease, metavar="DURATION",
                          help=f"longest a till may complete {label} sales offline since it "
                               "last reached HQ, e.g. 8h")
    set_.add_argument("--clear", action="append", metavar="FIELD",
                      help="clear a value: a limit (e.g. gift_card_offline_limits."
                           "max_line_amount) becomes unlimited, or a store's override value "
                           "the global one ('*': the whole override); repeatable")
    set_.add_argument("--expected-version", type=int, metavar="N",
                      help="fail if the current version differs")
    changes = command(params, "changes", params_changes,
                      "the change log: who, when, which scope, old and new values")
    changes.add_argument("--store", metavar="STORE_ID", help="only this store's override")

    def lock_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--terminal", metavar="TERMINAL_ID")
        parser.add_argument("--include-expired", action="store_true")

    listing(groups, "locks", locks_list, "card locks by age, oldest first, with their holder",
            lock_options)

    force = command(groups, "unlock", unlock, "release a card's lock whoever holds it")
    force.add_argument("card_number")
    force.add_argument("--reason", required=True, help="why; kept in the journal")

    def exception_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--include-resolved", action="store_true")
        parser.add_argument("--terminal", metavar="TERMINAL_ID")
        parser.add_argument("--card", metavar="CARD_NUMBER")

    exc_actions = listing(groups, "exceptions", exceptions_list,
                          "offline exceptions grouped by kind", exception_options)
    resolve = command(exc_actions, "resolve", exceptions_resolve,
                      "resolve an offline exception")
    resolve.add_argument("exception_id")
    resolve.add_argument("--resolution", required=True, help="what was done about it")

    command(groups, "journal", journal, "a card's journal, oldest first").add_argument(
        "card_number")

    term_actions = listing(groups, "terminals", terminals_list, "terminals: store, link "
                           "(online or offline since when), unsynced exposure, last sequence "
                           "synced, gaps")
    reg = command(term_actions, "register", terminals_register, "register a terminal (prints "
                  "its credential once)")
    reg.add_argument("terminal_id")
    reg.add_argument("--display-name")
    reg.add_argument("--store", metavar="STORE_ID", help="the store it belongs to")
    command(term_actions, "rotate", terminals_rotate,
            "replace a terminal's credential").add_argument("terminal_id")
    revoke = command(term_actions, "revoke", terminals_revoke, "revoke a stolen or retired "
                     "terminal: refused from now on, its locks released")
    revoke.add_argument("terminal_id")
    revoke.add_argument("--reason", required=True, help="why; kept with it and in the journal")
    move = command(term_actions, "move", terminals_move, "move a terminal to another store")
    move.add_argument("terminal_id")
    move.add_argument("--store", metavar="STORE_ID", help="its new store (omit: none)")
    command(term_actions, "status", terminals_status,
            "a terminal's offline sync status").add_argument("terminal_id")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _admin_token(args: argparse.Namespace) -> str:
    if args.admin_token:
        return str(args.admin_token)
    if os.environ.get(ENV_ADMIN_TOKEN):
        return os.environ[ENV_ADMIN_TOKEN].strip()
    path = args.admin_token_file
    if path is None:  # the file `storedvalue serve` uses with the same environment
        from storedvalue.hq.config import ENV_DATABASE_URL, admin_token_file_for

        try:
            path = admin_token_file_for(os.environ.get(ENV_DATABASE_URL), os.environ)
        except ModuleNotFoundError:  # reading a database URL takes HQ's extra
            raise SystemExit(f"storedvalue admin: give --admin-token-file (or --admin-token): "
                             f"finding the token file of {ENV_DATABASE_URL} needs "
                             "storedvalue[hq]") from None
    try:
        return str(Path(path).read_text(encoding="utf-8").strip())
    except OSError as error:
        raise SystemExit(f"storedvalue admin: no admin token ({error}); give --admin-token "
                         f"or set {ENV_ADMIN_TOKEN}") from None


def _target(args: argparse.Namespace) -> str:
    return str(args.target or os.environ.get(ENV_TARGET) or os.environ.get("STOREDVALUE_LISTEN")
               or DEFAULT_TARGET)


def _channel(target: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.channel_credentials(), options=tls.channel_options())


def _to_json(result: Any) -> Any:
    if isinstance(result, Message):
        return json_format.MessageToDict(result, preserving_proto_field_name=True)
    if isinstance(result, list):
        return [_to_json(item) for item in result]
    return result


class Text(str):
    """A handler's result for a person, printed as it is."""


def run(args: argparse.Namespace, handler: Handler) -> int:
    call = Call(_admin_token(args), args.timeout)
    target = _target(args)
    try:
        tls = tls_files(args, cert_env=ENV_CLIENT_CERT, key_env=ENV_CLIENT_KEY)
        channel = _channel(target, tls)
    except (ValueError, HandshakeFailed) as error:
        print(f"storedvalue admin: {error}", file=sys.stderr)
        return 2
    with channel:
        try:
            result = handler(pb_grpc.BackOfficeServiceStub(channel), args, call)
        except grpc.RpcError as error:
            tls_problem = handshake_failure(error, address=target, tls=tls,
                                            timeout_s=args.timeout)
            text = _describe(error) if tls_problem is None else (
                f"{tls_problem.message} ({tls_problem.problem.value})")
            print(f"storedvalue admin: {text}", file=sys.stderr)
            return 1
    if isinstance(result, Text):
        print(result)
    else:
        print(json.dumps(_to_json(result), indent=2, ensure_ascii=False))
    return 0


def _now() -> datetime:
    return datetime.now(UTC)


def _describe(error: grpc.RpcError) -> str:
    call = cast(grpc.Call, error)  # every RpcError a stub raises is also a Call
    code, details = call.code().name, call.details()
    try:
        status = rpc_status.from_call(call)
    except ValueError:
        status = None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return f"{code} {info.reason}: {details} {dict(info.metadata)}"
    return f"{code}: {details}"
