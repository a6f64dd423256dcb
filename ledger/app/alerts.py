"""Spend alerts: set them, list them with their crossings, and evaluate a customer's.

Evaluation is idempotent and safe to run anywhere, any number of times at
once: each crossing is appended to its own stream expecting version 0, so
when several evaluators see the same crossing, the event store keeps the
first and refuses the rest (a version conflict, which means "already fired").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import (
    alert_crossing_stream,
    alerts_stream,
    customer_stream,
    usage_stream,
)
from ledger.core.alerts import (
    AlertKind,
    Crossing,
    Observed,
    PeriodSpend,
    SpendAlert,
    Watch,
    balance_points,
    next_balance_crossing,
    parse_alert,
    period_crossing,
)
from ledger.core.billing import CustomerState, begun_periods, contract_period, evolve, invoice_id
from ledger.core.codec import encode
from ledger.core.errors import DomainError, Rule, Violations, invalid
from ledger.core.events import SpendAlertSet, SpendAlertTriggered
from ledger.core.validation import check_id
from ledger.store.event_store import Pool, PostgresEventStore, read_head, read_streams, snapshot
from ledger.store.records import NEW_STREAM, NewEvent, StoredEvent

Conn = AsyncConnection[TupleRow]

ALERTS_PER_CUSTOMER_MAX: Final = 100
# The actor named on crossings: no caller asked for them, the ledger's own watch did.
ALERTS_ACTOR: Final = "accrual-alerts"
# Setting an alert expects the customer's alert stream at the version it read;
# another alert set meanwhile only means reading again.
SET_ATTEMPTS_MAX: Final = 5
# Balance crossings are numbered 1, 2, ... and looked up this many per query.
CROSSINGS_PER_LOOKUP: Final = 64
# Each evaluation pass records at most one crossing per alert; a balance that
# swung across its threshold more often than this between two evaluations has
# the rest recorded at its next one.
EVALUATION_PASSES_MAX: Final = 8

# The current period's spend for a customer at an instant (None: no contract then).
SpendReader = Callable[[str, datetime], Awaitable[PeriodSpend | None]]


@dataclass(frozen=True)
class AlertInput:
    """A SetSpendAlert request as it arrived (the threshold still text)."""

    alert_id: str
    customer_id: str
    kind: str
    threshold: str
    currency: str


@dataclass(frozen=True)
class FiredCrossing:
    """A recorded crossing, and its ledger position."""

    event: SpendAlertTriggered
    seq: int


@dataclass(frozen=True)
class AlertView:
    """An alert, when it was set, and the crossings it has fired (oldest first)."""

    alert: SpendAlert
    set_seq: int
    set_at: datetime
    crossings: tuple[FiredCrossing, ...]


@dataclass(frozen=True)
class _Set:
    alert: SpendAlert
    seq: int
    at: datetime


class SpendAlerts:
    """Set, list and evaluate spend alerts."""

    def __init__(
        self,
        pool: Pool,
        store: PostgresEventStore,
        clock: Callable[[], datetime],
        period_spend: SpendReader,
    ) -> None:
        self._pool = pool
        self._store = store
        self._clock = clock
        self._period_spend = period_spend

    async def set_alert(self, cmd: AlertInput, ctx: RequestContext) -> tuple[AlertView, int]:
        """Record the alert, then evaluate it at once: one set past its threshold fires now."""
        alert = parse_alert(
            alert_id=cmd.alert_id,
            customer_id=cmd.customer_id,
            kind=cmd.kind,
            threshold=cmd.threshold,
            currency=cmd.currency,
        )
        seq = await self._append_set(alert, ctx)
        await self.evaluate(alert.customer_id)
        views = await self.list_alerts(alert.customer_id)
        return next(v for v in views if v.alert.alert_id == alert.alert_id), seq

    async def list_alerts(self, customer_id: str) -> list[AlertView]:
        """A customer's alerts in the order they were set, each with its crossings."""
        violations = Violations()
        check_id(violations, "customer_id", customer_id)
        violations.raise_if_any()
        async with snapshot(self._pool) as conn:
            head = (await read_head(conn)).seq
            history = await read_streams(conn, [customer_stream(customer_id)], head)
            state = _customer(customer_id, history)
            if not state.exists:
                raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {customer_id!r}")
            now = self._clock()
            return [
                AlertView(s.alert, s.seq, s.at, await _fired(conn, s, state, now, head))
                for s in await _alerts_set(conn, customer_id, head)
            ]

    async def evaluate(self, customer_id: str) -> list[SpendAlertTriggered]:
        """Record every crossing the customer's alerts have made and not yet recorded.

        A pass finds at most the next crossing of each alert, and a balance may
        have crossed more than once since the last evaluation: passes repeat
        until one finds nothing.
        """
        recorded: list[SpendAlertTriggered] = []
        for _ in range(EVALUATION_PASSES_MAX):
            now = self._clock()
            found = await self._crossings(customer_id, now)
            if not found:
                break
            for alert, crossing in found:
                event = await self._record(alert, crossing, now)
                recorded += [event] if event is not None else []
        return recorded

    async def _crossings(
        self, customer_id: str, now: datetime
    ) -> list[tuple[SpendAlert, Crossing]]:
        """The next unrecorded crossing of each of the customer's alerts."""
        found: list[tuple[SpendAlert, Crossing]] = []
        async with snapshot(self._pool) as conn:
            head = (await read_head(conn)).seq
            alerts = await _alerts_set(conn, customer_id, head)
            if not alerts:
                return []
            history = await read_streams(conn, [customer_stream(customer_id)], head)
            observed = _observed(customer_id, history)
            for s in alerts:
                if s.alert.kind is AlertKind.REMAINING_BALANCE:
                    crossing = await _balance_crossing(conn, s, observed, now, head)
                    found += [(s.alert, crossing)] if crossing is not None else []
        return found + await self._period_crossings(customer_id, alerts, now)

    async def customers_with_alerts(self, through_seq: int) -> set[str]:
        """Every customer that has an alert set through ``through_seq``."""
        stored = await self._store.read_types([SpendAlertSet.EVENT_TYPE], 0, through_seq)
        return {_alert_set(event).alert.customer_id for event in stored}

    async def _append_set(self, alert: SpendAlert, ctx: RequestContext) -> int:
        async def decide() -> list[Write]:
            if not await self._store.stream_versions([customer_stream(alert.customer_id)]):
                raise DomainError(Rule.CUSTOMER_NOT_FOUND, f"no customer {alert.customer_id!r}")
            existing = await self._store.read_streams([alerts_stream(alert.customer_id)])
            if any(_alert_set(e).alert.alert_id == alert.alert_id for e in existing):
                message = f"customer {alert.customer_id!r} already has an alert {alert.alert_id!r}"
                raise DomainError(Rule.SPEND_ALERT_EXISTS, message)
            if len(existing) >= ALERTS_PER_CUSTOMER_MAX:
                limit = f"a customer has at most {ALERTS_PER_CUSTOMER_MAX} alerts"
                raise invalid("alert_id", limit)
            version = existing[-1].stream_version if existing else NEW_STREAM
            return [Write(alerts_stream(alert.customer_id), SpendAlertSet(alert), version)]

        # Any conflict, even on the first alert, is a concurrent set: read again.
        command = Command("SetSpendAlert", encode(alert), Rule.STREAM_VERSION_CONFLICT)
        for attempt in range(1, SET_ATTEMPTS_MAX + 1):
            try:
                _, seq = await run_command(self._store, ctx, command, decide, self._clock())
            except DomainError as error:
                if error.rule is not Rule.STREAM_VERSION_CONFLICT:
                    raise
                if attempt == SET_ATTEMPTS_MAX:
                    message = "the customer's alerts kept changing concurrently; retry"
                    raise DomainError(Rule.STREAM_VERSION_CONFLICT, message) from error
            else:
                return seq
        raise AssertionError("the loop returns or raises")

    async def _period_crossings(
        self, customer_id: str, alerts: Sequence[_Set], now: datetime
    ) -> list[tuple[SpendAlert, Crossing]]:
        watched = [s.alert for s in alerts if s.alert.kind is AlertKind.PERIOD_SPEND]
        if not watched:
            return []
        spend = await self._period_spend(customer_id, now)
        if spend is None:
            return []
        streams = {a.alert_id: _stream(a, spend.invoice_id) for a in watched}
        fired = await self._store.stream_versions(streams.values())
        found = [(a, period_crossing(a, spend, streams[a.alert_id] in fired, now)) for a in watched]
        return [(alert, crossing) for alert, crossing in found if crossing is not None]

    async def _record(
        self, alert: SpendAlert, crossing: Crossing, now: datetime
    ) -> SpendAlertTriggered | None:
        """Append the crossing on its own new stream; None if another evaluator did."""
        event = SpendAlertTriggered(
            alert_id=alert.alert_id,
            customer_id=alert.customer_id,
            crossing_key=crossing.crossing_key,
            value=crossing.value,
            threshold=alert.threshold,
            at=crossing.at,
            through_seq=crossing.through_seq,
        )
        new = NewEvent(
            stream_id=_stream(alert, crossing.crossing_key),
            event=event,
            occurred_at=now,
            metadata={"actor": ALERTS_ACTOR},
            expected_version=NEW_STREAM,
        )
        try:
            await self._store.append([new])
        except DomainError as error:
            if error.rule is not Rule.STREAM_VERSION_CONFLICT:
                raise
            return None  # already fired: recorded by whoever got there first
        return event


