"""The auditor's entry point: replay, verification, the audit log and simulations."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Final

from ledger.app.audit import ReplayItem, SimulationRow, replay_customer, simulate_pricing
from ledger.app.catalog import CatalogCommands
from ledger.core.errors import DomainError, Rule, Violations, invalid
from ledger.store.event_store import Pool, PostgresEventStore
from ledger.store.verify import VerifyReport, verify_progress
from projections.audit_log import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, AuditEntry, AuditLog, AuditQuery
from projections.engine import checkpoint_of
from projections.invoicing import Invoicing, ReplayCheck
from projections.registry import live_version

CONSISTENCY_POLL_S: Final = 0.02
CONSISTENCY_WAIT_S: Final = 5.0


@dataclass(frozen=True)
class Simulation:
    rows: list[SimulationRow]

    def totals(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Per currency: (current, simulated)."""
        totals: dict[str, tuple[Decimal, Decimal]] = {}
        for row in self.rows:
            current, simulated = totals.get(row.currency, (Decimal(0), Decimal(0)))
            totals[row.currency] = (current + row.current_total, simulated + row.simulated_total)
        return totals


def check_range(from_seq: int, to_seq: int | None) -> None:
    """A verification range must start at 1 or later and not end before it starts."""
    if from_seq < 1:
        raise invalid("from_seq", "must be 1 or more")
    if to_seq is not None and to_seq < from_seq:
        raise invalid("to_seq", "must not be below from_seq")


class Auditing:
    def __init__(
        self,
        pool: Pool,
        *,
        store: PostgresEventStore,
        catalog: CatalogCommands,
        invoicing: Invoicing,
        audit_log: Callable[[int], AuditLog],
    ) -> None:
        self._pool = pool
        self._store = store
        self._catalog = catalog
        self._invoicing = invoicing
        self._audit_log = audit_log

    async def replay_customer(
        self,
        customer_id: str,
        *,
        up_to_seq: int | None = None,
        up_to_time: datetime | None = None,
        rate_card_id: str = "",
        rate_card_version: int = 0,
    ) -> AsyncIterator[ReplayItem]:
        pricing = (
            await self._catalog.get_rate_card(rate_card_id, rate_card_version)
            if rate_card_id
            else None
        )
        async for item in replay_customer(
            self._pool, customer_id, up_to_seq=up_to_seq, up_to_time=up_to_time, pricing=pricing
        ):
            yield item

    async def verify_invoice(self, invoice_id: str) -> ReplayCheck:
        if not invoice_id:
            raise invalid("invoice_id", "is required")
        return await self._invoicing.verify_finalized(invoice_id)

    def verify_ledger(self, from_seq: int, to_seq: int | None) -> AsyncIterator[VerifyReport]:
        check_range(from_seq, to_seq)
        return verify_progress(self._store, from_seq, to_seq)

    async def entries(
        self, query: AuditQuery, consistency_token: int = 0
    ) -> tuple[list[AuditEntry], str]:
        """A page of the audit log and the next page's token ('' at the end).

        With a consistency token, waits (bounded) until the log has caught up
        with that ledger position; a token beyond the ledger is refused.
        """
        if query.page_size < 0:
            raise invalid("page_size", "must not be negative")
        size = min(query.page_size or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
        await self._wait_for(consistency_token)
        async with self._pool.connection() as conn:
            log = self._audit_log(await live_version(conn, AuditLog.name))
            entries = await log.entries(conn, dataclasses.replace(query, page_size=size))
        token = str(entries[-1].seq) if len(entries) == size else ""
        return entries, token

    async def _wait_for(self, consistency_token: int) -> None:
        if consistency_token <= 0:
            return
        if consistency_token > (await self._store.head()).seq:
            raise invalid("consistency_token", "is beyond the ledger's head")
        deadline = time.monotonic() + CONSISTENCY_WAIT_S
        while True:
            async with self._pool.connection() as conn:
                version = await live_version(conn, AuditLog.name)
                if await checkpoint_of(conn, AuditLog.name, version) >= consistency_token:
                    return
            if time.monotonic() > deadline:
                message = "the audit log has not caught up with the consistency token yet"
                raise DomainError(Rule.NOT_CAUGHT_UP, message)
            await asyncio.sleep(CONSISTENCY_POLL_S)

    async def simulate(
        self, rate_card_id: str, version: int, start: datetime | None, end: datetime | None
    ) -> Simulation:
        violations = Violations()
        if start is None:
            violations.add("start", "is required")
        if end is None:
            violations.add("end", "is required")
        if start is not None and end is not None and end <= start:
            violations.add("end", "must be after start")
        violations.raise_if_any()
        assert start is not None
        assert end is not None
        pricing = await self._catalog.get_rate_card(rate_card_id, version)
        return Simulation(await simulate_pricing(self._pool, pricing, start, end))
