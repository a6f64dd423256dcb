"""Readiness: NOT_SERVING while the database is unreachable or migrations are pending.

A monitor checks every few seconds and flips the gRPC health status both
ways, so the service recovers without a restart once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from grpc_health.v1 import health, health_pb2

from ledger.store.event_store import Pool
from ledger.store.migrate import head_revision

_log = structlog.get_logger("accrual.health")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    def __init__(
        self,
        pool: Pool,
        servicer: health.aio.HealthServicer,
        services: Sequence[str],
        interval_s: float,
    ) -> None:
        self._pool = pool
        self._servicer = servicer
        self._services = ("", *services)
        self._interval_s = interval_s
        self._expected_revision = head_revision()
        self.serving: bool | None = None

    async def check(self) -> bool:
        """Whether the database answers and its schema is at the code's revision."""
        try:
            async with asyncio.timeout(self._interval_s), self._pool.connection() as conn:
                cur = await conn.execute("SELECT version_num FROM alembic_version")
                row = await cur.fetchone()
        except Exception as error:  # any failure (refused, timed out, broken) means not ready
            _log.debug("database check failed", error=type(error).__name__)
            return False
        return row is not None and row[0] == self._expected_revision

    async def update(self) -> None:
        ready = await self.check()
        if ready != self.serving:
            log = _log.info if ready else _log.warning
            log("readiness changed", serving=ready)
            for name in self._services:
                await self._servicer.set(name, SERVING if ready else NOT_SERVING)
            self.serving = ready

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.update()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
