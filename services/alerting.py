"""The alert watch: follows the ledger and evaluates the alerts of every customer
whose usage, balances, contracts or alerts just changed.

It runs in each server process beside the gRPC server (as the service's
database role: it appends, which the projector's role may not). Its position
lives in memory only: on start it evaluates every customer with alerts once,
which finds whatever crossed while no watch ran, and then follows the head.
Evaluation is idempotent and each crossing can be appended only once, so any
number of replicas may watch at once, and a restart never fires twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Final

import structlog

from ledger.app.alerts import SpendAlerts, SpendReader, is_alert_setting, touched_customer
from ledger.core.alerts import PeriodSpend
from ledger.core.errors import DomainError, Rule
from ledger.store.event_store import PostgresEventStore
from projections.invoicing import Invoicing

POLL_INTERVAL_S: Final = 0.2
RETRY_DELAY_S: Final = 2.0
BATCH_EVENTS_MAX: Final = 2_000
STOP_WAIT_S: Final = 5.0

_log = structlog.get_logger("accrual.alerts")


def current_spend(invoicing: Invoicing) -> SpendReader:
    """Period spend as alerts see it: the subtotal of the live invoice covering ``at``."""

    async def read(customer_id: str, at: datetime) -> PeriodSpend | None:
        try:
            view = await invoicing.get(customer_id=customer_id, at=at)
        except DomainError as error:
            if error.rule is Rule.INVOICE_NOT_FOUND:
                return None  # no contract in force: no period to spend in
            raise
        invoice = view.invoice
        return PeriodSpend(
            invoice.invoice_id, invoice.subtotal, invoice.currency, invoice.computed_through_seq
        )

    return read


class AlertFollower:
    """Evaluates alerts as the ledger grows, as a background task of the server."""

    def __init__(
        self, store: PostgresEventStore, alerts: SpendAlerts, poll_s: float = POLL_INTERVAL_S
    ) -> None:
        self._store = store
        self._alerts = alerts
        self._poll_s = poll_s
        self._watched: set[str] = set()
        # Customers whose evaluation failed, tried again after a delay: one that
        # keeps failing must not hold up every other customer's alerts.
        self._failed: set[str] = set()
        self._retry_at = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start watching in the running event loop (again after a stop)."""
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self.run(self._stop), name="accrual-alerts")

    async def stop(self) -> None:
        """Finish the evaluation under way (within a few seconds) and stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        with contextlib.suppress(TimeoutError):  # then wait_for has cancelled it
            await asyncio.wait_for(task, STOP_WAIT_S)

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every alert once, then each batch of new events, until ``stop``.

        When the ledger cannot be read (the database away, say), the same
        position is read again after a delay, so no event goes unexamined.
        """
        position: int | None = None
        while not stop.is_set():
            try:
                if position is None:
                    position = await self._evaluate_all()
                position, caught_up = await self._follow(position)
            except Exception:
                _log.exception("reading the ledger for alerts failed; retrying")
                await _pause(stop, RETRY_DELAY_S)
                continue
            if caught_up:
                await _pause(stop, self._poll_s)

    async def _evaluate_all(self) -> int:
        head = (await self._store.head()).seq
        self._watched = await self._alerts.customers_with_alerts(head)
        await self._evaluate_each(self._watched)
        return head

    async def _follow(self, position: int) -> tuple[int, bool]:
        """Evaluate the customers touched after ``position`` (and any due for a retry);
        the new position, and whether it is the head."""
        touched = await self._store.streams_touched_after(position, BATCH_EVENTS_MAX)
        customers = self._touched(touched.stream_ids)
        if self._failed and time.monotonic() >= self._retry_at:
            customers |= self._failed
        await self._evaluate_each(customers)
        return touched.last_seq, touched.events < BATCH_EVENTS_MAX

    async def _evaluate_each(self, customers: Iterable[str]) -> None:
        for customer_id in sorted(customers):
            try:
                await self._evaluate(customer_id)
            except Exception:
                _log.exception("alert evaluation failed; retrying", customer_id=customer_id)
                self._failed.add(customer_id)
                self._retry_at = time.monotonic() + RETRY_DELAY_S
            else:
                self._failed.discard(customer_id)

    def _touched(self, stream_ids: Iterable[str]) -> set[str]:
        """Customers with alerts among those the events concern (crossings touch none,
        so recording one never causes another evaluation)."""
        touched = set()
        for stream_id in stream_ids:
            customer_id = touched_customer(stream_id)
            if customer_id is None:
                continue
            if is_alert_setting(stream_id):
                self._watched.add(customer_id)
            if customer_id in self._watched:
                touched.add(customer_id)
        return touched

    async def _evaluate(self, customer_id: str) -> None:
        for event in await self._alerts.evaluate(customer_id):
            _log.info(
                "spend alert crossed",
                customer_id=event.customer_id,
                alert_id=event.alert_id,
                crossing=event.crossing_key,
                value=str(event.value),
                threshold=str(event.threshold),
            )


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
