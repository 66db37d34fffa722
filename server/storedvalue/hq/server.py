"""The composition root: storage, services, servicers, health, reflection and the parameters
poller wired into one gRPC server, and `serve`, the process that runs it until a signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from concurrent import futures
from types import FrameType
from typing import Any, TextIO

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from storedvalue.hq.config import ADMIN_NAME, HQConfig, redacted_url, split_listen_address
from storedvalue.hq.domain.terminals import hash_token
from storedvalue.hq.grpc_api.back_office_servicer import BackOfficeServicer
from storedvalue.hq.grpc_api.method_handlers import add_servicer
from storedvalue.hq.grpc_api.reflection import add_reflection
from storedvalue.hq.grpc_api.terminal_servicer import TerminalServicer
from storedvalue.hq.services.auth import Authenticator
from storedvalue.hq.services.back_office import BackOfficeService
from storedvalue.hq.services.cards import CardService
from storedvalue.hq.services.offline import OfflineService
from storedvalue.hq.services.parameters import ParametersFeed, ParametersService
from storedvalue.hq.services.throttle import UnknownCardThrottle
from storedvalue.hq.services.unit_of_work import Storage
from storedvalue.hq.storage import SqlStorage, upgrade_to_head
from storedvalue.hq.structured_logging import configure_logging
from storedvalue.v1 import back_office_service_pb2, terminal_service_pb2

log = logging.getLogger(__name__)

TERMINAL_SERVICE_DESCRIPTOR = terminal_service_pb2.DESCRIPTOR.services_by_name["TerminalService"]
BACK_OFFICE_SERVICE_DESCRIPTOR = (
    back_office_service_pb2.DESCRIPTOR.services_by_name["BackOfficeService"]
)
TERMINAL_SERVICE = TERMINAL_SERVICE_DESCRIPTOR.full_name
BACK_OFFICE_SERVICE = BACK_OFFICE_SERVICE_DESCRIPTOR.full_name


class HQServer(grpc.Server):
    """The gRPC server plus what it owns. `start()` also starts the parameters poller;
    `stop(grace)` first reports NOT_SERVING and ends WatchParameters streams, then lets
    in-flight calls drain for `grace` seconds, then stops the poller and closes the storage
    (if `create_server` opened it). The event it returns is set when all of that is done."""

    def __init__(
        self,
        server: grpc.Server,
        *,
        health_servicer: health.HealthServicer,
        health_pool: futures.ThreadPoolExecutor,
        feed: ParametersFeed,
        parameters: ParametersService,
        poll_seconds: float,
        storage: Storage,
        owns_storage: bool,
    ) -> None:
        self._server = server
        self._health = health_servicer
        self._health_pool = health_pool
        self._feed = feed
        self._storage = storage
        self._owns_storage = owns_storage
        self._poll_stop = threading.Event()
        self._poller = threading.Thread(
            target=feed.follow,
            args=(parameters,),
            kwargs={"interval": poll_seconds, "stop": self._poll_stop},
            name="hq-parameters-poller",
            daemon=True,
        )
        self._stop_lock = threading.Lock()
        self._stopped: threading.Event | None = None

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Any) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service_name, method_handlers
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    def start(self) -> None:
        self._server.start()
        self._poller.start()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def stop(self, grace: float | None = None) -> threading.Event:
        with self._stop_lock:
            if self._stopped is not None:
                return self._stopped
            done = self._stopped = threading.Event()
        # Load balancers and terminal probes see NOT_SERVING before calls are refused.
        self._health.enter_graceful_shutdown()
        self._feed.close()  # open WatchParameters streams end within their wake-up period
        drained = self._server.stop(grace)

        def finish() -> None:
            drained.wait()
            self._poll_stop.set()
            if self._poller.is_alive():
                self._poller.join()
            self._health_pool.shutdown(wait=True)
            if self._owns_storage:
                self._storage.close()
            done.set()

        threading.Thread(target=finish, name="hq-shutdown", daemon=True).start()
        return done


def open_storage(config: HQConfig) -> Storage:
    """The configured database, migrated to the current schema."""
    upgrade_to_head(config.database_url)
    return SqlStorage.from_url(config.database_url, pool_size=max(4, config.max_workers // 2))


def create_server(
    config: HQConfig,
    *,
    storage: Storage | None = None,
    interceptors: Sequence[grpc.ServerInterceptor[Any, Any]] = (),
) -> tuple[HQServer, int]:
    """An HQ server bound to `config.listen` (port 0: any free port), not yet started.
    Without `storage`, opens (and on stop closes) the configured database. `interceptors`
    wrap every call (tests put a breakable link there)."""
    owns_storage = storage is None
    store = open_storage(config) if storage is None else storage
    try:
        feed = ParametersFeed()
        parameters = ParametersService(store, feed=feed)
        parameters.ensure_initialized()
        # One unknown-card limit per till, online and offline.
        throttle = UnknownCardThrottle(limit=config.unknown_card_limit)
        offline = OfflineService(store, limits=config.sync_limits, throttle=throttle)
        admins = {hash_token(config.admin_token): ADMIN_NAME} if config.admin_token else {}
        authenticator = Authenticator(
            store, admin_token_hashes=admins,
            bind_client_certificates=config.tls_client_ca_file is not None,
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers,
                                       thread_name_prefix="hq-rpc"),
            interceptors=list(interceptors),
            options=[
                ("grpc.max_receive_message_length", config.max_receive_message_bytes),
                ("grpc.max_send_message_length", config.max_receive_message_bytes),
                # A second HQ on the same port must fail to start, not share it silently.
                ("grpc.so_reuseport", 0),
            ],
        )
        add_servicer(
            server,
            TerminalServicer(
                authenticator=authenticator,
                cards=CardService(store, parameters_feed=feed, throttle=throttle),
                offline=offline,
                parameters=parameters,
                watch_poll_seconds=config.watch_wakeup_seconds,
            ),
            TERMINAL_SERVICE_DESCRIPTOR,
        )
        add_servicer(
            server,
            BackOfficeServicer(
                authenticator=authenticator,
                back_office=BackOfficeService(store),
                parameters=parameters,
            ),
            BACK_OFFICE_SERVICE_DESCRIPTOR,
        )
        health_pool = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="hq-health")
        health_servicer = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=health_pool
        )
        for name in ("", TERMINAL_SERVICE, BACK_OFFICE_SERVICE):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        add_reflection(server, (TERMINAL_SERVICE, BACK_OFFICE_SERVICE, health.SERVICE_NAME))
        port = _bind(server, config)
    except BaseException:
        if owns_storage:
            store.close()
        raise
    hq = HQServer(
        server,
        health_servicer=health_servicer,
        health_pool=health_pool,
        feed=feed,
        parameters=parameters,
        poll_seconds=config.parameters_poll_seconds,
        storage=store,
        owns_storage=owns_storage,
    )
    return hq, port


def _bind(server: grpc.Server, config: HQConfig) -> int:
    if config.uses_tls:
        assert config.tls_cert_file is not None and config.tls_key_file is not None
        client_ca = config.tls_client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())],
            root_certificates=client_ca.read_bytes() if client_ca is not None else None,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(config.listen, credentials)
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise OSError(f"could not listen on {config.listen}")
    return port


def serve(config: HQConfig, *, out: TextIO | None = None) -> int:
    """Run HQ until SIGTERM or SIGINT, then shut down gracefully. Returns the exit code."""
    configure_logging()
    printed = out or sys.stdout
    server, port = create_server(config)
    server.start()
    host, _ = split_listen_address(config.listen)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    database = redacted_url(config.database_url)
    token_source = (
        str(config.admin_token_file) if config.admin_token_file else "STOREDVALUE_ADMIN_TOKEN"
    )
    print(f"storedvalue HQ listening on {address} ({'TLS' if config.uses_tls else 'plaintext'})",
          file=printed)
    print(f"database: {database}", file=printed)
    print(f"admin token: {token_source}", file=printed, flush=True)
    log.info("serving", extra={"listen": address, "database": database,
                               "admin_token_source": token_source})

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stop requested", extra={"signal": signal.Signals(signum).name})
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # A timed wait keeps the main thread responsive to signal handlers.
        while not stop_requested.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    grace = config.grace_period_seconds
    log.info("draining", extra={"grace_period_seconds": grace})
    server.stop(grace).wait()
    log.info("stopped")
    return 0
