"""The gRPC server: servicers, health checking and reflection on one port."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.api.accrual.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from services.bootstrap import App
from services.errors import DecodeRequests
from services.health import HealthMonitor
from services.servicers.audit import AuditServicer
from services.servicers.catalog import CatalogServicer
from services.servicers.contracts import ContractServicer
from services.servicers.invoices import InvoiceServicer
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
)

_log = structlog.get_logger("accrual.server")


@dataclass(frozen=True)
class Server:
    """A bound server, its port, and its health servicer."""

    grpc_server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def start(self) -> None:
        await self.grpc_server.start()
        for name in ("", *SERVICE_NAMES, LIVENESS):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Refuse new calls, let in-flight ones finish within the grace period."""
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace_s)


def create_server(app: App, address: str, interceptors: Sequence[object] = ()) -> Server:
    """A server with every service registered, bound to ``address`` (port 0: any)."""
    server = grpc.aio.server(
        interceptors=[DecodeRequests(), *interceptors],
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ],
    )
    usage_pb2_grpc.add_UsageServiceServicer_to_server(UsageServicer(app.record_usage), server)
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(app.catalog), server)
    contracts_pb2_grpc.add_ContractServiceServicer_to_server(
        ContractServicer(app.customers), server
    )
    invoices_pb2_grpc.add_InvoiceServiceServicer_to_server(InvoiceServicer(app.invoicing), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(app.auditing), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return Server(server, port, health_servicer)


async def serve(app: App, address: str, interceptors: Sequence[object] = ()) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully.

    On a signal: health turns NOT_SERVING, new calls are refused, calls in
    flight get the grace period to finish, then the pool closes (the caller's
    ``running_app`` context).
    """
    server = create_server(app, address, interceptors)
    await server.start()
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
