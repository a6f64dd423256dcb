"""RecordUsage: validate each event, write the good ones, answer each in order."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Final, NamedTuple

from ledger.app.catalog import KnownMetrics, MetricRegistry
from ledger.app.context import RequestContext
from ledger.app.streams import customer_stream, usage_stream
from ledger.core.canonical import format_instant, sha256_hex
from ledger.core.catalog import BillableMetric
from ledger.core.errors import DomainError, FieldViolation, Rule
from ledger.core.events import UsageRecorded, usage_payload_bytes
from ledger.core.metering import matches
from ledger.core.money import is_decimal_text
from ledger.core.validation import ID_PATTERN, UsagePolicy, UsageScreen
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import (
    ANY_VERSION,
    Appended,
    AppendOutcome,
    ConditionFailedError,
    Duplicate,
    KeyReused,
    NewEvent,
    NoneAfter,
)

BATCH_EVENTS_MAX: Final = 1_000
KNOWN_CUSTOMERS_MAX: Final = 100_000  # remembered customer streams, least recent dropped
# Screenings of one call, each after a metric was created while the last was written.
SCREENINGS_MAX: Final = 3
Appender = Callable[[Sequence[NewEvent], Sequence[NoneAfter]], Awaitable[list[AppendOutcome]]]


class UsageStatus(StrEnum):
    """A string, so that counting and looking up a batch's statuses hashes in C."""

    ACCEPTED = "ACCEPTED"
    DUPLICATE = "DUPLICATE"
    REJECTED = "REJECTED"


class UsageInput(NamedTuple):
    """One event of a RecordUsage call, as the caller sent it.

    Named tuples, here and for results: a batch builds a thousand of each, and a
    frozen dataclass sets every field through ``object.__setattr__``."""

    transaction_id: str
    customer_id: str
    event_type: str
    occurred_at: datetime | None
    properties: Mapping[str, str]


class UsageResult(NamedTuple):
    transaction_id: str
    status: UsageStatus
    reason: str = ""
    seq: int = 0


def _result(item: UsageInput, outcome: AppendOutcome) -> UsageResult:
    if isinstance(outcome, Appended):
        return UsageResult(item.transaction_id, UsageStatus.ACCEPTED, "", outcome.seq)
    if isinstance(outcome, Duplicate):
        return UsageResult(item.transaction_id, UsageStatus.DUPLICATE, "", outcome.seq)
    assert isinstance(outcome, KeyReused)
    reason = "transaction_id was already used for a different event"
    return UsageResult(item.transaction_id, UsageStatus.REJECTED, reason, outcome.seq)


class RecordUsage:
    """Idempotent per (customer_id, transaction_id); a bad event never blocks the rest."""

    def __init__(
        self,
        store: PostgresEventStore,
        metrics: MetricRegistry,
        clock: Callable[[], datetime],
        policy: UsagePolicy,
        append: Appender | None = None,
    ) -> None:
        self._store = store
        # Usually a group committer's append: concurrent calls share a transaction.
        self._append = append or store.append
        self._metrics = metrics
        self._clock = clock
        self._policy = policy
        # Customer streams seen to exist. The ledger is append-only, so a customer
        # once known stays known: later calls for it skip the lookup.
        self._known_customers: OrderedDict[str, None] = OrderedDict()

    async def __call__(self, items: Sequence[UsageInput], ctx: RequestContext) -> list[UsageResult]:
        if len(items) > BATCH_EVENTS_MAX:
            raise DomainError(
                Rule.BATCH_TOO_LARGE,
                f"{len(items)} events in one call; the limit is {BATCH_EVENTS_MAX}",
                (FieldViolation("events", f"at most {BATCH_EVENTS_MAX} events per call"),),
            )
        metrics = await self._metrics.known()
        for screening in range(1, SCREENINGS_MAX + 1):
            try:
                return await self._screened_and_written(items, ctx, metrics)
            except ConditionFailedError:
                if screening == SCREENINGS_MAX:
                    break
                metrics = await self._metrics.refresh(metrics)
        raise DomainError(
            Rule.METRICS_CHANGING, "billable metrics kept changing during the call; retry"
        )

    async def _screened_and_written(
        self, items: Sequence[UsageInput], ctx: RequestContext, metrics: KnownMetrics
    ) -> list[UsageResult]:
        """Each event screened with ``metrics``, and the good ones appended on the
        condition that those are still all the metrics there are."""
        rejections = await self._rejections(items, metrics)
        # A retry is answered from the ledger, whatever the rules say now: the late
        # window or a new metric may refuse now what was accepted then. So an event
        # the rules refuse is looked up; the append itself answers retries of the
        # others, and the common call (new, valid events) reads no keys first.
        refused = [i for i, reason in zip(items, rejections, strict=True) if reason is not None]
        earlier = dict(zip(map(id, refused), await self._earlier_results(refused), strict=True))
        writable = [i for i, reason in zip(items, rejections, strict=True) if reason is None]
        metadata = ctx.metadata()  # one mapping per call: its bytes are encoded once
        news = [self._new_event(i, metadata) for i in writable]
        outcomes = iter(await self._append(news, (metrics.unchanged,)) if news else ())
        results = []
        for item, reason in zip(items, rejections, strict=True):
            if reason is None:
                results.append(_result(item, next(outcomes)))
            elif (answered := earlier[id(item)]) is not None:
                results.append(answered)
            else:
                results.append(UsageResult(item.transaction_id, UsageStatus.REJECTED, reason))
        return results

    async def _earlier_results(self, items: Sequence[UsageInput]) -> list[UsageResult | None]:
        """DUPLICATE (or REJECTED for another event) for keys already in the ledger."""
        if not items:
            return []
        keys = [usage_key(i.customer_id, i.transaction_id) for i in items]
        # Malformed ids never reach a query: validation has refused those events.
        found = await self._store.find_keys(
            [k for k, i in zip(keys, items, strict=True) if _ids_ok(i)]
        )
        results: list[UsageResult | None] = []
        for item, key in zip(items, keys, strict=True):
            earlier = found.get(key)
            if earlier is None:
                results.append(None)
                continue
            seq, digest = earlier
            same = item.occurred_at is not None and digest == _hash(_event(item))
            results.append(_result(item, Duplicate(seq) if same else KeyReused(seq)))
        return results

    async def _rejections(
        self, items: Sequence[UsageInput], metrics: KnownMetrics
    ) -> list[str | None]:
        screen = UsageScreen(self._policy, self._clock())
        # Only well-formed customer ids reach the lookup; each is looked up once.
        customer_ids = {c for c in {i.customer_id for i in items} if ID_PATTERN.fullmatch(c)}
        streams = {customer_stream(c): c for c in customer_ids}
        known = {streams[stream] for stream in await self._known(set(streams))}
        numeric = _numeric_properties(metrics.metrics.values())
        rejections: list[str | None] = []
        for item in items:
            reason = screen.rejection(
                item.customer_id,
                item.transaction_id,
                item.event_type,
                item.occurred_at,
                item.properties,
            )
            if reason is None and item.customer_id not in known:
                reason = f"customer_id {item.customer_id!r} is not a known customer"
            if reason is None and numeric:
                reason = _non_decimal_quantity(item, numeric)
            rejections.append(reason)
        return rejections

    async def _known(self, streams: set[str]) -> set[str]:
        """Which of the customer streams exist: remembered ones, and a lookup of the rest."""
        found = {stream for stream in streams if stream in self._known_customers}
        if missing := streams - found:
            found |= set(await self._store.stream_versions(missing))
        for stream in found:
            self._known_customers[stream] = None
            self._known_customers.move_to_end(stream)
        while len(self._known_customers) > KNOWN_CUSTOMERS_MAX:
            self._known_customers.popitem(last=False)
        return found

    def _new_event(self, item: UsageInput, metadata: Mapping[str, str]) -> NewEvent:
        return usage_to_append(_event(item), metadata)


