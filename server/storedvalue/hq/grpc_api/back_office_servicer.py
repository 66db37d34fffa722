"""BackOfficeService: what head-office staff and their tools call. Translation only; the call
gate (`calls.py`) lets only the admin credential through."""

# ruff: noqa: N802 - method names are the contract's RPC names

from __future__ import annotations

from typing import Any

import grpc

from storedvalue.hq.domain.cards import is_valid_card_number
from storedvalue.hq.domain.terminals import is_valid_terminal_id
from storedvalue.hq.grpc_api.call_context import request_key
from storedvalue.hq.grpc_api.convert.cards import (
    card_to_proto,
    journal_entry_to_proto,
    lock_to_proto,
)
from storedvalue.hq.grpc_api.convert.offline import (
    offline_exception_to_proto,
    sync_status_to_proto,
)
from storedvalue.hq.grpc_api.convert.parameters import (
    change_record_to_proto,
    parameters_change_from_proto,
    parameters_to_proto,
    values_to_proto,
)
from storedvalue.hq.grpc_api.convert.terminals import terminal_to_proto
from storedvalue.hq.grpc_api.paging import (
    decode_int_token,
    decode_token,
    next_page_token,
    page_size,
    scoped,
)
from storedvalue.hq.services.auth import Authenticator, Caller
from storedvalue.hq.services.back_office import BackOfficeService, IssuedCredential
from storedvalue.hq.services.parameters import ParametersService
from storedvalue.v1 import back_office_service_pb2 as pb

Context = grpc.aio.ServicerContext[Any, Any]


def _credential_response_parts(
    issued: IssuedCredential,
) -> tuple[pb.Terminal, pb.TerminalCredential | None]:
    token = issued.bearer_token
    credential = pb.TerminalCredential(bearer_token=token) if token else None
    return terminal_to_proto(issued.terminal), credential


