"""The pricing engine over real gRPC: PRICING.md's worked examples, rate card versions,
contract overrides, previews, UNIQUE and LATEST metrics, and refused pricing input.
"""

from __future__ import annotations

import calendar
import dataclasses
import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from services.api.accrual.v1 import catalog_pb2, contracts_pb2, invoices_pb2, usage_pb2
from tests.e2e.conftest import RunningServer
from tests.e2e.helpers import ACCEPTED, Errors, head_seq, midnight, setup_world, stubs, ts

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
BATCH_MAX = 1_000


def add_month(instant: datetime) -> datetime:
    """One month later, the day clamped to the target month (PRICING.md "Billing periods")."""
    year, month0 = divmod(instant.year * 12 + instant.month, 12)
    day = min(instant.day, calendar.monthrange(year, month0 + 1)[1])
    return instant.replace(year=year, month=month0 + 1, day=day)


def per_unit(product_id: str, unit_price: str, **fields: Any) -> catalog_pb2.Rate:
    return catalog_pb2.Rate(
        product_id=product_id, model="per_unit", unit_price=unit_price, **fields
    )


def tiers(*bounds: tuple[str, str]) -> list[catalog_pb2.Tier]:
    """Tiers from ``(up_to, unit_price)`` pairs; an empty up_to is the open last tier."""
    return [catalog_pb2.Tier(up_to=up_to, unit_price=price) for up_to, price in bounds]


def lines(invoice: invoices_pb2.Invoice) -> list[tuple[str, str, str]]:
    """Each line as (product, quantity, amount)."""
    return [(li.product_id, li.quantity, li.amount.amount) for li in invoice.lines]


class Pricing:
    """Builds a catalog, customers and contracts over the API; contracts start ~40 days ago."""

    def __init__(self, server: RunningServer) -> None:
        self.api = stubs(server)
        self.now = datetime.now(UTC)
        self.start = midnight(self.now - timedelta(days=40))
        self._tx = itertools.count(1)

    @property
    def in_first_period(self) -> datetime:
        """Inside the first period and inside the 34-day late window."""
        return self.now - timedelta(days=20)

    def metric(self, metric_id: str, event_type: str, aggregation: str, prop: str = "") -> None:
        self.api.catalog.CreateBillableMetric(
            catalog_pb2.CreateBillableMetricRequest(
                metric=catalog_pb2.BillableMetric(
                    metric_id=metric_id,
                    name=metric_id,
                    event_type=event_type,
                    aggregation=aggregation,
                    property=prop,
                )
            )
        )

    def product(self, product_id: str, metric_id: str = "") -> None:
        self.api.catalog.CreateProduct(
            catalog_pb2.CreateProductRequest(
                product=catalog_pb2.Product(
                    product_id=product_id, name=product_id.title(), metric_id=metric_id
                )
            )
        )

    def publish(
        self,
        rate_card_id: str,
        rates: Sequence[catalog_pb2.Rate],
        *,
        effective_from: datetime | None = None,
        name: str = "List prices",
    ) -> catalog_pb2.RateCardVersion:
        card: catalog_pb2.RateCardVersion = self.api.publish(
            catalog_pb2.DraftRateCardRequest(
                rate_card_id=rate_card_id,
                name=name,
                currency="USD",
                effective_from=ts(effective_from or self.start),
                rates=list(rates),
                reason="pricing test",
            )
        )
        return card

    def contract(
        self,
        customer_id: str,
        rate_card_id: str,
        *,
        starts_at: datetime | None = None,
        billing_anchor: datetime | None = None,
        pinned_version: int = 0,
        overrides: Sequence[contracts_pb2.Override] = (),
    ) -> contracts_pb2.Contract:
        """A new customer and its contract."""
        self.api.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(
                customer=contracts_pb2.Customer(customer_id=customer_id, name=customer_id)
            )
        )
        contract = contracts_pb2.Contract(
            contract_id=f"{customer_id}-c1",
            customer_id=customer_id,
            rate_card_id=rate_card_id,
            pinned_version=pinned_version,
            starts_at=ts(starts_at or self.start),
            overrides=list(overrides),
        )
        if billing_anchor is not None:
            contract.billing_anchor.CopyFrom(ts(billing_anchor))
        created: contracts_pb2.Contract = self.api.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(contract=contract)
        )
        return created

    def event(
        self, customer_id: str, event_type: str, at: datetime, **properties: str
    ) -> usage_pb2.UsageEvent:
        return usage_pb2.UsageEvent(
            transaction_id=f"tx-{next(self._tx)}",
            customer_id=customer_id,
            event_type=event_type,
            timestamp=ts(at),
            properties=properties,
        )

    def record(self, *events: usage_pb2.UsageEvent) -> None:
        """Record the events (in batches of at most 1,000); every one must be accepted."""
        for i in range(0, len(events), BATCH_MAX):
            batch = list(events[i : i + BATCH_MAX])
            response = self.api.usage.RecordUsage(usage_pb2.RecordUsageRequest(events=batch))
            assert [r.status for r in response.results] == [ACCEPTED] * len(batch), response

    def invoice_at(self, customer_id: str, at: datetime) -> invoices_pb2.Invoice:
        invoice: invoices_pb2.Invoice = self.api.invoices.GetInvoice(
            invoices_pb2.GetInvoiceRequest(customer_id=customer_id, at=ts(at))
        )
        return invoice

    def preview(self, **fields: Any) -> invoices_pb2.Invoice:
        invoice: invoices_pb2.Invoice = self.api.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(**fields)
        )
        return invoice

    def versions(self, rate_card_id: str, page_size: int = 0, page_token: str = "") -> Any:
        return self.api.catalog.ListRateCardVersions(
            catalog_pb2.ListRateCardVersionsRequest(
                rate_card_id=rate_card_id, page_size=page_size, page_token=page_token
            )
        )


