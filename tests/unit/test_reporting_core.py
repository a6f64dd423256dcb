"""The pure core of reports: summing lines along dimensions, costs, and run-rate forecasts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import given
from hypothesis import strategies as st

from ledger.core.forecast import LINEAR, SHAPED, elapsed_share, project, run_rate
from ledger.core.invoice import LineKind
from ledger.core.metering import Latest, Tally
from ledger.core.reporting import CostBook, Dimension, ProductCost, RevenueLine, summarize

JAN = datetime(2025, 1, 1, tzinfo=UTC)
FEB = datetime(2025, 2, 1, tzinfo=UTC)


def line(
    amount: str,
    *,
    product: str = "llm",
    customer: str = "acme",
    quantity: str = "1000",
    kind: LineKind = LineKind.USAGE,
    at: datetime = JAN,
    currency: str = "USD",
    version: int = 1,
    groups: dict[str, str] | None = None,
) -> RevenueLine:
    return RevenueLine(
        invoice_id=f"in-{customer}-1",
        customer_id=customer,
        currency=currency,
        period_start=JAN,
        product_id=product,
        product_name=product.upper(),
        metric_id="tokens",
        group_values=groups or {},
        rate_card_id="list",
        rate_card_version=version,
        kind=kind,
        segment_start=at,
        quantity=Decimal(quantity),
        amount=Decimal(amount),
        places=2,
    )


amounts = st.decimals(min_value=-1000, max_value=10**6, places=2, allow_nan=False)
lines = st.lists(
    st.builds(
        line,
        amounts.map(str),
        product=st.sampled_from(["llm", "api", "seats"]),
        customer=st.sampled_from(["a", "b", "c"]),
        version=st.integers(1, 3),
        currency=st.sampled_from(["USD", "EUR"]),
        groups=st.sampled_from([{}, {"model": "small"}, {"model": "large"}]),
    ),
    max_size=40,
)


@given(lines, st.lists(st.sampled_from(list(Dimension)), unique=True, max_size=3))
def test_every_split_sums_to_the_same_total_per_currency(
    found: list[RevenueLine], by: list[Dimension]
) -> None:
    rows = summarize(found, by, CostBook())
    for currency in ("USD", "EUR"):
        expected = sum((x.amount for x in found if x.currency == currency), Decimal(0))
        assert sum((r.amount for r in rows if r.currency == currency), Decimal(0)) == expected
    assert sum(r.line_count for r in rows) == len(found)
    assert len({(r.currency, r.keys) for r in rows}) == len(rows)


def test_keys_name_products_versions_and_pricing_dimensions() -> None:
    found = [
        line("1.00", groups={"region": "eu", "model": "large"}, version=2),
        line("2.00", groups={"model": "large", "region": "eu"}, version=2),
        line("4.00", version=1),
    ]
    by = [Dimension.RATE_CARD, Dimension.PRICING_DIMENSION]
    rows = summarize(found, by, CostBook())
    assert [(r.keys, r.amount) for r in rows] == [
        (((Dimension.RATE_CARD, "list@v1"), (Dimension.PRICING_DIMENSION, "")), Decimal("4.00")),
        (
            (
                (Dimension.RATE_CARD, "list@v2"),
                (Dimension.PRICING_DIMENSION, "model=large,region=eu"),
            ),
            Decimal("3.00"),
        ),
    ]


def test_costs_take_the_price_in_force_and_round_per_line() -> None:
    book = CostBook(
        [
            ProductCost("llm", "USD", Decimal("0.001"), JAN),
            ProductCost("llm", "USD", Decimal("0.002"), FEB),
        ]
    )
    january = line("5.00", quantity="1005", at=JAN + timedelta(days=3))  # 1.005 -> 1.01
    february = line("5.00", quantity="1000", at=FEB)
    assert book.line_cost(january) == Decimal("1.01")
    assert book.line_cost(february) == Decimal("2.00")
    assert book.line_cost(line("1.00", at=JAN - timedelta(seconds=1))) is None  # before any
    assert book.line_cost(line("1.00", currency="EUR")) is None  # no EUR cost
    assert book.line_cost(line("9.00", kind=LineKind.TRUE_UP)) == Decimal("0.00")
    uncosted = line("1.00", at=JAN - timedelta(days=1))
    (row,) = summarize([january, february, uncosted], [Dimension.PRODUCT], book)
    assert (row.cost, row.uncosted_lines, row.margin) == (Decimal("3.01"), 1, Decimal("7.99"))


def test_elapsed_share_is_exact_and_clipped() -> None:
    assert elapsed_share(JAN, FEB, JAN + timedelta(days=15, hours=12)) == Decimal("0.5")
    assert elapsed_share(JAN, FEB, JAN - timedelta(days=1)) == 0
    assert elapsed_share(JAN, FEB, FEB + timedelta(days=1)) == 1


def test_the_run_rate_is_shaped_by_the_previous_period_when_it_had_usage() -> None:
    linear = run_rate(Decimal("0.25"), None)
    assert linear is not None and linear.method == LINEAR and linear.factor == 4
    assert run_rate(Decimal("0.25"), (0, 0)) == linear  # a previous period with no usage
    shaped = run_rate(Decimal("0.25"), (10, 100))
    assert shaped is not None and shaped.method == SHAPED and shaped.factor == 10
    assert run_rate(Decimal(0), None) is None  # nothing to scale yet
    # The previous period's usage all came later than this point: no shape to go by.
    assert run_rate(Decimal("0.5"), (0, 100)) == run_rate(Decimal("0.5"), None)
    assert "scaled by 10" in shaped.describe()


def test_projection_scales_what_accumulates_and_keeps_the_rest() -> None:
    key = (JAN, "tokens", ())
    latest = Latest(JAN, 7, Decimal("3"))
    tally = Tally(
        count=3,
        total=Decimal("1.5"),
        maximum=Decimal("9"),
        distinct=frozenset({"a", "b"}),
        latest=latest,
    )
    rate = run_rate(Decimal("0.4"), None)
    assert rate is not None
    (projected,) = project({key: tally}, rate, [(JAN, FEB)], JAN + timedelta(days=12)).values()
    assert projected.count == 8  # 7.5 rounds half up
    assert projected.total == Decimal("3.750000")
    assert (projected.maximum, projected.distinct, projected.latest) == (
        Decimal("9"),
        frozenset({"a", "b"}),
        latest,
    )


def test_a_finished_segment_keeps_its_usage_and_later_ones_share_the_rest() -> None:
    """A price change on the 15th, forecast as of the 25th of a 30-day period."""
    mid, now, end = JAN + timedelta(days=15), JAN + timedelta(days=25), JAN + timedelta(days=30)
    later = JAN + timedelta(days=28)  # a third segment: a version effective from the 28th
    segments = [(JAN, mid), (mid, later), (later, end)]
    before = Tally(count=15, total=Decimal("150"), maximum=Decimal("4"))
    current = Tally(count=10, total=Decimal("100"), maximum=Decimal("7"))
    usage = {(JAN, "m", ()): before, (mid, "m", ()): current}
    rate = run_rate(Decimal("0.833333"), None)  # 25 of 30 days gone
    assert rate is not None
    projected = project(usage, rate, segments, now)
    assert projected[(JAN, "m", ())] == before  # finished: as it was
    added = [projected[(mid, "m", ())].count - 10, projected[(later, "m", ())].count]
    # 25 events so far x 0.2 more = 5 more, spread 3 days : 2 days over what is left.
    assert added == [3, 2]
    assert projected[(later, "m", ())].maximum == Decimal("7")  # carried as last seen
    assert sum(t.count for t in projected.values()) == 30


@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=4),
    st.integers(1, 29),
    st.decimals(min_value=Decimal("0.01"), max_value=1, places=6),
)
def test_projection_adds_exactly_what_the_factor_says(
    counts: list[int], day: int, share: Decimal
) -> None:
    days = len(counts)
    starts = [JAN + timedelta(days=30 * i / days) for i in range(days)]
    segments = list(zip(starts, [*starts[1:], JAN + timedelta(days=30)], strict=True))
    usage = {
        (s, "m", ()): Tally(count=c, total=Decimal(c)) for s, c in zip(starts, counts, strict=True)
    }
    rate = run_rate(share, None)
    assert rate is not None
    projected = project(usage, rate, segments, JAN + timedelta(days=day))
    added = sum(t.count for t in projected.values()) - sum(counts)
    expected = (sum(counts) * (rate.factor - 1)).to_integral_value(rounding=ROUND_HALF_UP)
    assert added == expected


def test_a_cost_is_rounded_once_from_the_exact_product() -> None:
    book = CostBook([ProductCost("llm", "USD", Decimal("0.000000000001"), JAN)])
    # 0.0049999999999999999999999999999 exactly: rounds to 0.00, not (twice) to 0.01.
    assert book.line_cost(line("1.00", quantity="4999999999.9999999999999999999")) == Decimal(
        "0.00"
    )
    huge = CostBook([ProductCost("llm", "USD", Decimal("1000000.5"), JAN)])
    cost = huge.line_cost(line("1.00", quantity="99999999999999999999.5"))
    assert cost == Decimal("100000049999999999999499999.75")  # all 29 digits kept