class BackOfficeServicer:
    def __init__(
        self,
        *,
        authenticator: Authenticator,
        back_office: BackOfficeService,
        parameters: ParametersService,
    ) -> None:
        self._auth = authenticator
        self._back_office = back_office
        self._parameters = parameters

    # -- parameters -----------------------------------------------------------------------

    async def UpdateParameters(
        self, caller: Caller, request: pb.UpdateParametersRequest, context: Context
    ) -> pb.UpdateParametersResponse:
        done = await self._parameters.update(
            key=request_key(caller, request, "UpdateParameters"),
            updated_by=caller.admin_name,
            change=parameters_change_from_proto(request),
            expected_version=request.expected_version,
            store_id=request.store_id,
        )
        return pb.UpdateParametersResponse(
            parameters=parameters_to_proto(done.parameters),
            change=change_record_to_proto(done.change),
        )

    async def GetStoreParameters(
        self, caller: Caller, request: pb.GetStoreParametersRequest, context: Context
    ) -> pb.GetStoreParametersResponse:
        found = await self._parameters.store_parameters(request.store_id)
        return pb.GetStoreParametersResponse(
            parameters=parameters_to_proto(found.parameters),
            store_override=values_to_proto(found.override),
        )

    async def ListParameterChanges(
        self, caller: Caller, request: pb.ListParameterChangesRequest, context: Context
    ) -> pb.ListParameterChangesResponse:
        changes = scoped("changes", request.store_id)
        page = await self._parameters.list_changes(
            store_id=request.store_id or None,
            before_version=decode_int_token(changes, request.page_token),
            limit=page_size(request.page_size),
        )
        return pb.ListParameterChangesResponse(
            changes=[change_record_to_proto(change) for change in page.items],
            next_page_token=next_page_token(changes, page),
        )

    async def ListParameterVersions(
        self, caller: Caller, request: pb.ListParameterVersionsRequest, context: Context
    ) -> pb.ListParameterVersionsResponse:
        page = await self._parameters.list_versions(
            before_version=decode_int_token("versions", request.page_token),
            limit=page_size(request.page_size),
        )
        return pb.ListParameterVersionsResponse(
            parameters=[parameters_to_proto(p) for p in page.items],
            next_page_token=next_page_token("versions", page),
        )

    # -- locks ----------------------------------------------------------------------------

    async def ListLocks(
        self, caller: Caller, request: pb.ListLocksRequest, context: Context
    ) -> pb.ListLocksResponse:
        locks = scoped("locks", request.terminal_id, request.include_expired)
        page = await self._back_office.list_locks(
            terminal_id=request.terminal_id or None,
            include_expired=request.include_expired,
            after_card_number=decode_token(locks, request.page_token, is_valid_card_number),
            limit=page_size(request.page_size),
        )
        return pb.ListLocksResponse(
            locks=[lock_to_proto(lock) for lock in page.items],
            next_page_token=next_page_token(locks, page),
        )

    async def ForceUnlockCard(
        self, caller: Caller, request: pb.ForceUnlockCardRequest, context: Context
    ) -> pb.ForceUnlockCardResponse:
        result = await self._back_office.force_unlock(
            key=request_key(caller, request, "ForceUnlockCard"),
            admin=caller.admin_name,
            card_number=request.card_number,
            reason=request.reason,
        )
        released = result.released_lock
        return pb.ForceUnlockCardResponse(
            card=card_to_proto(result.card),
            released_lock=lock_to_proto(released) if released is not None else None,
        )

    # -- offline exceptions ---------------------------------------------------------------

    async def ListOfflineExceptions(
        self, caller: Caller, request: pb.ListOfflineExceptionsRequest, context: Context
    ) -> pb.ListOfflineExceptionsResponse:
        exceptions = scoped("exceptions", request.include_resolved, request.terminal_id,
                            request.card_number)
        page = await self._back_office.list_exceptions(
            include_resolved=request.include_resolved,
            terminal_id=request.terminal_id or None,
            card_number=request.card_number or None,
            after_position=decode_int_token(exceptions, request.page_token),
            limit=page_size(request.page_size),
        )
        return pb.ListOfflineExceptionsResponse(
            exceptions=[offline_exception_to_proto(exc) for exc in page.items],
            next_page_token=next_page_token(exceptions, page),
        )

    async def ResolveOfflineException(
        self, caller: Caller, request: pb.ResolveOfflineExceptionRequest, context: Context
    ) -> pb.ResolveOfflineExceptionResponse:
        result = await self._back_office.resolve_exception(
            key=request_key(caller, request, "ResolveOfflineException"),
            admin=caller.admin_name,
            exception_id=request.exception_id,
            resolution=request.resolution,
        )
        return pb.ResolveOfflineExceptionResponse(
            exception=offline_exception_to_proto(result.exception),
            card=card_to_proto(result.card) if result.card is not None else None,
        )

    # -- journal --------------------------------------------------------------------------

    async def ListJournalEntries(
        self, caller: Caller, request: pb.ListJournalEntriesRequest, context: Context
    ) -> pb.ListJournalEntriesResponse:
        journal = scoped("journal", request.card_number)
        page = await self._back_office.list_journal(
            card_number=request.card_number,
            after_entry_id=decode_int_token(journal, request.page_token),
            limit=page_size(request.page_size),
        )
        return pb.ListJournalEntriesResponse(
            entries=[journal_entry_to_proto(entry) for entry in page.items],
            next_page_token=next_page_token(journal, page),
        )

    # -- terminals ------------------------------------------------------------------------

    async def RegisterTerminal(
        self, caller: Caller, request: pb.RegisterTerminalRequest, context: Context
    ) -> pb.RegisterTerminalResponse:
        issued = await self._back_office.register_terminal(
            key=request_key(caller, request, "RegisterTerminal"),
            terminal_id=request.terminal_id,
            display_name=request.display_name,
            store_id=request.store_id,
        )
        terminal, credential = _credential_response_parts(issued)
        return pb.RegisterTerminalResponse(terminal=terminal, credential=credential)

    async def RotateTerminalCredential(
        self, caller: Caller, request: pb.RotateTerminalCredentialRequest, context: Context
    ) -> pb.RotateTerminalCredentialResponse:
        issued = await self._back_office.rotate_credential(
            key=request_key(caller, request, "RotateTerminalCredential"),
            terminal_id=request.terminal_id,
        )
        # The old credential must stop working on this replica at once.
        self._auth.forget()
        terminal, credential = _credential_response_parts(issued)
        return pb.RotateTerminalCredentialResponse(terminal=terminal, credential=credential)

    async def RevokeTerminal(
        self, caller: Caller, request: pb.RevokeTerminalRequest, context: Context
    ) -> pb.RevokeTerminalResponse:
        revoked = await self._back_office.revoke_terminal(
            key=request_key(caller, request, "RevokeTerminal"),
            admin=caller.admin_name,
            terminal_id=request.terminal_id,
            reason=request.reason,
        )
        # Refused at once on this replica: its cached credential and its open streams go.
        self._auth.forget()
        self._parameters.feed.end_watches(request.terminal_id, revoked=True)
        return pb.RevokeTerminalResponse(
            terminal=terminal_to_proto(revoked.terminal),
            released_locks=[lock_to_proto(lock) for lock in revoked.released_locks],
        )

    async def SetTerminalStore(
        self, caller: Caller, request: pb.SetTerminalStoreRequest, context: Context
    ) -> pb.SetTerminalStoreResponse:
        view = await self._back_office.set_terminal_store(
            key=request_key(caller, request, "SetTerminalStore"),
            terminal_id=request.terminal_id,
            store_id=request.store_id,
        )
        # The terminal's calls and streams follow its new store at once on this replica.
        self._auth.forget()
        self._parameters.feed.end_watches(request.terminal_id, revoked=False)
        return pb.SetTerminalStoreResponse(terminal=terminal_to_proto(view))

    async def ListTerminals(
        self, caller: Caller, request: pb.ListTerminalsRequest, context: Context
    ) -> pb.ListTerminalsResponse:
        page = await self._back_office.list_terminals(
            after_terminal_id=decode_token("terminals", request.page_token,
                                           is_valid_terminal_id),
            limit=page_size(request.page_size),
        )
        return pb.ListTerminalsResponse(
            terminals=[terminal_to_proto(view) for view in page.items],
            next_page_token=next_page_token("terminals", page),
        )

    async def GetTerminalSyncStatus(
        self, caller: Caller, request: pb.GetTerminalSyncStatusRequest, context: Context
    ) -> pb.GetTerminalSyncStatusResponse:
        status = await self._back_office.get_sync_status(terminal_id=request.terminal_id)
        return pb.GetTerminalSyncStatusResponse(sync_status=sync_status_to_proto(status))