def touched_customer(stream_id: str) -> str | None:
    """The customer whose usage, balances, contracts or alerts a stream holds."""
    for prefix in (usage_stream(""), customer_stream(""), alerts_stream("")):
        if stream_id.startswith(prefix):
            return stream_id.removeprefix(prefix)
    return None


def is_alert_setting(stream_id: str) -> bool:
    return stream_id.startswith(alerts_stream(""))


def _stream(alert: SpendAlert, crossing_key: str) -> str:
    return alert_crossing_stream(alert.customer_id, alert.alert_id, crossing_key)


def _alert_set(stored: StoredEvent) -> SpendAlertSet:
    event = stored.domain_event()
    assert isinstance(event, SpendAlertSet), "alert streams hold only alert settings"
    return event


async def _alerts_set(conn: Conn, customer_id: str, head: int) -> list[_Set]:
    stored = await read_streams(conn, [alerts_stream(customer_id)], head)
    return [_Set(_alert_set(e).alert, e.seq, e.occurred_at) for e in stored]


def _customer(customer_id: str, history: Sequence[StoredEvent]) -> CustomerState:
    state = CustomerState(customer_id)
    for stored in history:
        state = evolve(state, stored.domain_event(), stored.stream_version)
    return state


def _observed(customer_id: str, history: Sequence[StoredEvent]) -> list[Observed]:
    """The customer's balances after each of its events."""
    state = CustomerState(customer_id)
    observed = []
    for stored in history:
        state = evolve(state, stored.domain_event(), stored.stream_version)
        observed.append(Observed(stored.seq, stored.occurred_at, state.balances))
    return observed


