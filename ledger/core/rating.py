"""The rating engine: ``rate(usage, contract, pricing, period) -> invoice``.

Pure and deterministic: the same tallies, contract, rate card versions and
period always give the same invoice, whatever order the usage arrived in.
Amounts are exact until each line is rounded once (PRICING.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from ledger.core.catalog import BillableMetric, Contract, Product, Rate, RateCardVersion, RateModel
from ledger.core.invoice import Invoice, InvoiceLine, UnbilledUsage
from ledger.core.metering import GroupKey, Tally, UsageKey
from ledger.core.money import EXACT, round_amount, zero
from ledger.core.periods import Period

NO_VERSION_IN_EFFECT = "no rate card version in effect"


@dataclass(frozen=True)
class Segment:
    """Part of a period priced by one rate card version (None: no version in effect)."""

    period: Period
    rate_card: RateCardVersion | None


@dataclass(frozen=True)
class Catalog:
    """The metrics and products an invoice's rate card refers to."""

    metrics: Mapping[str, BillableMetric]
    products: Mapping[str, Product]


def version_in_force(
    versions: Sequence[RateCardVersion], instant: datetime
) -> RateCardVersion | None:
    """The most recently published version whose ``effective_from`` has passed."""
    effective = [v for v in versions if v.effective_from <= instant]
    return max(effective, key=lambda v: v.version) if effective else None


def pricing_segments(
    contract: Contract, period: Period, versions: Sequence[RateCardVersion]
) -> tuple[Segment, ...]:
    """Split a period at every instant where the contract's pricing version changes."""
    if contract.pinned_version is not None:
        pinned = [v for v in versions if v.version == contract.pinned_version]
        assert pinned, "a pinned version is validated when the contract is created"
        return (Segment(period, pinned[0]),)
    changes = {v.effective_from for v in versions if period.contains(v.effective_from)}
    cuts = sorted({period.start} | changes)
    segments: list[Segment] = []
    for start, end in zip(cuts, [*cuts[1:], period.end], strict=True):
        version = version_in_force(versions, start)
        if segments and _same_prices(segments[-1].rate_card, version):
            # A republished identical card changes nothing: the line is not split,
            # so it is rounded (and held to its minimum) once, as if unsplit.
            segments[-1] = Segment(Period(segments[-1].period.start, end), version)
        else:
            segments.append(Segment(Period(start, end), version))
    return tuple(segments)


def _same_prices(a: RateCardVersion | None, b: RateCardVersion | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.currency, a.currency_decimals, a.rates) == (b.currency, b.currency_decimals, b.rates)


def canonical_quantity(value: Decimal) -> Decimal:
    """The value without trailing zeros (``8.0`` → ``8``)."""
    return value.normalize(EXACT) if value else Decimal(0)


def price_line(rate: Rate, quantity: Decimal, decimals: int) -> tuple[Decimal, str]:
    """The rounded amount for ``quantity`` under ``rate`` and how it was reached."""
    assert rate.model is RateModel.PER_UNIT
    exact = EXACT.multiply(quantity, rate.unit_price)
    amount = round_amount(exact, decimals)
    explanation = f"{quantity} × {rate.unit_price} = {exact} → {amount}"
    if rate.minimum is not None and amount < rate.minimum:
        amount = round_amount(rate.minimum, decimals)
        explanation += f"; raised to minimum {amount}"
    if rate.maximum is not None and amount > rate.maximum:
        amount = round_amount(rate.maximum, decimals)
        explanation += f"; capped at maximum {amount}"
    return amount, explanation


