"""The rating engine: ``rate(usage, contract, pricing, period) -> invoice``.

Pure and deterministic: the same tallies, contract, rate card versions and
period always give the same invoice, whatever order the usage arrived in.
Amounts are exact until each line is rounded once (PRICING.md); a contract's
multiplier applies before that rounding, a rate's minimum and maximum after.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from ledger.core.catalog import (
    BillableMetric,
    Contract,
    Override,
    OverrideKind,
    PlanChange,
    Product,
    Rate,
    RateCardVersion,
    RateModel,
)
from ledger.core.invoice import Invoice, InvoiceLine, UnbilledUsage
from ledger.core.metering import GroupKey, Tally, UsageKey
from ledger.core.money import EXACT, exact_sum, round_amount, zero
from ledger.core.periods import Period, period_containing
from ledger.core.rate_models import Charge, Proration, charge, percentage, shown, whole_days

NO_VERSION_IN_EFFECT = "no rate card version in effect"


@dataclass(frozen=True)
class Segment:
    """Part of a period with one price: a rate card version (None: none in effect)
    and the contract overrides in force throughout it."""

    period: Period
    rate_card: RateCardVersion | None
    overrides: tuple[Override, ...] = ()


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
    contract: Contract, period: Period, versions: Mapping[str, Sequence[RateCardVersion]]
) -> tuple[Segment, ...]:
    """Split a period wherever the contract's price changes: an amendment moves it to
    another plan, a new version of the plan's card takes effect (unless pinned), or
    an override starts or ends. ``versions`` are each card's, by rate card id."""
    ordered = _cuts(contract, period, versions)
    segments: list[Segment] = []
    previous_card_id = ""
    for start, end in zip(ordered, [*ordered[1:], period.end], strict=True):
        plan = contract.plan_at(start)
        version = _version_of_plan(plan, versions[plan.rate_card_id], start)
        active = tuple(o for o in contract.overrides if o.active_throughout(start, end))
        # Another card is another plan, even at the same prices: its lines name it.
        same_card = plan.rate_card_id == previous_card_id
        if segments and same_card and _same_prices(segments[-1], version, active):
            # An identical republished card changes nothing: the line is not split,
            # so it is rounded (and held to its minimum) once, as if unsplit.
            previous = segments[-1]
            segments[-1] = Segment(Period(previous.period.start, end), version, active)
        else:
            segments.append(Segment(Period(start, end), version, active))
        previous_card_id = plan.rate_card_id
    return tuple(segments)


def _cuts(
    contract: Contract, period: Period, versions: Mapping[str, Sequence[RateCardVersion]]
) -> list[datetime]:
    """The instants in ``period`` where the contract's price may change, in order."""
    cuts = {period.start}
    for piece, plan in _plan_pieces(contract, period):
        cuts.add(piece.start)
        if plan.pinned_version is None:
            effective = (v.effective_from for v in versions[plan.rate_card_id])
            cuts |= {instant for instant in effective if piece.contains(instant)}
    for override in contract.overrides:
        cuts |= {t for t in (override.starts_at, override.ends_at) if t and period.contains(t)}
    return sorted(cuts)


def _plan_pieces(contract: Contract, period: Period) -> list[tuple[Period, PlanChange]]:
    """The parts of ``period`` each of the contract's plans is in force over."""
    pieces = contract.plans_over(period.start, period.end)
    ends = [start for start, _ in pieces[1:]] + [period.end]
    return [(Period(start, end), plan) for (start, plan), end in zip(pieces, ends, strict=True)]


def _version_of_plan(
    plan: PlanChange, versions: Sequence[RateCardVersion], instant: datetime
) -> RateCardVersion | None:
    """The plan's pinned version, or its card's version in force at ``instant``."""
    if plan.pinned_version is None:
        return version_in_force(versions, instant)
    return next(v for v in versions if v.version == plan.pinned_version)


def _same_prices(
    previous: Segment, card: RateCardVersion | None, overrides: tuple[Override, ...]
) -> bool:
    a, b = previous.rate_card, card
    if previous.overrides != overrides:
        return False
    if a is None or b is None:
        return a is b
    return (a.currency, a.currency_decimals, a.rates) == (b.currency, b.currency_decimals, b.rates)


def canonical_quantity(value: Decimal) -> Decimal:
    """The value without trailing zeros and without an exponent (``8.0`` → ``8``)."""
    if not value:
        return Decimal(0)
    normal = value.normalize(EXACT)
    # normalize() writes 100 as 1E+2; a whole number keeps its digits (through the
    # string form, which no context precision limits).
    return Decimal(format(normal, "f")) if normal.as_tuple().exponent > 0 else normal  # type: ignore[operator]


@dataclass(frozen=True)
class PricedLine:
    amount: Decimal
    explanation: str
    charge: Charge


