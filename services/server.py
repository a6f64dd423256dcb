"""The gRPC server: servicers, health checking and reflection on one port."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc
import structlog
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from ledger.app.context import RequestContext
from services.alerting import AlertFollower
from services.api.accrual.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    balances_pb2,
    balances_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    reports_pb2,
    reports_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from services.auth.guard import DenialLog, Guard
from services.auth.limits import RateLimiter
from services.auth.policy import undecided
from services.auth.principals import Principal
from services.bootstrap import App
from services.config import TlsFiles
from services.draining import CallsInFlight, stop_when_drained
from services.errors import DecodeRequests
from services.handlers import GenericHandlerRegistry, WrappedRegistration
from services.health import HealthMonitor
from services.request import trace_ids
from services.servicers.alerts import AlertServicer
from services.servicers.audit import AuditServicer
from services.servicers.balances import BalanceServicer
from services.servicers.catalog import CatalogServicer
from services.servicers.contracts import ContractServicer
from services.servicers.invoices import InvoiceServicer
from services.servicers.reports import ReportingServicer
from services.servicers.usage import UsageServicer

# Liveness, unlike readiness, stays SERVING while the database is away: a pod that
# cannot reach its database should stop getting traffic, not be restarted.
LIVENESS: Final = "accrual.liveness"
MESSAGE_BYTES_MAX: Final = 8 * 1024 * 1024
SHUTDOWN_GRACE_S: Final = 10.0

SERVICE_NAMES: Final = (
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
    catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    contracts_pb2.DESCRIPTOR.services_by_name["ContractService"].full_name,
    invoices_pb2.DESCRIPTOR.services_by_name["InvoiceService"].full_name,
    alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name,
    balances_pb2.DESCRIPTOR.services_by_name["BalanceService"].full_name,
    reports_pb2.DESCRIPTOR.services_by_name["ReportingService"].full_name,
)

_log = structlog.get_logger("accrual.server")


@dataclass(frozen=True)
class Server:
    """A bound server, its port, and its health servicer."""

    grpc_server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    calls: CallsInFlight
    # The alert watch runs while the server serves: in every server process, never
    # in one-off commands or the projector (whose database role may not append).
    alerting: AlertFollower | None = None

    async def start(self) -> None:
        await self.grpc_server.start()
        for name in ("", *SERVICE_NAMES, LIVENESS):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.alerting is not None:
            self.alerting.start()

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await stop_when_drained(self.grpc_server, self.calls, grace_s)
        if self.alerting is not None:
            await self.alerting.stop()


def create_server(app: App, address: str, interceptors: Sequence[object] = ()) -> Server:
    """A server with every service registered, bound to ``address`` (port 0: any).

    Every Accrual call is counted for draining, decoded tolerantly and passes the
    :class:`Guard`, wrapped once per method (inside ``interceptors``, tracing's,
    so refusals are traced too); TLS, and mutual TLS, as the settings say.
    """
    if missing := undecided(_methods(SERVICE_NAMES)):
        raise RuntimeError(f"no access policy for {', '.join(missing)}: add it to PERMISSIONS")
    calls = CallsInFlight()
    server = grpc.aio.server(
        interceptors=list(interceptors) or None,
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ],
    )
    register_accrual_services(app, server, calls)
    health_servicer = health.aio.HealthServicer()
    open_services = WrappedRegistration(server, [])  # open and uncounted: no wrappers
    open_services.register(health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
    open_services.register(
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
        reflection.aio.ReflectionServicer(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME)
        ),
    )
    port = _bind(server, address, app.settings.tls)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return Server(server, port, health_servicer, calls, alerting=app.alerting)


def register_accrual_services(
    app: App, server: GenericHandlerRegistry, calls: CallsInFlight
) -> None:
    """Every Accrual service on ``server`` (a ``grpc.aio.Server``, or anything that
    takes generic handlers), each method counted by ``calls``, decoded tolerantly
    and guarded: what a call runs through, apart from gRPC itself."""
    limiter = RateLimiter(app.settings.rate_limit_per_s, app.settings.rate_limit_burst)
    guard = Guard(app.credentials, limiter, _denial_recorder(app))
    accrual = WrappedRegistration(server, [calls, DecodeRequests(), guard])
    accrual.register(
        usage_pb2_grpc.add_UsageServiceServicer_to_server, UsageServicer(app.record_usage)
    )
    accrual.register(
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server, CatalogServicer(app.catalog)
    )
    accrual.register(
        contracts_pb2_grpc.add_ContractServiceServicer_to_server, ContractServicer(app.customers)
    )
    accrual.register(
        invoices_pb2_grpc.add_InvoiceServiceServicer_to_server, InvoiceServicer(app.invoicing)
    )
    accrual.register(audit_pb2_grpc.add_AuditServiceServicer_to_server, AuditServicer(app.auditing))
    accrual.register(alerts_pb2_grpc.add_AlertServiceServicer_to_server, AlertServicer(app.alerts))
    accrual.register(
        balances_pb2_grpc.add_BalanceServiceServicer_to_server,
        BalanceServicer(app.grants, app.balances, app.entitlements),
    )
    accrual.register(
        reports_pb2_grpc.add_ReportingServiceServicer_to_server,
        ReportingServicer(app.reporting, app.forecasting, app.statements, app.costs),
    )


def _bind(server: grpc.aio.Server, address: str, tls: TlsFiles | None) -> int:
    if tls is None:
        return int(server.add_insecure_port(address))
    client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    credentials = grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
    return int(server.add_secure_port(address, credentials))


def _methods(service_names: Sequence[str]) -> list[str]:
    pool = descriptor_pool.Default()
    return [
        f"/{name}/{method.name}"
        for name in service_names
        for method in pool.FindServiceByName(name).methods
    ]


# Each denial is a ledger event, but a principal hammering a forbidden method must
# not be able to grow the ledger at its full call rate: past this allowance its
# denials are still refused and logged, just not appended.
DENIALS_RECORDED_PER_S: Final = 1.0
DENIALS_RECORDED_BURST: Final = 20.0


def _denial_recorder(app: App) -> DenialLog:
    allowance = RateLimiter(DENIALS_RECORDED_PER_S, DENIALS_RECORDED_BURST)

    async def record(principal: Principal, method: str, reason: str) -> None:
        if allowance.admit(principal.name) > 0:
            _log.warning("denial not recorded: over the audit allowance", principal=principal.name)
            return
        trace_id, span_id = trace_ids()
        ctx = RequestContext(actor=principal.name, trace_id=trace_id, span_id=span_id)
        try:
            await app.access_audit.denied(method, reason, ctx)
        except Exception:  # the refusal stands even when it cannot be recorded
            _log.exception("could not record a denial", principal=principal.name, method=method)

    return record


# Allocations between young collections (CPython: 700). A usage-rollup rebuild
# of 1M events ran about 1.06x faster with 100,000 than with 20,000 (median of
# three alternating runs each).
GC_YOUNG_THRESHOLD: Final = 100_000
# The server's, lower: every call leaves a few objects in reference cycles inside
# gRPC (its echo server does too), and a young collection frees them all at once.
# Under 64 single-event callers, at 100,000 those collections paused the server
# for 36-140 ms every 4-5 s; at 20,000, for at most 9 ms (older ones, 22). Batched
# ingest's CPU an event was the same at both, within the runs' spread. A server
# that also projects (the default) projects at this threshold too.
SERVING_GC_YOUNG_THRESHOLD: Final = 20_000
GC_OLDER_THRESHOLDS: Final = (20, 20)


def tune_garbage_collector(young_threshold: int = GC_YOUNG_THRESHOLD) -> None:
    """Fewer cyclic collections, over fewer objects: ``young_threshold`` for a
    process that projects or rebuilds, :data:`SERVING_GC_YOUNG_THRESHOLD` for one
    that answers calls.

    A batch of usage allocates hundreds of thousands of short-lived objects that
    reference counting frees; at CPython's defaults the cyclic collector still
    ran every 700 allocations, a fifth of the append path's time (store append
    of 100,000 events: about 55,000 events/s before, 67,000 after). What is
    alive once serving starts (modules, descriptors, the wiring) lives as long
    as the process, so it is frozen out of every collection. ``accrual
    project`` and ``accrual rebuild`` take the default threshold; ``accrual
    serve`` the serving one.
    """
    gc.collect()  # garbage of startup is collected, not frozen with the rest
    gc.freeze()
    gc.set_threshold(young_threshold, *GC_OLDER_THRESHOLDS)


async def serve(app: App, address: str, interceptors: Sequence[object] = ()) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully.

    On a signal: health turns NOT_SERVING, new calls are refused, calls in
    flight get the grace period to finish, then the pool closes (the caller's
    ``running_app`` context).
    """
    server = create_server(app, address, interceptors)
    await server.start()
    tune_garbage_collector(SERVING_GC_YOUNG_THRESHOLD)
    host = address.rpartition(":")[0]
    _log.info("serving", address=f"{host}:{server.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    monitor = HealthMonitor(
        app.pool, server.health, SERVICE_NAMES, app.settings.health_check_interval_s
    )
    watching = asyncio.create_task(monitor.run(stop))
    await stop.wait()
    _log.info("shutting down", grace_s=SHUTDOWN_GRACE_S)
    await server.stop()
    await watching
