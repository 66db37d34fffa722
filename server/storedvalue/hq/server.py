"""The composition root: storage, the transaction executor, services, servicers, the call
gate, health, reflection, the parameters feed and the TLS certificates wired into one
`grpc.aio` server (and, when configured, a plaintext health-only server beside it).

`storedvalue.hq.process.serve` runs it on an event loop in the main thread until a signal.
`create_server` hosts it on a background event loop for synchronous code (tests, the demo)
and returns a handle with the familiar `start()`, `stop(grace).wait(timeout)` and
`wait_for_termination()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2

from storedvalue.hq.addresses import bind_failure
from storedvalue.hq.certificate_rotation import ServingCertificates
from storedvalue.hq.config import ADMIN_NAME, HQConfig
from storedvalue.hq.domain.terminals import hash_token
from storedvalue.hq.event_loops import loop_factory
from storedvalue.hq.grpc_api.back_office_servicer import BackOfficeServicer
from storedvalue.hq.grpc_api.calls import CallGate, MethodTable
from storedvalue.hq.grpc_api.client_certificates import ClientCertificates
from storedvalue.hq.grpc_api.method_handlers import add_foreign_servicer, add_servicer
from storedvalue.hq.grpc_api.reflection import add_reflection
from storedvalue.hq.grpc_api.terminal_servicer import TerminalServicer
from storedvalue.hq.services.auth import Authenticator, Role
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersFeed, ParametersService
from storedvalue.hq.services.terminal_reports import TerminalReportService
from storedvalue.hq.services.throttle import UnknownCardThrottle
from storedvalue.hq.services.transactions import ThreadedTransactions, Transactions
from storedvalue.hq.services.unit_of_work import Storage
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.hq.storage.engines import is_sqlite_memory
from storedvalue.hq.storage.group_commit import GroupCommitTransactions
from storedvalue.hq.storage.parameter_changes import (
    NotificationTableFollower,
    ParameterChangeListener,
)
from storedvalue.hq.storage.sqlalchemy_storage import ThreadSessions
from storedvalue.hq.tls import ServerCertificates, load_certificates
from storedvalue.v1 import back_office_service_pb2, terminal_service_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

TERMINAL_SERVICE_DESCRIPTOR = terminal_service_pb2.DESCRIPTOR.services_by_name["TerminalService"]
BACK_OFFICE_SERVICE_DESCRIPTOR = (
    back_office_service_pb2.DESCRIPTOR.services_by_name["BackOfficeService"]
)
HEALTH_SERVICE_DESCRIPTOR = health_pb2.DESCRIPTOR.services_by_name["Health"]
TERMINAL_SERVICE = TERMINAL_SERVICE_DESCRIPTOR.full_name
BACK_OFFICE_SERVICE = BACK_OFFICE_SERVICE_DESCRIPTOR.full_name


def open_storage(config: HQConfig) -> SqlStorage:
    """The configured database, migrated to the current schema."""
    upgrade_to_head(config.database_url)
    return SqlStorage.from_url(config.database_url, pool_size=config.database_connections)


def open_transactions(storage: Storage, config: HQConfig) -> Transactions:
    """The executor sized for the database: SQLite's group-commit writer and its readers,
    or one thread per pooled connection, each keeping its connection (PostgreSQL; any other
    storage: a unit of work each time)."""
    if isinstance(storage, SqlStorage):
        if storage.engine.dialect.name == "sqlite":
            return GroupCommitTransactions(storage, readers=config.database_connections - 1,
                                           gather_seconds=config.commit_gather_seconds)
        return ThreadedTransactions(ThreadSessions(storage), threads=config.database_connections,
                                    owns_storage=True)
    return ThreadedTransactions(storage, threads=config.database_connections)


def reuse_port(config: HQConfig) -> int:
    """gRPC's SO_REUSEPORT option: 1 for the worker processes of one HQ, else 0."""
    return 1 if config.processes > 1 else 0