# ---------------------------------------------------------------------------------------
# 1. PRICING.md worked examples


GRADUATED = (("1000", "0.10"), ("10000", "0.08"), ("", "0.05"))


@dataclasses.dataclass(frozen=True)
class Example:
    rate: dict[str, Any]  # the Rate's fields but product_id
    aggregation: str  # SUM of "units", or COUNT
    quantities: tuple[str, ...]  # one event each (their values ignored under COUNT)
    quantity: str
    amount: str
    # Expected TierCharges: (up_to, quantity, unit_price, flat_fee, amount).
    tier_charges: tuple[tuple[str, str, str, str, str], ...] = ()


EXAMPLES = {
    "1-per-unit": Example(
        {"model": "per_unit", "unit_price": "0.0000015"},
        "SUM",
        ("100000000", "23456789"),
        "123456789",
        "185.19",
    ),
    "2-graduated": Example(
        {"model": "graduated", "tiers": tiers(*GRADUATED)},
        "SUM",
        ("5000", "7500"),
        "12500",
        "945.00",
        (
            ("1000", "1000", "0.10", "0", "100.00"),
            ("10000", "9000", "0.08", "0", "720.00"),
            ("", "2500", "0.05", "0", "125.00"),
        ),
    ),
    "3-volume-12500": Example(
        {"model": "volume", "tiers": tiers(*GRADUATED)},
        "SUM",
        ("12500",),
        "12500",
        "625.00",
        (("", "12500", "0.05", "0", "625.00"),),
    ),
    "3-volume-1000": Example(
        {"model": "volume", "tiers": tiers(*GRADUATED)},
        "SUM",
        ("400", "600"),
        "1000",
        "100.00",
        (("1000", "1000", "0.10", "0", "100.00"),),
    ),
    "3-volume-0": Example({"model": "volume", "tiers": tiers(*GRADUATED)}, "SUM", (), "0", "0.00"),
    "4-package": Example(
        {"model": "package", "unit_price": "2.50", "package_size": "1000"},
        "COUNT",
        ("",) * 2_001,
        "2001",
        "7.50",
    ),
    "5-minimum": Example(
        {"model": "per_unit", "unit_price": "0.02", "minimum": "10.00"},
        "SUM",
        ("100",),
        "100",
        "10.00",
    ),
}


