"""Catalog commands: billable metrics, products and rate card versions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.streams import metric_stream, product_stream, rate_card_stream
from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    FilterOp,
    Product,
    PropertyFilter,
    Rate,
    RateCardVersion,
    RateModel,
)
from ledger.core.codec import encode
from ledger.core.errors import DomainError, Rule, Violations
from ledger.core.events import BillableMetricCreated, ProductCreated, RateCardPublished
from ledger.core.money import currency_decimals
from ledger.core.validation import (
    check_id,
    check_metric,
    check_price,
    check_rate_model,
    check_text,
)
from ledger.store.event_store import PostgresEventStore


class MetricRegistry:
    """Every billable metric, kept current by reading only new metric events."""

    def __init__(self, store: PostgresEventStore) -> None:
        self._store = store
        self._metrics: dict[str, BillableMetric] = {}
        self._seen_seq = 0
        self._lock = asyncio.Lock()

    async def current(self) -> dict[str, BillableMetric]:
        async with self._lock:
            events = await self._store.read_types(["BillableMetricCreated"], self._seen_seq)
            for stored in events:
                event = stored.domain_event()
                assert isinstance(event, BillableMetricCreated)
                self._metrics[event.metric.metric_id] = event.metric
                self._seen_seq = stored.seq
            return dict(self._metrics)


@dataclass(frozen=True)
class MetricInput:
    metric_id: str
    name: str
    event_type: str
    aggregation: str
    property: str
    filters: list[tuple[str, str, list[str]]] = field(default_factory=list)
    group_by: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RateInput:
    product_id: str
    model: str
    unit_price: str
    group_values: Mapping[str, str] = field(default_factory=dict)
    minimum: str = ""
    maximum: str = ""


@dataclass(frozen=True)
class RateCardInput:
    rate_card_id: str
    name: str
    currency: str
    currency_decimals: int | None
    effective_from: datetime | None
    rates: Sequence[RateInput]


class CatalogCommands:
    """Create metrics and products; publish immutable rate card versions."""

    def __init__(self, store: PostgresEventStore, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock

    async def create_metric(
        self, cmd: MetricInput, ctx: RequestContext
    ) -> tuple[BillableMetric, int]:
        async def decide() -> list[Write]:
            metric = _metric(cmd)
            return [Write(metric_stream(cmd.metric_id), BillableMetricCreated(metric), 0)]

        command = Command("CreateBillableMetric", encode(cmd), Rule.METRIC_EXISTS)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, BillableMetricCreated)
        return event.metric, seq

    async def create_product(self, product: Product, ctx: RequestContext) -> tuple[Product, int]:
        async def decide() -> list[Write]:
            violations = Violations()
            check_id(violations, "product.product_id", product.product_id)
            check_text(violations, "product.name", product.name)
            check_id(violations, "product.metric_id", product.metric_id)
            violations.raise_if_any()
            if not await self._store.stream_versions([metric_stream(product.metric_id)]):
                violations.add("product.metric_id", f"unknown metric {product.metric_id!r}")
                violations.raise_if_any()
            return [Write(product_stream(product.product_id), ProductCreated(product), 0)]

        command = Command("CreateProduct", encode(product), Rule.PRODUCT_EXISTS)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, ProductCreated)
        return event.product, seq

    async def publish_rate_card(
        self, cmd: RateCardInput, ctx: RequestContext
    ) -> tuple[RateCardVersion, int]:
        """Publish the next immutable version of a rate card."""

        async def decide() -> list[Write]:
            violations = Violations()
            check_id(violations, "rate_card_id", cmd.rate_card_id)
            check_text(violations, "name", cmd.name)
            decimals = _decimals(violations, cmd)
            await self._check_rates(violations, cmd.rates)
            violations.raise_if_any()
            assert decimals is not None
            stream = rate_card_stream(cmd.rate_card_id)
            current = (await self._store.stream_versions([stream])).get(stream, 0)
            card = RateCardVersion(
                rate_card_id=cmd.rate_card_id,
                version=current + 1,
                name=cmd.name,
                currency=cmd.currency,
                currency_decimals=decimals,
                effective_from=cmd.effective_from or self._clock(),
                rates=tuple(_rate(r) for r in cmd.rates),
            )
            return [Write(stream, RateCardPublished(card), current)]

        command = Command("PublishRateCard", encode(cmd), Rule.STREAM_VERSION_CONFLICT)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, RateCardPublished)
        return event.rate_card, seq

    async def get_rate_card(self, rate_card_id: str, version: int) -> RateCardVersion:
        """A published version (0: the newest)."""
        events = await self._store.read_streams([rate_card_stream(rate_card_id)])
        if not events:
            raise DomainError(Rule.RATE_CARD_NOT_FOUND, f"no rate card {rate_card_id!r}")
        chosen = (
            events[-1]
            if version == 0
            else next((e for e in events if e.stream_version == version), None)
        )
        if chosen is None:
            raise DomainError(
                Rule.RATE_CARD_VERSION_NOT_FOUND,
                f"rate card {rate_card_id!r} has no version {version}",
            )
        event = chosen.domain_event()
        assert isinstance(event, RateCardPublished)
        return event.rate_card

    async def _check_rates(self, violations: Violations, rates: Sequence[RateInput]) -> None:
        if not rates:
            violations.add("rates", "a rate card needs at least one rate")
        streams = {product_stream(r.product_id) for r in rates}
        known = await self._store.stream_versions(streams)
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        for i, rate in enumerate(rates):
            where = f"rates[{i}]"
            if product_stream(rate.product_id) not in known:
                violations.add(f"{where}.product_id", f"unknown product {rate.product_id!r}")
            check_rate_model(violations, f"{where}.model", rate.model)
            check_price(violations, f"{where}.unit_price", rate.unit_price, required=True)
            check_price(violations, f"{where}.minimum", rate.minimum, required=False)
            check_price(violations, f"{where}.maximum", rate.maximum, required=False)
            _check_min_max(violations, where, rate)
            identity = (rate.product_id, tuple(sorted(rate.group_values.items())))
            if identity in seen:
                violations.add(where, "repeats the rate of an earlier entry for the same groups")
            seen.add(identity)


def _metric(cmd: MetricInput) -> BillableMetric:
    violations = Violations()
    check_id(violations, "metric.metric_id", cmd.metric_id)
    check_text(violations, "metric.name", cmd.name)
    check_metric(
        violations,
        event_type=cmd.event_type,
        aggregation=cmd.aggregation,
        property_name=cmd.property,
        filters=cmd.filters,
        group_by=cmd.group_by,
    )
    violations.raise_if_any()
    return BillableMetric(
        metric_id=cmd.metric_id,
        name=cmd.name,
        event_type=cmd.event_type,
        aggregation=Aggregation(cmd.aggregation),
        property=cmd.property or None,
        filters=tuple(PropertyFilter(p, FilterOp(op), tuple(v)) for p, op, v in cmd.filters),
        group_by=tuple(cmd.group_by),
    )


def _decimals(violations: Violations, cmd: RateCardInput) -> int | None:
    try:
        return currency_decimals(cmd.currency, cmd.currency_decimals)
    except DomainError as error:
        violations.items.extend(error.violations)
        return None


def _check_min_max(violations: Violations, where: str, rate: RateInput) -> None:
    try:
        low, high = Decimal(rate.minimum), Decimal(rate.maximum)
    except ArithmeticError:
        return
    if low > high:
        violations.add(f"{where}.maximum", "must not be below the minimum")


def _rate(rate: RateInput) -> Rate:
    return Rate(
        product_id=rate.product_id,
        model=RateModel(rate.model),
        unit_price=Decimal(rate.unit_price),
        group_values=dict(rate.group_values),
        minimum=Decimal(rate.minimum) if rate.minimum else None,
        maximum=Decimal(rate.maximum) if rate.maximum else None,
    )