def grpc_options(config: HQConfig) -> list[tuple[str, Any]]:
    """The transport limits of a public endpoint."""
    return [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        # No cap on answers: HQ answers after its commit, so an answer its own transport
        # refused would turn an applied change into an error, and so would every retry.
        # A sync batch's answer can be several times the request (an exception id for
        # each line), so past max_receive_message_bytes.
        ("grpc.max_send_message_length", -1),
        # A second HQ on the same port must fail to start, not share it silently. The worker
        # processes of one `serve --processes N` do share it (the supervisor checked first
        # that nobody else listens there: storedvalue.hq.workers).
        ("grpc.so_reuseport", reuse_port(config)),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        # Count the connection's open HTTP/2 streams against that limit, as the client
        # does, not the streams HQ has not yet freed (gRPC's default "overload
        # protection"): a finished call's stream is freed only when its Python call object
        # goes, a moment after the client counted it closed and opened the next one, which
        # then got REFUSED_STREAM: a bare UNAVAILABLE, with no ErrorInfo, for a client that
        # kept to the limit (44 of 120 calls with 4 streams in tests/e2e/test_serving_core).
        ("grpc.http.overload_protection", 0),
        ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms",
         int(config.min_client_ping_seconds * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        # Calls that arrived but are not yet taken up by the event loop (a fleet
        # reconnecting at once): gRPC's defaults (1,000, and every call refused from 3,000)
        # would turn thousands of tills' watch streams away; a call waiting costs memory.
        ("grpc.server.max_pending_requests", config.max_watchers),
        ("grpc.server.max_pending_requests_hard_limit", 2 * config.max_watchers),
    ]


class HQApplication:
    """HQ's gRPC server and everything it owns, on the event loop that opened it.

    `stop(grace)` first reports NOT_SERVING and ends the WatchParameters streams, then lets
    in-flight calls drain for `grace` seconds, then stops the executor and closes the
    storage (if it opened it)."""

    def __init__(self, config: HQConfig, storage: Storage, transactions: Transactions, *,
                 owns_storage: bool, certificates: ServerCertificates | None = None,
                 interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = ()) -> None:
        self.config = config
        self._storage = storage
        self._owns_storage = owns_storage
        self._transactions = transactions
        self.feed = ParametersFeed(max_watchers=config.max_watchers)
        self.parameters = ParametersService(self._transactions, feed=self.feed)
        admins = {hash_token(config.admin_token): ADMIN_NAME} if config.admin_token else {}
        authenticator = self._authenticator = Authenticator(
            self._transactions, admin_token_hashes=admins,
            admin_certificate_rule=config.admin_certificate_rule(),
        )
        client_certificates: ClientCertificates | None = None
        self.certificates: ServingCertificates | None = None
        if certificates is not None:
            if config.uses_mutual_tls:
                client_certificates = ClientCertificates(
                    admin_names=config.required_admin_certificate_names,
                    admin_issuers=certificates.admin_issuers,
                )
            self.certificates = ServingCertificates(
                config, certificates, on_reload=_follow_admin_issuers(client_certificates)
            )
        # One unknown-card limit per till, online and offline.
        throttle = UnknownCardThrottle(limit=config.unknown_card_limit)
        offline = OfflineService(self._transactions, limits=config.sync_limits,
                                 throttle=throttle)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        # Given interceptors see every call first (tests put a breakable link there).
        self._server = grpc.aio.server(
            interceptors=[*interceptors, CallGate(
                authenticator,
                roles={TERMINAL_SERVICE: Role.TERMINAL, BACK_OFFICE_SERVICE: Role.ADMIN},
                call_deadline_seconds=config.call_deadline_seconds,
                client_certificates=client_certificates,
            )],
            options=grpc_options(config),
        )
        methods = MethodTable()
        add_servicer(
            methods,
            TerminalServicer(
                cards=CardService(self._transactions, parameters_feed=self.feed,
                                  throttle=throttle),
                offline=offline,
                parameters=self.parameters,
                reports=TerminalReportService(self._transactions),
            ),
            TERMINAL_SERVICE_DESCRIPTOR,
        )
        add_servicer(
            methods,
            BackOfficeServicer(
                authenticator=authenticator,
                back_office=BackOfficeService(self._transactions),
                parameters=self.parameters,
            ),
            BACK_OFFICE_SERVICE_DESCRIPTOR,
        )
        add_foreign_servicer(methods, self._health, HEALTH_SERVICE_DESCRIPTOR)
        self._server.add_generic_rpc_handlers((methods,))
        add_reflection(self._server, (TERMINAL_SERVICE, BACK_OFFICE_SERVICE, health.SERVICE_NAME))
        self.port = 0  # bound by `open`
        # Probes that cannot present a client certificate: the health service alone (and
        # reflection of it, for grpcurl), in plaintext on a loopback port; the same servicer,
        # so it says what the main port says.
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if config.health_listen is not None:
            self._health_server = grpc.aio.server(
                options=[("grpc.so_reuseport", reuse_port(config))])
            add_foreign_servicer(self._health_server, self._health, HEALTH_SERVICE_DESCRIPTOR)
            add_reflection(self._health_server, (health.SERVICE_NAME,))
        self._bound: list[grpc.aio.Server] = []
        self._followers: list[asyncio.Task[None]] = []
        self._listener: ParameterChangeListener | NotificationTableFollower | None = None
        self._stopped: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        config: HQConfig,
        *,
        storage: Storage | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    ) -> HQApplication:
        """HQ bound to `config.listen` (port 0: any free port), not yet started. Without
        `storage`, opens (and on stop closes) the configured database. `interceptors` see
        every call before HQ's own call gate."""
        # The certificate files first: a wrong one stops HQ before it touches the database.
        certificates = load_certificates(config) if config.uses_tls else None
        owns_storage = storage is None
        store = open_storage(config) if storage is None else storage
        transactions: Transactions | None = None
        try:
            # Opened here, not by the constructor, so that whatever fails after it (a bad
            # interceptor, say) stops its threads too.
            transactions = open_transactions(store, config)
            app = cls(config, store, transactions, owns_storage=owns_storage,
                      certificates=certificates, interceptors=interceptors)
        except BaseException:
            try:
                if transactions is not None:
                    transactions.close()
            finally:
                if owns_storage:
                    store.close()
            raise
        try:
            await app._bind_ports()
            await app.parameters.ensure_initialized()
        except BaseException:
            await app._let_go_of_ports()
            await app._release()
            raise
        return app

    async def _bind_ports(self) -> None:
        """The configured addresses bound (listened on from `start`); one gRPC cannot bind
        is a ConfigError saying why."""
        self.port = _bind(self._server, self.config.listen, self.certificates, "")
        self._bound.append(self._server)
        if self._health_server is not None and self.config.health_listen is not None:
            self.health_port = _bind(self._health_server, self.config.health_listen, None,
                                     " (--health-listen)")
            self._bound.append(self._health_server)

    async def _let_go_of_ports(self) -> None:
        """HQ failed to open: the ports already bound go too. gRPC keeps a server's ports
        until the process ends unless it was started, so each is started and stopped at
        once, health NOT_SERVING (a probe connecting in that instant is not misled)."""
        bound, self._bound = self._bound, []
        if not bound:
            return
        await self._health.enter_graceful_shutdown()
        for server in bound:
            await server.start()
            await server.stop(None)

    async def start(self) -> None:
        for name in ("", TERMINAL_SERVICE, BACK_OFFICE_SERVICE):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await self._server.start()
        if self._health_server is not None:
            await self._health_server.start()
        if self.certificates is not None:
            for warning in self.certificates.current.warnings:
                log.warning(warning)
            self._followers.append(asyncio.create_task(self.certificates.watch()))
        self._follow_other_replicas()

    def reload_certificates(self, trigger: str) -> bool:
        """Read the TLS files again; new connections get them when they are good (bad ones
        are logged and the served ones kept). False too when HQ serves plaintext."""
        if self.certificates is None:
            log.info("no TLS certificates to reload: HQ serves plaintext",
                     extra={"trigger": trigger})
            return False
        return self.certificates.reload(trigger)

    async def stop(self, grace: float | None) -> None:
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
            return
        stopped = self._stopped = asyncio.get_running_loop().create_future()
        try:
            # Load balancers and terminal probes see NOT_SERVING before calls are refused.
            await self._health.enter_graceful_shutdown()
            self.feed.close()  # open WatchParameters streams end now, with OK
            await self._server.stop(grace)
            if self._health_server is not None:  # probes saw NOT_SERVING all along the drain
                await self._health_server.stop(0)
            await self._release()
        finally:
            stopped.set_result(None)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)

    def _follow_other_replicas(self) -> None:
        """Parameter versions made and terminals revoked or moved by other HQ processes on
        the same database reach this one's watchers and credential cache: PostgreSQL tells
        us (LISTEN/NOTIFY); on a SQLite file we read the notifications table every
        `notifications_poll_seconds`. A memory database has no other process."""
        storage = self._storage
        if not isinstance(storage, SqlStorage) or is_sqlite_memory(storage.engine.url):
            return
        loop = asyncio.get_running_loop()

        def changed() -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                asyncio.run_coroutine_threadsafe(self._refresh_parameters(), loop)

        def terminal_changed(terminal_id: str) -> None:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._terminal_changed(terminal_id), loop)

        def missed() -> None:
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(self._refresh_everything(), loop)

        if storage.engine.dialect.name == "postgresql":
            self._listener = ParameterChangeListener(storage.engine, changed, terminal_changed)
        else:
            self._listener = NotificationTableFollower(
                storage.engine, changed, terminal_changed, missed,
                poll_seconds=self.config.notifications_poll_seconds,
            )
        self._listener.start()

    async def _terminal_changed(self, terminal_id: str) -> None:
        """Another replica revoked the terminal or moved it: its cached credential and its
        watch streams here go too."""
        self._authenticator.forget()
        try:
            terminal = await self._transactions.read(lambda uow: uow.terminals.get(terminal_id))
        except Exception:
            log.exception("reading a changed terminal failed")
            return
        self.feed.end_watches(terminal_id, revoked=terminal is None or terminal.revoked)

    async def _refresh_everything(self) -> None:
        """Notifications were missed (pruned before this process read them): what they said
        is unknown, so every cached credential goes and the parameters are read again."""
        self._authenticator.forget()
        await self._refresh_parameters()

    async def _refresh_parameters(self) -> None:
        try:
            await self.parameters.refresh()
        except Exception:  # a database hiccup must not stop the following
            log.exception("reading the current parameters failed")

    async def _release(self) -> None:
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        listener, self._listener = self._listener, None
        if listener is not None:
            await asyncio.to_thread(listener.stop)
        await asyncio.to_thread(self._transactions.close)
        if self._owns_storage:
            self._storage.close()