@pytest.mark.parametrize("example", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_worked_example(server: RunningServer, example: Example) -> None:
    p = Pricing(server)
    prop = "units" if example.aggregation == "SUM" else ""
    p.metric("usage", "used", example.aggregation, prop)
    p.product("thing", "usage")
    p.publish("card", [catalog_pb2.Rate(product_id="thing", **example.rate)])
    p.contract("buyer", "card")
    at = p.in_first_period
    p.record(
        *(
            p.event("buyer", "used", at + timedelta(seconds=i), **({prop: q} if prop else {}))
            for i, q in enumerate(example.quantities)
        )
    )

    invoice = p.invoice_at("buyer", at)

    assert invoice.status == "DRAFT"
    assert lines(invoice) == [("thing", example.quantity, example.amount)]
    (line,) = invoice.lines
    assert line.model == example.rate["model"]
    assert (line.rate_card_id, line.rate_card_version) == ("card", 1)
    assert line.amount.currency == "USD"
    charges = [(t.up_to, t.quantity, t.unit_price, t.flat_fee, t.amount) for t in line.tiers]
    assert charges == list(example.tier_charges)
    assert (invoice.subtotal.amount, invoice.total.amount) == (example.amount, example.amount)
    assert invoice.total.currency == "USD"
    assert list(invoice.unbilled) == []


def test_worked_example_1_explains_its_arithmetic(server: RunningServer) -> None:
    p = Pricing(server)
    p.metric("tokens", "completion", "SUM", "tokens")
    p.product("llm", "tokens")
    p.publish("card", [per_unit("llm", "0.0000015")])
    p.contract("buyer", "card")
    p.record(p.event("buyer", "completion", p.in_first_period, tokens="123456789"))

    (line,) = p.invoice_at("buyer", p.in_first_period).lines

    assert line.explanation == "123456789 × 0.0000015 = 185.1851835 → 185.19"
    assert line.unit_price == "0.0000015"


def test_worked_example_6_percentage_of_other_lines(server: RunningServer) -> None:
    p = Pricing(server)
    p.metric("calls", "call", "SUM", "units")
    p.product("product-a", "calls")
    p.product("product-b", "calls")
    p.product("support", "")
    p.publish(
        "card",
        [
            per_unit("product-a", "312.40"),
            per_unit("product-b", "87.61"),
            catalog_pb2.Rate(
                product_id="support",
                model="percentage",
                percent="10",
                percent_of=["product-a", "product-b"],
            ),
        ],
    )
    p.contract("buyer", "card")
    p.record(p.event("buyer", "call", p.in_first_period, units="1"))

    invoice = p.invoice_at("buyer", p.in_first_period)

    assert lines(invoice) == [
        ("product-a", "1", "312.40"),
        ("product-b", "1", "87.61"),
        ("support", "400.01", "40.00"),  # 10% of 400.01 = 40.001
    ]
    support = invoice.lines[2]
    assert (support.model, support.metric_id) == ("percentage", "")
    assert invoice.total.amount == "440.01"


def test_flat_fee_is_prorated_by_whole_days(server: RunningServer) -> None:
    p = Pricing(server)
    p.product("platform", "")
    anchor = datetime(2025, 3, 1, tzinfo=UTC)  # March has 31 days
    starts_at = datetime(2025, 3, 23, tzinfo=UTC)
    p.publish(
        "card",
        [catalog_pb2.Rate(product_id="platform", model="flat", flat_amount="24.95")],
        effective_from=anchor,
    )
    p.contract("buyer", "card", starts_at=starts_at, billing_anchor=anchor)

    first = p.invoice_at("buyer", datetime(2025, 3, 25, tzinfo=UTC))
    second = p.invoice_at("buyer", datetime(2025, 4, 15, tzinfo=UTC))

    assert (first.period_start, first.period_end) == (
        ts(starts_at),
        ts(datetime(2025, 4, 1, tzinfo=UTC)),
    )
    assert lines(first) == [("platform", "1", "7.24")]  # 24.95 × 9 / 31 = 7.2432… → 7.24
    assert first.lines[0].model == "flat"
    assert first.total.amount == "7.24"
    assert (second.period_start, second.period_end) == (
        ts(datetime(2025, 4, 1, tzinfo=UTC)),
        ts(datetime(2025, 5, 1, tzinfo=UTC)),
    )
    assert lines(second) == [("platform", "1", "24.95")]
    assert second.total.amount == "24.95"


# ---------------------------------------------------------------------------------------
# 2. A version published while usage flows


def test_version_published_mid_period_splits_the_line_unless_pinned(
    server: RunningServer,
) -> None:
    p = Pricing(server)
    p.metric("tokens", "completion", "SUM", "tokens")
    p.product("llm", "tokens")
    p.publish("card", [per_unit("llm", "0.0015")])
    p.contract("follower", "card")
    p.contract("grandfathered", "card", pinned_version=1)
    change = p.start + timedelta(days=15)
    before, after = p.now - timedelta(days=30), p.now - timedelta(days=20)
    assert p.start < before < change < after
    period_end = add_month(p.start)
    for customer in ("follower", "grandfathered"):
        p.record(p.event(customer, "completion", before, tokens="1000"))
    assert lines(p.invoice_at("follower", before)) == [("llm", "1000", "1.50")]

    v2 = p.publish("card", [per_unit("llm", "0.002")], effective_from=change, name="New prices")
    assert v2.version == 2
    for customer in ("follower", "grandfathered"):
        p.record(p.event(customer, "completion", after, tokens="2000"))

    follower = p.invoice_at("follower", after)
    assert lines(follower) == [("llm", "1000", "1.50"), ("llm", "2000", "4.00")]
    assert [
        (li.rate_card_version, li.unit_price, li.segment_start, li.segment_end)
        for li in follower.lines
    ] == [
        (1, "0.0015", ts(p.start), ts(change)),
        (2, "0.002", ts(change), ts(period_end)),
    ]
    assert list(follower.rate_card_versions) == [1, 2]
    assert follower.total.amount == "5.50"

    pinned = p.invoice_at("grandfathered", after)
    assert lines(pinned) == [("llm", "3000", "4.50")]
    (line,) = pinned.lines
    assert (line.rate_card_version, line.unit_price) == (1, "0.0015")
    assert (line.segment_start, line.segment_end) == (ts(p.start), ts(period_end))
    assert list(pinned.rate_card_versions) == [1]
    assert pinned.total.amount == "4.50"

    def card(version: int) -> catalog_pb2.RateCardVersion:
        found: catalog_pb2.RateCardVersion = p.api.catalog.GetRateCard(
            catalog_pb2.GetRateCardRequest(rate_card_id="card", version=version)
        )
        return found

    old, new, latest = card(1), card(2), card(0)
    assert (old.version, old.name, old.effective_from) == (1, "List prices", ts(p.start))
    assert [(r.product_id, r.model, r.unit_price) for r in old.rates] == [
        ("llm", "per_unit", "0.0015")
    ]
    assert (new.version, new.name, new.effective_from) == (2, "New prices", ts(change))
    assert [r.unit_price for r in new.rates] == ["0.002"]
    assert latest == new


# ---------------------------------------------------------------------------------------
# 3. Listing and diffing versions


def test_list_rate_card_versions_pages_and_diff_names_changes(server: RunningServer) -> None:
    p = Pricing(server)
    p.metric("tokens", "completion", "SUM", "tokens")
    p.product("llm", "tokens")
    p.product("embed", "tokens")
    p.publish("card", [per_unit("llm", "0.0015")])
    p.publish("card", [per_unit("llm", "0.002"), per_unit("embed", "0.0001")])
    p.publish("card", [per_unit("llm", "0.002")], name="Embeddings retired")
    errors = Errors()
    head_before = head_seq(server)

    first = p.versions("card", page_size=2)
    assert [(v.version, [r.unit_price for r in v.rates]) for v in first.versions] == [
        (1, ["0.0015"]),
        (2, ["0.002", "0.0001"]),
    ]
    assert first.next_page_token != ""
    last = p.versions("card", page_size=2, page_token=first.next_page_token)
    assert [(v.version, v.name) for v in last.versions] == [(3, "Embeddings retired")]
    assert last.next_page_token == ""
    assert [v.version for v in p.versions("card").versions] == [1, 2, 3]
    unknown = errors.expect(NOT_FOUND, lambda: p.versions("no-such-card"))
    assert unknown.reasons == ["RATE_CARD_NOT_FOUND"]

    diff = p.api.catalog.DiffRateCardVersions(
        catalog_pb2.DiffRateCardVersionsRequest(rate_card_id="card", from_version=1, to_version=2)
    )
    assert (diff.rate_card_id, diff.from_version, diff.to_version) == ("card", 1, 2)
    assert list(diff.card_fields) == []
    changes = [
        (c.product_id, c.change, [(f.field, f.before, f.after) for f in c.fields])
        for c in diff.rates
    ]
    assert changes == [
        ("embed", "added", []),
        ("llm", "changed", [("unit_price", "0.0015", "0.002")]),
    ]

    removal = p.api.catalog.DiffRateCardVersions(
        catalog_pb2.DiffRateCardVersionsRequest(rate_card_id="card", from_version=2, to_version=3)
    )
    assert [(f.field, f.before, f.after) for f in removal.card_fields] == [
        ("name", "List prices", "Embeddings retired")
    ]
    assert [(c.product_id, c.change, list(c.fields)) for c in removal.rates] == [
        ("embed", "removed", [])
    ]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


# ---------------------------------------------------------------------------------------
# 4. Bad pricing input


def _graduated(product_id: str, *bounds: tuple[str, str]) -> catalog_pb2.Rate:
    return catalog_pb2.Rate(product_id=product_id, model="graduated", tiers=tiers(*bounds))


def _support(percent_of: list[str]) -> catalog_pb2.Rate:
    return catalog_pb2.Rate(
        product_id="support", model="percentage", percent="10", percent_of=percent_of
    )


# (rate card id, currency, rates, the fields refused); "llm-acme" is measured by a metric,
# "support" is not.
BAD_CARDS: dict[str, tuple[str, str, list[catalog_pb2.Rate], list[str]]] = {
    "tiers-out-of-order": (
        "bad-card",
        "USD",
        [_graduated("llm-acme", ("100", "0.10"), ("50", "0.08"), ("", "0.05"))],
        ["rates[0].tiers[1].up_to"],
    ),
    "tiers-overlap": (
        "bad-card",
        "USD",
        [_graduated("llm-acme", ("100", "0.10"), ("100", "0.08"), ("", "0.05"))],
        ["rates[0].tiers[1].up_to"],
    ),
    "last-tier-bounded": (
        "bad-card",
        "USD",
        [_graduated("llm-acme", ("100", "0.10"), ("200", "0.08"))],
        ["rates[0].tiers[1].up_to"],
    ),
    "middle-tier-open": (
        "bad-card",
        "USD",
        [_graduated("llm-acme", ("100", "0.10"), ("", "0.08"), ("", "0.05"))],
        ["rates[0].tiers[1].up_to"],
    ),
    "negative-tier-price": (
        "bad-card",
        "USD",
        [
            catalog_pb2.Rate(
                product_id="llm-acme",
                model="volume",
                tiers=tiers(("100", "-0.10"), ("", "0.05")),
            )
        ],
        ["rates[0].tiers[0].unit_price"],
    ),
    "package-without-size": (
        "bad-card",
        "USD",
        [catalog_pb2.Rate(product_id="llm-acme", model="package", unit_price="2.50")],
        ["rates[0].package_size"],
    ),
    "percentage-of-itself": (
        "bad-card",
        "USD",
        [per_unit("llm-acme", "0.01"), _support(["llm-acme", "support"])],
        ["rates[1].percent_of[1]"],
    ),
    "percentage-of-product-not-on-card": (
        "bad-card",
        "USD",
        [_support(["llm-acme"])],
        ["rates[0].percent_of[0]"],
    ),
    "graduated-without-metric": (
        "bad-card",
        "USD",
        [_graduated("support", ("100", "0.10"), ("", "0.05"))],
        ["rates[0].model"],
    ),
    "version-in-another-currency": (
        "list-acme",
        "EUR",
        [per_unit("llm-acme", "0.0015")],
        ["currency"],
    ),
}


@pytest.mark.parametrize("case", BAD_CARDS.values(), ids=BAD_CARDS.keys())
def test_bad_rate_card_is_refused_and_nothing_written(
    server: RunningServer, case: tuple[str, str, list[catalog_pb2.Rate], list[str]]
) -> None:
    rate_card_id, currency, rates, fields = case
    world = setup_world(server)
    Pricing(server).product("support", "")
    errors = Errors()
    head_before = head_seq(server)
    request = catalog_pb2.DraftRateCardRequest(
        rate_card_id=rate_card_id,
        name="Bad prices",
        currency=currency,
        effective_from=ts(world.start),
        rates=rates,
        reason="broken",
    )

    failure = errors.expect(INVALID, lambda: world.api.catalog.DraftRateCard(request))

    assert failure.fields == fields
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    versions = world.api.catalog.ListRateCardVersions(
        catalog_pb2.ListRateCardVersionsRequest(rate_card_id=world.rate_card_id)
    )
    assert [v.version for v in versions.versions] == [1]
    errors.assert_no_internals_leaked()


def test_product_of_an_unknown_metric_is_refused(server: RunningServer) -> None:
    api = stubs(server)
    errors = Errors()
    head_before = head_seq(server)
    request = catalog_pb2.CreateProductRequest(
        product=catalog_pb2.Product(product_id="new", name="New", metric_id="ghost")
    )

    failure = errors.expect(INVALID, lambda: api.catalog.CreateProduct(request))

    assert failure.fields == ["product.metric_id"]
    assert "ghost" in dict(failure.violations)["product.metric_id"]
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def _override(**fields: Any) -> contracts_pb2.Override:
    return contracts_pb2.Override(override_id="ov-1", product_id="llm-acme", **fields)


# (the contract's fields, the fields refused)
BAD_CONTRACTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "currency-other-than-the-card": ({"currency": "EUR"}, ["contract.currency"]),
    "override-kind-discount": (
        {"overrides": [_override(kind="discount", multiplier="0.9")]},
        ["contract.overrides[0].kind"],
    ),
    "override-multiplier-negative": (
        {"overrides": [_override(kind="multiplier", multiplier="-1")]},
        ["contract.overrides[0].multiplier"],
    ),
    "override-multiplier-missing": (
        {"overrides": [_override(kind="multiplier")]},
        ["contract.overrides[0].multiplier"],
    ),
}