def rate_invoice(
    *,
    invoice_id: str,
    contract: Contract,
    contract_version: int,
    period: Period,
    segments: Sequence[Segment],
    usage: Mapping[UsageKey, Tally],
    catalog: Catalog,
    rate_card_currency: tuple[str, int],
    computed_through_seq: int,
) -> Invoice:
    """Price a contract period's usage into an invoice."""
    currency, decimals = rate_card_currency
    lines: list[InvoiceLine] = []
    unbilled: Counter[tuple[str, str]] = Counter()
    for segment in segments:
        seg_usage = {(m, g): t for (s, m, g), t in usage.items() if s == segment.period.start}
        if segment.rate_card is None:
            _count_unbilled_without_version(seg_usage, unbilled)
            continue
        pricing = _SegmentPricing(segment, segment.rate_card, catalog, decimals)
        lines.extend(pricing.lines(seg_usage, unbilled))
        _count_unbilled(pricing.metric_ids(), seg_usage, unbilled)
    subtotal = sum((line.amount for line in lines), zero(decimals))
    versions = sorted({s.rate_card.version for s in segments if s.rate_card is not None})
    return Invoice(
        invoice_id=invoice_id,
        customer_id=contract.customer_id,
        contract_id=contract.contract_id,
        currency=currency,
        period_start=period.start,
        period_end=period.end,
        lines=tuple(lines),
        subtotal=subtotal,
        credits_applied=zero(decimals),
        total=subtotal,
        computed_through_seq=computed_through_seq,
        rate_card_id=contract.rate_card_id,
        rate_card_versions=tuple(versions),
        contract_version=contract_version,
        unbilled=tuple(
            UnbilledUsage(metric_id, reason, count)
            for (metric_id, reason), count in sorted(unbilled.items())
            if count
        ),
    )


@dataclass(frozen=True)
class _SegmentPricing:
    segment: Segment
    card: RateCardVersion
    catalog: Catalog
    decimals: int

    def metric_ids(self) -> set[str]:
        """The metrics measuring the products on this segment's card."""
        return {self.catalog.products[p].metric_id for p in self.card.product_ids}

    def lines(
        self, seg_usage: Mapping[tuple[str, GroupKey], Tally], unbilled: Counter[tuple[str, str]]
    ) -> list[InvoiceLine]:
        """A line per product and observed group; one zero line for a product without usage."""
        lines: list[InvoiceLine] = []
        for product_id in sorted(self.card.product_ids):
            product = self.catalog.products[product_id]
            metric = self.catalog.metrics[product.metric_id]
            observed = sorted(g for (m, g) in seg_usage if m == metric.metric_id)
            groups: Sequence[GroupKey | None] = observed or [None]
            for group in groups:
                tally = Tally() if group is None else seg_usage[(metric.metric_id, group)]
                values = {} if group is None else dict(zip(metric.group_by, group, strict=True))
                line = self._line(product, metric, values, tally)
                if line is None:
                    unbilled[(metric.metric_id, f"no rate for {product_id} with {values}")] += (
                        tally.count
                    )
                else:
                    lines.append(line)
        return lines

    def _line(
        self, product: Product, metric: BillableMetric, values: dict[str, str], tally: Tally
    ) -> InvoiceLine | None:
        rate = self.card.rate_for(product.product_id, values)
        if rate is None:
            return None
        # One representation per value ("8", not "8.0"), so a draft summed in the
        # database and a replay summed here render identically.
        quantity = canonical_quantity(tally.quantity(metric.aggregation))
        amount, explanation = price_line(rate, quantity, self.decimals)
        return InvoiceLine(
            product_id=product.product_id,
            product_name=product.name,
            metric_id=metric.metric_id,
            group_values=values,
            rate_card_id=self.card.rate_card_id,
            rate_card_version=self.card.version,
            segment_start=self.segment.period.start,
            segment_end=self.segment.period.end,
            model=rate.model,
            quantity=quantity,
            unit_price=rate.unit_price,
            amount=amount,
            explanation=explanation,
        )


def _count_unbilled(
    metric_ids: set[str],
    seg_usage: Mapping[tuple[str, GroupKey], Tally],
    unbilled: Counter[tuple[str, str]],
) -> None:
    """Unusable events of the metrics this segment bills, counted once per metric."""
    for (metric_id, _group), tally in seg_usage.items():
        if metric_id in metric_ids:
            for reason, count in tally.unbilled.items():
                unbilled[(metric_id, reason)] += count


def _count_unbilled_without_version(
    seg_usage: Mapping[tuple[str, GroupKey], Tally], unbilled: Counter[tuple[str, str]]
) -> None:
    for (metric_id, _group), tally in seg_usage.items():
        unbilled[(metric_id, NO_VERSION_IN_EFFECT)] += tally.count + sum(tally.unbilled.values())