def _ids_ok(item: UsageInput) -> bool:
    return bool(
        ID_PATTERN.fullmatch(item.customer_id) and ID_PATTERN.fullmatch(item.transaction_id)
    )


def usage_to_append(event: UsageRecorded, metadata: Mapping[str, str]) -> NewEvent:
    """What RecordUsage appends for a usage event: its stream, idempotency key and
    request hash, and its payload encoded once (the hash is of those bytes)."""
    occurred = format_instant(event.occurred_at)
    payload = usage_payload_bytes(event, occurred)
    digest = sha256_hex(payload)
    # Positional: a named tuple built with keywords costs a third more.
    return NewEvent(
        usage_stream(event.customer_id),  # stream_id
        event,
        event.occurred_at,
        metadata,
        usage_key(event.customer_id, event.transaction_id),  # idempotency_key
        digest,  # request_hash
        ANY_VERSION,  # expected_version
        payload,
        digest,  # payload_sha256
        occurred,  # occurred_at_text
    )


def usage_key(customer_id: str, transaction_id: str) -> str:
    """The idempotency key of a usage event: unambiguous for any pair of ids.

    It is ``usage:`` and the canonical JSON of the pair, written out directly (a
    property test holds it equal): one is built for every event ingested."""
    return f"usage:[{encode_basestring(customer_id)},{encode_basestring(transaction_id)}]"


def _event(item: UsageInput) -> UsageRecorded:
    assert item.occurred_at is not None, "validated before writing"
    # Positional, and sharing the caller's properties: the event is encoded at
    # once and then dropped, and a copy of them cost 0.3 us an event.
    return UsageRecorded(
        item.customer_id, item.transaction_id, item.event_type, item.occurred_at, item.properties
    )


def _hash(event: UsageRecorded) -> str:
    return sha256_hex(usage_payload_bytes(event))


def _numeric_properties(metrics: Iterable[BillableMetric]) -> list[tuple[str, BillableMetric]]:
    """The metrics that aggregate a number, with the property each reads."""
    return [(m.property, m) for m in metrics if m.property and m.aggregation.needs_number]


def _non_decimal_quantity(
    item: UsageInput, numeric: Sequence[tuple[str, BillableMetric]]
) -> str | None:
    """A metric-matched event whose aggregated property is present but not a number.

    Refused at the door so the caller can fix it; a *missing* property is accepted
    and shown as unbilled usage on the invoice (PRICING.md).
    """
    assert item.occurred_at is not None
    for name, metric in numeric:
        if is_decimal_text(item.properties.get(name, "0")):
            continue
        # Only now is the event built to ask the metric: nearly every event passes.
        probe = UsageRecorded(
            item.customer_id,
            item.transaction_id,
            item.event_type,
            item.occurred_at,
            item.properties,
        )
        if matches(metric, probe):
            return f"property {name!r} must be a decimal number (metric {metric.metric_id})"
    return None