async def _balance_crossing(
    conn: Conn, alert_set: _Set, observed: Sequence[Observed], now: datetime, head: int
) -> Crossing | None:
    fired = await _balance_fired(conn, alert_set.alert, head)
    if fired:
        last = fired[-1].event
        watch = Watch(last.through_seq, last.at)
    else:
        watch = Watch(alert_set.seq, alert_set.at)
    alert = alert_set.alert
    points = balance_points(observed, alert.currency, watch, now, head)
    return next_balance_crossing(alert.threshold, len(fired), points)


async def _balance_fired(conn: Conn, alert: SpendAlert, head: int) -> list[FiredCrossing]:
    """Crossings 1, 2, ... of a balance alert: numbered without gaps, so the first
    missing number ends the lookup."""
    fired: list[FiredCrossing] = []
    while True:
        first = len(fired) + 1
        keys = [str(n) for n in range(first, first + CROSSINGS_PER_LOOKUP)]
        found = await read_streams(conn, [_stream(alert, key) for key in keys], head)
        fired += [FiredCrossing(_triggered(e), e.seq) for e in found]
        if len(found) < CROSSINGS_PER_LOOKUP:
            return sorted(fired, key=lambda c: int(c.event.crossing_key))


async def _fired(
    conn: Conn, alert_set: _Set, state: CustomerState, now: datetime, head: int
) -> tuple[FiredCrossing, ...]:
    if alert_set.alert.kind is AlertKind.REMAINING_BALANCE:
        return tuple(await _balance_fired(conn, alert_set.alert, head))
    keys = _period_keys(state, alert_set.at, now)
    found = await read_streams(conn, [_stream(alert_set.alert, key) for key in keys], head)
    return tuple(FiredCrossing(_triggered(e), e.seq) for e in found)


def _period_keys(state: CustomerState, since: datetime, now: datetime) -> list[str]:
    """Ids of every invoice (each revision) of the periods open at or after ``since``."""
    keys = []
    for contract_id, number in begun_periods(state, now):
        period = contract_period(state.contracts[contract_id], number)
        if period is None or period.end <= since:
            continue
        revisions = state.current_revision(contract_id, number) + 1
        keys += [invoice_id(contract_id, number, r) for r in range(revisions)]
    return keys


def _triggered(stored: StoredEvent) -> SpendAlertTriggered:
    event = stored.domain_event()
    assert isinstance(event, SpendAlertTriggered), "crossing streams hold only crossings"
    return event