def _bind(server: grpc.aio.Server, listen: str, certificates: ServingCertificates | None,
          what: str) -> int:
    """The port bound at `listen`. gRPC says only that it failed (`storedvalue serve`
    checked the address before, but another process may have taken it since, and an
    embedded HQ is not checked): the kernel is asked why (`what`: which address it is)."""
    try:
        if certificates is not None:
            port = server.add_secure_port(listen, certificates.credentials())
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as error:
        raise bind_failure(listen, what, str(error)) from None
    if port == 0:
        raise bind_failure(listen, what, "gRPC bound no port")
    return port


def _follow_admin_issuers(client_certificates: ClientCertificates | None
                          ) -> Callable[[ServerCertificates], None]:
    """What a certificate reload tells the call gate: the admin CA it now trusts."""

    def reloaded(certificates: ServerCertificates) -> None:
        if client_certificates is not None:
            client_certificates.use_admin_issuers(certificates.admin_issuers)

    return reloaded


# -- embedded: HQ on a background event loop --------------------------------------------------


class _BackgroundLoop:
    """One event loop on a daemon thread, shared by every embedded HQ of the process: gRPC's
    asyncio support binds its completion-queue poller to the first loop that uses it, so
    embedded servers must not each bring (and later close) a loop of their own."""

    _lock = threading.Lock()
    _shared: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls, event_loop: str) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._shared is None:
                loop = loop_factory(event_loop)()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                threading.Thread(target=run, name="hq-event-loop", daemon=True).start()
                ready.wait()
                cls._shared = loop
            return cls._shared