def finish_line(
    rate: Rate, exact_charge: Charge, decimals: int, override: Override | None = None
) -> PricedLine:
    """Apply a contract multiplier, round once, then the rate's minimum and maximum."""
    exact, steps = exact_charge.exact, exact_charge.steps
    if override is not None and override.kind is OverrideKind.MULTIPLIER:
        assert override.multiplier is not None
        exact = EXACT.multiply(exact, override.multiplier)
        steps += (
            f"; × {override.multiplier} (contract override {override.override_id}) = {shown(exact)}"
        )
    amount = round_amount(exact, decimals)
    steps += f" → {amount}"
    if rate.minimum is not None and amount < rate.minimum:
        amount = round_amount(rate.minimum, decimals)
        steps += f"; raised to minimum {amount}"
    if rate.maximum is not None and amount > rate.maximum:
        amount = round_amount(rate.maximum, decimals)
        steps += f"; capped at maximum {amount}"
    return PricedLine(amount, steps, exact_charge)


def price_line(
    rate: Rate, quantity: Decimal, decimals: int, proration: Proration | None = None
) -> tuple[Decimal, str]:
    """The rounded amount for ``quantity`` under ``rate`` and how it was reached."""
    priced = finish_line(rate, charge(rate, quantity, proration or Proration(1, 1)), decimals)
    return priced.amount, priced.explanation


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
    billing_period = period_containing(contract.billing_anchor, period.start)
    pricer = _Pricer(contract, catalog, decimals, whole_days(*_span(billing_period)), usage)
    unbilled: Counter[tuple[str, str]] = Counter()
    for segment in segments:
        seg_usage = pricer.segment_usage(segment)
        if segment.rate_card is None:
            _count_unbilled_without_version(seg_usage, unbilled)
        else:
            _count_unbilled(_metric_ids(segment.rate_card, catalog), seg_usage, unbilled)
    lines = pricer.lines(segments, unbilled)
    subtotal = exact_sum((line.amount for line in lines), zero(decimals))
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
        # The plan the period ends on: the card the next period continues with.
        rate_card_id=contract.plan_at(segments[-1].period.start).rate_card_id,
        rate_card_versions=tuple(versions),
        contract_version=contract_version,
        unbilled=tuple(
            UnbilledUsage(metric_id, reason, count)
            for (metric_id, reason), count in sorted(unbilled.items())
            if count
        ),
    )


@dataclass(frozen=True)
class _Run:
    """Consecutive segments over which one product's price does not change.

    A product is priced once per run, so a price change of *another* product
    (or an identical republished card) never splits its line, its rounding or
    its minimum.
    """

    start: datetime
    end: datetime
    card: RateCardVersion
    override: Override | None
    segments: tuple[Segment, ...]


def _span(period: Period) -> tuple[datetime, datetime]:
    return period.start, period.end


def _metric_ids(card: RateCardVersion, catalog: Catalog) -> set[str]:
    """The metrics measuring the products on a card."""
    products = (catalog.products[p] for p in card.product_ids)
    return {p.metric_id for p in products if p.metric_id}