@pytest.mark.parametrize("case", BAD_CONTRACTS.values(), ids=BAD_CONTRACTS.keys())
def test_bad_contract_pricing_is_refused_and_nothing_written(
    server: RunningServer, case: tuple[dict[str, Any], list[str]]
) -> None:
    contract_fields, fields = case
    world = setup_world(server)
    contracts = world.api.contracts
    contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="other", name="Other")
        )
    )
    errors = Errors()
    head_before = head_seq(server)

    def create(**extra: Any) -> contracts_pb2.Contract:
        contract = contracts_pb2.Contract(
            contract_id="other-c1",
            customer_id="other",
            rate_card_id=world.rate_card_id,
            starts_at=ts(world.start),
            **extra,
        )
        created: contracts_pb2.Contract = contracts.CreateContract(
            contracts_pb2.CreateContractRequest(contract=contract)
        )
        return created

    failure = errors.expect(INVALID, lambda: create(**contract_fields))

    assert failure.fields == fields
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    missing = errors.expect(
        NOT_FOUND,
        lambda: contracts.GetContract(
            contracts_pb2.GetContractRequest(customer_id="other", contract_id="other-c1")
        ),
    )
    assert missing.reasons == ["CONTRACT_NOT_FOUND"]
    errors.assert_no_internals_leaked()
    assert create(currency="USD").contract_id == "other-c1"