class HQServer:
    """An HQ served from a background event loop, driven from synchronous code."""

    def __init__(self, app: HQApplication, loop: asyncio.AbstractEventLoop) -> None:
        self._app = app
        self._loop = loop
        self._stopping: threading.Event | None = None
        self._guard = threading.Lock()

    def start(self) -> None:
        self._run(self._app.start())

    def stop(self, grace: float | None = None) -> threading.Event:
        """Begin a graceful stop; the event returned is set once it is complete."""
        with self._guard:
            if self._stopping is not None:
                return self._stopping
            done = self._stopping = threading.Event()
        future = asyncio.run_coroutine_threadsafe(self._app.stop(grace), self._loop)
        future.add_done_callback(lambda _future: done.set())
        return done

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """True when `timeout` passed first, as grpc.Server's does."""
        return self._run(self._app.wait_for_termination(timeout))

    @property
    def health_port(self) -> int | None:
        return self._app.health_port

    def reload_certificates(self) -> bool:
        """What SIGHUP does to a `storedvalue serve` process."""
        return self._run(self._reload())

    async def _reload(self) -> bool:
        return self._app.reload_certificates("reload_certificates")

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


def create_server(
    config: HQConfig,
    *,
    storage: Storage | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
) -> tuple[HQServer, int]:
    """An HQ server bound to `config.listen` (port 0: any free port), not yet started,
    hosted on the process's background event loop. Without `storage`, opens (and on stop
    closes) the configured database. `interceptors` (asyncio ones) see every call before
    HQ's own call gate (tests put a breakable link there)."""
    loop = _BackgroundLoop.get(config.event_loop)
    app = asyncio.run_coroutine_threadsafe(
        HQApplication.open(config, storage=storage, interceptors=interceptors), loop
    ).result()
    return HQServer(app, loop), app.port