class _Pricer:
    def __init__(
        self,
        contract: Contract,
        catalog: Catalog,
        decimals: int,
        days_in_period: int,
        usage: Mapping[UsageKey, Tally],
    ) -> None:
        self._contract = contract
        self._catalog = catalog
        self._decimals = decimals
        self._days_in_period = days_in_period
        self._usage = usage

    def segment_usage(self, segment: Segment) -> dict[tuple[str, GroupKey], Tally]:
        start = segment.period.start
        return {(m, g): t for (s, m, g), t in self._usage.items() if s == start}

    def lines(
        self, segments: Sequence[Segment], unbilled: Counter[tuple[str, str]]
    ) -> list[InvoiceLine]:
        """Usage and flat lines first, then percentages of them."""
        product_ids = sorted({p for s in segments if s.rate_card for p in s.rate_card.product_ids})
        lines: list[InvoiceLine] = []
        percentage_runs: list[tuple[Product, _Run]] = []
        for product_id in product_ids:
            product = self._catalog.products[product_id]
            for run in self._runs(product_id, segments):
                rate = self._rate(run, product_id, {})
                if rate is not None and rate.model is RateModel.PERCENTAGE:
                    percentage_runs.append((product, run))
                elif not product.metric_id:
                    if rate is not None:
                        lines.append(
                            self._line(run, _LineFacts(product, None, {}, Decimal(1), rate))
                        )
                else:
                    lines.extend(self._usage_lines(run, product, unbilled))
        for product, run in percentage_runs:
            lines.append(self._percentage_line(run, product, lines))
        return lines

    def _runs(self, product_id: str, segments: Sequence[Segment]) -> list[_Run]:
        runs: list[_Run] = []
        for segment in segments:
            card = segment.rate_card
            if card is None or product_id not in card.product_ids:
                continue
            start, end = _span(segment.period)
            override = self._contract.override_for(product_id, start, end)
            previous = runs[-1] if runs else None
            if (
                previous is not None
                and previous.end == start
                and _same_price(previous, card, override, product_id)
            ):
                merged = (*previous.segments, segment)
                runs[-1] = _Run(previous.start, end, previous.card, override, merged)
            else:
                runs.append(_Run(start, end, card, override, (segment,)))
        return runs

    def _usage_lines(
        self, run: _Run, product: Product, unbilled: Counter[tuple[str, str]]
    ) -> list[InvoiceLine]:
        """A line per observed group; one zero line for a product without usage."""
        metric = self._catalog.metrics[product.metric_id]
        tallies: dict[GroupKey, Tally] = {}
        for segment in run.segments:
            for (metric_id, key), part in self.segment_usage(segment).items():
                if metric_id == metric.metric_id:
                    tallies[key] = tallies[key].merge(part) if key in tallies else part
        groups: Sequence[GroupKey | None] = sorted(tallies) or [None]
        lines = []
        for group in groups:
            tally = Tally() if group is None else tallies[group]
            values = {} if group is None else dict(zip(metric.group_by, group, strict=True))
            rate = self._rate(run, product.product_id, values)
            if rate is None:
                reason = f"no rate for {product.product_id} with {values}"
                unbilled[(metric.metric_id, reason)] += tally.count
                continue
            # One representation per value ("8", not "8.0"), so a draft summed in the
            # database and a replay summed here render identically.
            quantity = canonical_quantity(tally.quantity(metric.aggregation))
            lines.append(self._line(run, _LineFacts(product, metric, values, quantity, rate)))
        return lines

    def _rate(self, run: _Run, product_id: str, values: Mapping[str, str]) -> Rate | None:
        if run.override is not None and run.override.kind is OverrideKind.OVERWRITE:
            return run.override.rate
        return run.card.rate_for(product_id, values)

    def _line(self, run: _Run, facts: _LineFacts) -> InvoiceLine:
        proration = Proration(whole_days(run.start, run.end), self._days_in_period)
        exact = charge(facts.rate, facts.quantity, proration)
        priced = finish_line(facts.rate, exact, self._decimals, run.override)
        return self._invoice_line(run, facts, priced)

    def _percentage_line(
        self, run: _Run, product: Product, lines: Sequence[InvoiceLine]
    ) -> InvoiceLine:
        rate = self._rate(run, product.product_id, {})
        assert rate is not None
        shares = [
            (line, _share_within(line, run.start, run.end))
            for line in lines
            if line.product_id in rate.percent_of
        ]
        base_lines = [(line, share) for line, share in shares if share]
        base = exact_sum(EXACT.multiply(line.amount, share) for line, share in base_lines)
        names = tuple(sorted({line.product_id for line, _ in base_lines}))
        exact = percentage(rate, base, names)
        priced = finish_line(rate, exact, self._decimals, run.override)
        return self._invoice_line(run, _LineFacts(product, None, {}, base, rate), priced)

    @staticmethod
    def _invoice_line(run: _Run, facts: _LineFacts, priced: PricedLine) -> InvoiceLine:
        return InvoiceLine(
            product_id=facts.product.product_id,
            product_name=facts.product.name,
            metric_id=facts.metric.metric_id if facts.metric is not None else "",
            group_values=facts.values,
            rate_card_id=run.card.rate_card_id,
            rate_card_version=run.card.version,
            segment_start=run.start,
            segment_end=run.end,
            model=facts.rate.model,
            quantity=facts.quantity,
            unit_price=facts.rate.unit_price,
            amount=priced.amount,
            explanation=priced.explanation,
            tiers=priced.charge.tiers,
            override_id=run.override.override_id if run.override is not None else "",
        )


def _share_within(line: InvoiceLine, start: datetime, end: datetime) -> Decimal:
    """The part of a line's time inside ``[start, end)``: a percentage whose own price
    changes mid-period takes each base line in proportion to the time it overlaps."""
    whole = line.segment_end - line.segment_start
    overlap = min(line.segment_end, end) - max(line.segment_start, start)
    if overlap <= timedelta(0) or not whole:
        return Decimal(0)
    if overlap == whole:
        return Decimal(1)
    micro = timedelta(microseconds=1)
    return EXACT.divide(Decimal(overlap // micro), Decimal(whole // micro))


@dataclass(frozen=True)
class _LineFacts:
    product: Product
    metric: BillableMetric | None
    values: dict[str, str]
    quantity: Decimal
    rate: Rate


def _same_price(
    run: _Run, card: RateCardVersion, override: Override | None, product_id: str
) -> bool:
    """Whether a product costs the same under the run's card and ``card``."""

    def rates(c: RateCardVersion) -> tuple[Rate, ...]:
        return tuple(r for r in c.rates if r.product_id == product_id)

    same_unit = (run.card.currency, run.card.currency_decimals) == (
        card.currency,
        card.currency_decimals,
    )
    # A line names one card: a plan change starts a new line even at the same price.
    same_card = run.card.rate_card_id == card.rate_card_id
    return same_card and same_unit and run.override == override and rates(run.card) == rates(card)


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