# ---------------------------------------------------------------------------------------
# 5. Contract overrides


def test_contract_overrides_set_the_price(server: RunningServer) -> None:
    p = Pricing(server)
    p.metric("tokens", "completion", "SUM", "tokens")
    p.product("llm", "tokens")
    p.publish("card", [per_unit("llm", "0.0015")])
    overwrite_rate = catalog_pb2.Rate(model="per_unit", unit_price="0.001")

    def multiplier(override_id: str, factor: str, priority: int = 0) -> contracts_pb2.Override:
        return contracts_pb2.Override(
            override_id=override_id,
            product_id="llm",
            kind="multiplier",
            priority=priority,
            multiplier=factor,
        )

    def overwrite(override_id: str, priority: int = 0) -> contracts_pb2.Override:
        return contracts_pb2.Override(
            override_id=override_id,
            product_id="llm",
            kind="overwrite",
            priority=priority,
            rate=overwrite_rate,
        )

    p.contract("list", "card")
    p.contract("discounted", "card", overrides=[multiplier("ov-mult", "0.9")])
    p.contract("negotiated", "card", overrides=[overwrite("ov-over")])
    # Listed first and with the smaller id, so only its priority can make the low one lose.
    p.contract("layered", "card", overrides=[multiplier("ov-a", "0.5", 9), overwrite("ov-b", 1)])
    at = p.in_first_period
    customers = ("list", "discounted", "negotiated", "layered")
    p.record(*(p.event(c, "completion", at, tokens="123400") for c in customers))

    priced = {c: p.invoice_at(c, at) for c in customers}

    expected = {
        "list": ("185.10", ""),  # 123400 × 0.0015
        "discounted": ("166.59", "ov-mult"),  # 185.10 × 0.9
        "negotiated": ("123.40", "ov-over"),  # 123400 × 0.001
        "layered": ("92.55", "ov-a"),  # 185.10 × 0.5: priority 9 beats 1
    }
    for customer, (amount, override_id) in expected.items():
        invoice = priced[customer]
        assert lines(invoice) == [("llm", "123400", amount)], customer
        assert invoice.lines[0].override_id == override_id, customer
        assert invoice.total.amount == amount, customer
    assert priced["negotiated"].lines[0].unit_price == "0.001"

    contract = p.api.contracts.GetContract(
        contracts_pb2.GetContractRequest(customer_id="layered", contract_id="layered-c1")
    )
    assert [
        (o.override_id, o.product_id, o.kind, o.priority, o.multiplier, o.HasField("rate"))
        for o in contract.overrides
    ] == [("ov-a", "llm", "multiplier", 9, "0.5", False), ("ov-b", "llm", "overwrite", 1, "", True)]
    assert (contract.overrides[1].rate.model, contract.overrides[1].rate.unit_price) == (
        "per_unit",
        "0.001",
    )
    for o in contract.overrides:
        assert not o.HasField("starts_at") and not o.HasField("ends_at")
    plain = p.api.contracts.GetContract(
        contracts_pb2.GetContractRequest(customer_id="list", contract_id="list-c1")
    )
    assert list(plain.overrides) == []


