"""Catalog commands: billable metrics, products and rate card versions."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final

from ledger.app.billing import rate_card_versions
from ledger.app.commands import Command, Write, run_command
from ledger.app.context import RequestContext
from ledger.app.paging import page_of
from ledger.app.streams import draft_stream, metric_stream, product_stream, rate_card_stream
from ledger.core.catalog import (
    Aggregation,
    BillableMetric,
    FilterOp,
    Product,
    PropertyFilter,
    RateCardVersion,
)
from ledger.core.codec import encode
from ledger.core.errors import DomainError, Rule, Violations, invalid
from ledger.core.events import (
    BillableMetricCreated,
    ProductCreated,
    RateCardDrafted,
    RateCardPublished,
)
from ledger.core.money import currency_decimals
from ledger.core.pricing_drafts import RateCardDraft, approve, drafts_of, find_draft, publish
from ledger.core.rate_diff import RateCardDiff, diff_versions
from ledger.core.rate_specs import RateContext, RateSpec, check_rates, parse_rate
from ledger.core.validation import check_id, check_metric, check_text
from ledger.store.event_store import PostgresEventStore
from ledger.store.records import NoneAfter

METRIC_EVENTS: Final = ("BillableMetricCreated",)


@dataclass(frozen=True)
class KnownMetrics:
    """Every billable metric created through ledger seq ``seq``."""

    metrics: Mapping[str, BillableMetric]
    seq: int

    @functools.cached_property
    def unchanged(self) -> NoneAfter:
        """The condition for an append decided with these metrics: none created since.
        Built once per read, not per call."""
        return NoneAfter(METRIC_EVENTS, self.seq)


class MetricRegistry:
    """Every billable metric as of its last read, read again only when asked.

    RecordUsage screens events with the metrics it has and appends them on the
    condition that no metric was created since (:meth:`KnownMetrics.unchanged`),
    checked in the append's transaction, behind the ledger's lock; only when that
    fails does it refresh and screen again. Metrics are only ever created, and
    seq order is commit order, so metrics read through a seq are all there are
    until a later one appears. Reading before every wave of calls instead cost
    single-event ingest about a seventh of its rate, and each call up to 5 ms
    waiting for the wave.
    """

    def __init__(self, store: PostgresEventStore) -> None:
        self._store = store
        self._known: KnownMetrics | None = None
        self._lock = asyncio.Lock()

    async def known(self) -> KnownMetrics:
        """The metrics as last read (read now if never)."""
        return self._known if self._known is not None else await self.refresh(None)

    async def refresh(self, stale: KnownMetrics | None) -> KnownMetrics:
        """Read the metrics created since the last read, unless a read has replaced
        ``stale`` (what the caller found out of date) while it waited for its turn."""
        async with self._lock:
            if self._known is not None and self._known is not stale:
                return self._known
            known = self._known or KnownMetrics({}, 0)
            events = await self._store.read_types(list(METRIC_EVENTS), known.seq)
            metrics, seq = dict(known.metrics), known.seq
            for stored in events:
                event = stored.domain_event()
                assert isinstance(event, BillableMetricCreated)
                metrics[event.metric.metric_id] = event.metric
                seq = stored.seq
            self._known = KnownMetrics(MappingProxyType(metrics), seq)
            return self._known


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
class RateCardInput:
    rate_card_id: str
    name: str
    currency: str
    currency_decimals: int | None
    effective_from: datetime | None
    rates: Sequence[RateSpec]


PAGE_SIZE_DEFAULT = 50
PAGE_SIZE_MAX = 500


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
            if product.metric_id:  # none for products sold by flat fee or percentage
                check_id(violations, "product.metric_id", product.metric_id)
            violations.raise_if_any()
            metric = metric_stream(product.metric_id)
            if product.metric_id and not await self._store.stream_versions([metric]):
                violations.add("product.metric_id", f"unknown metric {product.metric_id!r}")
                violations.raise_if_any()
            return [Write(product_stream(product.product_id), ProductCreated(product), 0)]

        command = Command("CreateProduct", encode(product), Rule.PRODUCT_EXISTS)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, ProductCreated)
        return event.product, seq

    async def draft_rate_card(
        self, cmd: RateCardInput, ctx: RequestContext, copy_of_version: int = 0
    ) -> tuple[RateCardDraft, int]:
        """Propose the next version of a rate card (or, with ``copy_of_version``, a
        rollback to that version's rates); it prices nothing until approved and published."""
        _require_reason(ctx)

        async def decide() -> list[Write]:
            if copy_of_version:
                card = await self._rollback_card(cmd, copy_of_version)
            else:
                card = dataclasses.replace(await self.validate_rate_card(cmd), version=0)
            drafts, version = await self._drafts(cmd.rate_card_id)
            drafted = RateCardDrafted(
                len(drafts) + 1,
                card,
                ctx.actor,
                copy_of_version,
                effective_at_publish=cmd.effective_from is None,
            )
            return [Write(draft_stream(cmd.rate_card_id), drafted, version)]

        content = {"card": encode(cmd), "copy_of_version": copy_of_version}
        command = Command("DraftRateCard", content, Rule.STREAM_VERSION_CONFLICT)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, RateCardDrafted)
        return (await self.get_draft(cmd.rate_card_id, event.draft)), seq

    async def approve_draft(
        self, rate_card_id: str, number: int, ctx: RequestContext
    ) -> tuple[RateCardDraft, int]:
        """A second principal's approval; the draft's author cannot give it."""
        _require_reason(ctx)

        async def decide() -> list[Write]:
            drafts, version = await self._drafts(rate_card_id)
            approval = approve(find_draft(drafts, rate_card_id, number), ctx.actor)
            return [Write(draft_stream(rate_card_id), approval, version)]

        content = {"rate_card_id": rate_card_id, "draft": number}
        command = Command("ApproveRateCardDraft", content, Rule.STREAM_VERSION_CONFLICT)
        _, seq = await run_command(self._store, ctx, command, decide, self._clock())
        return (await self.get_draft(rate_card_id, number)), seq

    async def publish_draft(
        self, rate_card_id: str, number: int, ctx: RequestContext
    ) -> tuple[RateCardVersion, int]:
        """Make an approved draft the rate card's next immutable version.

        The version takes effect at the draft's ``effective_from`` (or now, if the
        draft gave none: a price drafted Monday and published Friday must not
        re-price the days between). Its rates were
        checked when drafted (products and metrics never change); its currency is
        checked again, since a first version may have been published meanwhile.
        """
        _require_reason(ctx)

        async def decide() -> list[Write]:
            drafts, draft_version = await self._drafts(rate_card_id)
            draft = find_draft(drafts, rate_card_id, number)
            versions = await self._versions(rate_card_id)
            first, card = (versions[0] if versions else None), draft.rate_card
            if first is not None and (first.currency, first.currency_decimals) != (
                card.currency,
                card.currency_decimals,
            ):
                unit = f"{first.currency} with {first.currency_decimals} places"
                message = f"rate card {rate_card_id!r} is now priced in {unit}"
                raise DomainError(Rule.DRAFT_STALE, message)
            published, closed = publish(draft, len(versions) + 1, ctx.actor, self._clock())
            return [
                Write(rate_card_stream(rate_card_id), published, len(versions)),
                Write(draft_stream(rate_card_id), closed, draft_version),
            ]

        content = {"rate_card_id": rate_card_id, "draft": number}
        command = Command("PublishRateCardDraft", content, Rule.STREAM_VERSION_CONFLICT)
        event, seq = await run_command(self._store, ctx, command, decide, self._clock())
        assert isinstance(event, RateCardPublished)
        return event.rate_card, seq

    async def get_draft(self, rate_card_id: str, number: int) -> RateCardDraft:
        drafts, _ = await self._drafts(rate_card_id)
        return find_draft(drafts, rate_card_id, number)

    async def _drafts(self, rate_card_id: str) -> tuple[dict[int, RateCardDraft], int]:
        """The rate card's drafts and their stream's version (for the next append)."""
        stored = await self._store.read_streams([draft_stream(rate_card_id)])
        return drafts_of(s.domain_event() for s in stored), len(stored)

    async def _rollback_card(self, cmd: RateCardInput, version: int) -> RateCardVersion:
        """A draft restoring ``version``: its name, currency and rates, from a new date."""
        if cmd.rates or cmd.name or cmd.currency:
            raise invalid("copy_of_version", "a rollback takes name, currency and rates from it")
        try:
            earlier = await self.get_rate_card(cmd.rate_card_id, version)
        except DomainError as error:
            raise invalid("copy_of_version", error.message) from error
        effective_from = cmd.effective_from or self._clock()
        return dataclasses.replace(earlier, version=0, effective_from=effective_from)

    async def validate_rate_card(self, cmd: RateCardInput) -> RateCardVersion:
        """The version a publish would create now, validated, without writing anything."""
        violations = Violations()
        check_id(violations, "rate_card_id", cmd.rate_card_id)
        check_text(violations, "name", cmd.name)
        decimals = _decimals(violations, cmd)
        product_ids = [r.product_id for r in cmd.rates]
        check_rates(violations, cmd.rates, await rate_context(self._store, product_ids))
        published = await self._versions(cmd.rate_card_id)
        if published and published[0].currency != cmd.currency:
            # Contracts bill in their card's currency; a new version cannot switch it.
            violations.add("currency", f"rate card is in {published[0].currency}")
        elif published and decimals is not None and published[0].currency_decimals != decimals:
            # Changing a unit's places would re-round the open drafts of earlier periods.
            places = published[0].currency_decimals
            violations.add("currency_decimals", f"rate card's unit has {places} places")
        violations.raise_if_any()
        assert decimals is not None
        return RateCardVersion(
            rate_card_id=cmd.rate_card_id,
            version=len(published) + 1,
            name=cmd.name,
            currency=cmd.currency,
            currency_decimals=decimals,
            effective_from=cmd.effective_from or self._clock(),
            rates=tuple(parse_rate(r) for r in cmd.rates),
        )

    async def get_rate_card(self, rate_card_id: str, version: int) -> RateCardVersion:
        """A published version (0: the newest)."""
        versions = await self._versions(rate_card_id)
        if not versions:
            raise DomainError(Rule.RATE_CARD_NOT_FOUND, f"no rate card {rate_card_id!r}")
        if version == 0:
            return versions[-1]
        if not 1 <= version <= len(versions):
            message = f"rate card {rate_card_id!r} has no version {version}"
            raise DomainError(Rule.RATE_CARD_VERSION_NOT_FOUND, message)
        return versions[version - 1]

    async def list_rate_card_versions(
        self, rate_card_id: str, page_size: int, page_token: str
    ) -> tuple[list[RateCardVersion], str]:
        """Versions in order, a page at a time; the token is the last version returned."""
        versions = await self._versions(rate_card_id)
        if not versions:
            raise DomainError(Rule.RATE_CARD_NOT_FOUND, f"no rate card {rate_card_id!r}")
        return page_of(
            versions, page_size, page_token, default=PAGE_SIZE_DEFAULT, most=PAGE_SIZE_MAX
        )

    async def diff_rate_card_versions(
        self, rate_card_id: str, from_version: int, to_version: int
    ) -> RateCardDiff:
        """What changes between two versions."""
        before = await self.get_rate_card(rate_card_id, from_version)
        after = await self.get_rate_card(rate_card_id, to_version)
        return diff_versions(before, after)

    async def _versions(self, rate_card_id: str) -> list[RateCardVersion]:
        return rate_card_versions(await self._store.read_streams([rate_card_stream(rate_card_id)]))


async def rate_context(store: PostgresEventStore, product_ids: Iterable[str]) -> RateContext:
    """The named products, and their metrics, as the ledger has them now."""
    products = {}
    for stored in await store.read_streams([product_stream(p) for p in set(product_ids)]):
        event = stored.domain_event()
        assert isinstance(event, ProductCreated)
        products[event.product.product_id] = event.product
    metric_streams = [metric_stream(p.metric_id) for p in products.values() if p.metric_id]
    metrics = {}
    for stored in await store.read_streams(metric_streams):
        created = stored.domain_event()
        assert isinstance(created, BillableMetricCreated)
        metrics[created.metric.metric_id] = created.metric
    return RateContext(products, metrics)


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


def _require_reason(ctx: RequestContext) -> None:
    if not ctx.reason.strip():
        raise invalid("reason", "is required: say why the price changes")


def _decimals(violations: Violations, cmd: RateCardInput) -> int | None:
    try:
        return currency_decimals(cmd.currency, cmd.currency_decimals)
    except DomainError as error:
        violations.items.extend(error.violations)
        return None