# ---------------------------------------------------------------------------------------
# 6. PreviewInvoice


def _preview_world(server: RunningServer) -> Pricing:
    """Tokens at 0.0015 and a 30.00 platform fee; 10,000 tokens used in the first period."""
    p = Pricing(server)
    p.metric("tokens", "completion", "SUM", "tokens")
    p.product("llm", "tokens")
    p.product("platform", "")
    p.publish(
        "card",
        [
            per_unit("llm", "0.0015"),
            catalog_pb2.Rate(product_id="platform", model="flat", flat_amount="30.00"),
        ],
    )
    p.contract("buyer", "card")
    p.record(p.event("buyer", "completion", p.in_first_period, tokens="10000"))
    return p


def _assert_own_draft(p: Pricing, draft: invoices_pb2.Invoice) -> None:
    again = p.invoice_at("buyer", p.in_first_period)
    assert again.status == "DRAFT"
    assert lines(again) == [("llm", "10000", "15.00"), ("platform", "1", "30.00")]
    assert list(again.rate_card_versions) == [1]
    assert again.total.amount == "45.00"
    assert again.content_sha256 == draft.content_sha256


def test_preview_under_another_published_version_writes_nothing(server: RunningServer) -> None:
    p = _preview_world(server)
    p.publish(
        "card",
        [
            per_unit("llm", "0.002"),
            catalog_pb2.Rate(product_id="platform", model="flat", flat_amount="35.00"),
        ],
        effective_from=p.now + timedelta(days=1),
    )
    draft = p.invoice_at("buyer", p.in_first_period)
    assert draft.total.amount == "45.00"
    head_before = head_seq(server)

    preview = p.preview(
        customer_id="buyer", at=ts(p.in_first_period), rate_card_id="card", rate_card_version=2
    )

    assert preview.status == "PREVIEW"
    assert preview.invoice_id == draft.invoice_id
    assert lines(preview) == [("llm", "10000", "20.00"), ("platform", "1", "35.00")]
    assert [li.rate_card_version for li in preview.lines] == [2, 2]
    assert list(preview.rate_card_versions) == [2]
    assert (preview.subtotal.amount, preview.total.amount) == ("55.00", "55.00")
    assert head_seq(server) == head_before
    _assert_own_draft(p, draft)


def test_preview_with_an_inline_card_publishes_nothing(server: RunningServer) -> None:
    p = _preview_world(server)
    draft = p.invoice_at("buyer", p.in_first_period)
    head_before = head_seq(server)
    inline = catalog_pb2.DraftRateCardRequest(
        rate_card_id="card",
        name="What if",
        currency="USD",
        effective_from=ts(p.start),
        rates=[
            per_unit("llm", "0.001"),
            catalog_pb2.Rate(product_id="platform", model="flat", flat_amount="10.00"),
        ],
    )

    preview = p.preview(invoice_id=draft.invoice_id, rate_card=inline)

    assert preview.status == "PREVIEW"
    assert lines(preview) == [("llm", "10000", "10.00"), ("platform", "1", "10.00")]
    assert [li.unit_price for li in preview.lines] == ["0.001", "0"]
    assert preview.total.amount == "20.00"
    assert head_seq(server) == head_before
    assert [v.version for v in p.versions("card").versions] == [1]
    _assert_own_draft(p, draft)


def test_hypothetical_preview_quotes_only_the_given_events(server: RunningServer) -> None:
    p = _preview_world(server)
    draft = p.invoice_at("buyer", p.in_first_period)
    head_before = head_seq(server)
    at = p.in_first_period
    quoted = [
        p.event("buyer", "completion", at, tokens="300"),
        p.event("buyer", "completion", at + timedelta(hours=1), tokens="200"),
        p.event("buyer", "other_event", at, tokens="999999"),
    ]

    quote = p.preview(customer_id="buyer", at=ts(at), hypothetical=True, usage=quoted)
    empty = p.preview(customer_id="buyer", at=ts(at), hypothetical=True)

    assert quote.status == "PREVIEW"
    assert lines(quote) == [("llm", "500", "0.75"), ("platform", "1", "30.00")]
    assert quote.total.amount == "30.75"
    assert empty.status == "PREVIEW"
    assert lines(empty) == [("llm", "0", "0.00"), ("platform", "1", "30.00")]
    assert empty.total.amount == "30.00"
    assert head_seq(server) == head_before
    _assert_own_draft(p, draft)


def test_preview_with_a_negative_inline_price_is_refused(server: RunningServer) -> None:
    p = _preview_world(server)
    errors = Errors()
    head_before = head_seq(server)
    inline = catalog_pb2.DraftRateCardRequest(
        rate_card_id="card",
        name="Broken",
        currency="USD",
        effective_from=ts(p.start),
        rates=[per_unit("llm", "-0.001")],
    )

    failure = errors.expect(
        INVALID,
        lambda: p.preview(customer_id="buyer", at=ts(p.in_first_period), rate_card=inline),
    )

    # Field paths name the request's fields: the card sits in PreviewInvoiceRequest.rate_card.
    assert failure.fields == ["rate_card.rates[0].unit_price"]
    assert "negative" in dict(failure.violations)["rate_card.rates[0].unit_price"]
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    assert [v.version for v in p.versions("card").versions] == [1]
    errors.assert_no_internals_leaked()


# ---------------------------------------------------------------------------------------
# 7. UNIQUE and LATEST


def test_unique_and_latest_metrics_are_priced(server: RunningServer) -> None:
    p = Pricing(server)
    p.metric("active-users", "login", "UNIQUE", "user")
    p.metric("storage-level", "gauge", "LATEST", "level")
    p.product("seats", "active-users")
    p.product("storage", "storage-level")
    p.publish("card", [per_unit("seats", "2.00"), per_unit("storage", "0.25")])
    p.contract("buyer", "card")
    at = p.in_first_period
    logins = ["u1", "u2", "u1", "u3", "u2"]
    p.record(
        *(
            p.event("buyer", "login", at + timedelta(minutes=i), user=u)
            for i, u in enumerate(logins)
        )
    )
    # Out of order: the latest timestamp carries 4, the largest value is 9, the last sent 7.
    p.record(
        p.event("buyer", "gauge", at - timedelta(days=5), level="9"),
        p.event("buyer", "gauge", at + timedelta(days=2), level="4"),
        p.event("buyer", "gauge", at - timedelta(days=8), level="7"),
    )
    p.record(p.event("buyer", "login", at + timedelta(days=1), user="u3"))

    invoice = p.invoice_at("buyer", at)

    assert lines(invoice) == [("seats", "3", "6.00"), ("storage", "4", "1.00")]
    assert invoice.total.amount == "7.00"
    assert list(invoice.unbilled) == []
