"""Run-rate forecasts: past periods as of their midpoints beside their actual totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ledger.app.catalog import RateCardInput
from ledger.app.customers import ContractInput
from ledger.app.usage import UsageInput
from ledger.core.errors import DomainError, Rule
from ledger.core.forecast import LINEAR, SHAPED
from ledger.core.rate_specs import RateSpec, TierSpec
from projections.forecasting import ForecastQuery
from services.bootstrap import App
from tests.integration.pricing import publish_approved
from tests.integration.report_world import CTX, MONTHS, START, Clock, catalog, record, run_world

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def hourly_usage(customer_id: str, start: datetime, end: datetime) -> list[UsageInput]:
    """One completion of 1,000 small-model tokens at the middle of every hour."""
    events = []
    at = start + timedelta(minutes=30)
    while at < end:
        props = {"model": "small", "tokens": "1000"}
        events.append(
            UsageInput(f"{customer_id}-{at:%m%d%H}", customer_id, "completion", at, props)
        )
        at += timedelta(hours=1)
    return events


async def steady_customer(app: App, customer_id: str) -> None:
    await app.customers.create_customer(customer_id, "Steady", CTX)
    contract = ContractInput(f"{customer_id}-c", customer_id, "list", None, START, None, None)
    await app.customers.create_contract(contract, CTX)
    await record(app, hourly_usage(customer_id, START, NOW))


def test_past_forecasts_at_their_midpoints_stand_beside_the_actuals(database_url: str) -> None:
    clock = Clock(NOW)

    async def body(app: App) -> None:
        await catalog(app)
        await steady_customer(app, "steady")
        await app.invoicing.finalize("in-steady-c-1", CTX)  # February stays a draft
        await app.runner.catch_up()
        forecasts, _ = await app.forecasting.forecasts(ForecastQuery(["steady"], past_periods=2))
        january, february, march = forecasts
        # January: no period before it, so linear; half the month gone at its midpoint.
        assert january.as_of == datetime(2025, 1, 16, 12, tzinfo=UTC)
        assert january.elapsed == Decimal("0.5")
        assert january.method.startswith(LINEAR)
        assert january.so_far.subtotal == Decimal("7.44")  # 372 hours x 1,000 x 0.00002
        assert january.actual is not None and january.actual_status == "FINALIZED"
        # Steady usage: the forecast is the actual, exactly.
        assert january.forecast.total == january.actual.total == Decimal("14.88")
        # February: shaped by January (half its events by its midpoint), priced at v2.
        assert february.as_of == datetime(2025, 2, 15, tzinfo=UTC)
        assert february.method.startswith(SHAPED)
        assert february.actual is not None and february.actual_status == "DRAFT"
        assert february.forecast.total == february.actual.total == Decimal("20.16")
        # March is open: forecast as of now, with no actual yet.
        assert march.actual is None and march.actual_status == ""
        assert march.as_of == NOW
        assert march.so_far.subtotal == Decimal("6.84")  # 228 hours x 1,000 x 0.00003
        steady_month = Decimal("22.32")  # 744 hours x 1,000 x 0.00003
        assert abs(march.forecast.total - steady_month) <= Decimal("0.05")
        assert "scaled by" in march.method

    run_world(database_url, clock, body)


def test_a_forecast_scales_sums_and_counts_but_prices_through_tiers(database_url: str) -> None:
    clock = Clock(NOW)

    async def body(app: App) -> None:
        await catalog(app)
        await app.customers.create_customer("calls", "Calls", CTX)
        contract = ContractInput("calls-c", "calls", "list", None, MONTHS[2], None, None)
        await app.customers.create_contract(contract, CTX)
        # 19 calls in March's first 9.5 days, nothing before March: linear in time.
        at = MONTHS[2] + timedelta(hours=1)
        calls = [UsageInput(f"k{n}", "calls", "api_call", at, {}) for n in range(19)]
        await record(app, calls)
        await app.runner.catch_up()
        (march,) = (await app.forecasting.forecasts(ForecastQuery(["calls"])))[0]
        assert march.so_far.subtotal == Decimal("0.95")  # 19 x 0.05, all in the first tier
        # 19 / (9.5 / 31) = 62 calls: 20 at 0.05 and 42 at 0.02.
        assert march.forecast.subtotal == Decimal("1.84")

    run_world(database_url, clock, body)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (ForecastQuery(past_periods=25), "past_periods"),
        (ForecastQuery(past_periods=-1), "past_periods"),
        (ForecastQuery(customer_ids=["no spaces"]), "customer_ids[0]"),
    ],
)
def test_bad_forecast_queries_name_the_field(
    database_url: str, query: ForecastQuery, field: str
) -> None:
    async def body(app: App) -> None:
        with pytest.raises(DomainError) as caught:
            await app.forecasting.forecasts(query)
        assert caught.value.rule is Rule.REQUEST_INVALID
        assert [v.field for v in caught.value.violations] == [field]

    run_world(database_url, Clock(NOW), body)


def test_a_price_change_inside_the_period_prices_each_part_at_its_own_rate(
    database_url: str,
) -> None:
    """Prices x10 from 15 March; steady usage; forecast as of 25 March."""
    as_of = datetime(2025, 3, 25, tzinfo=UTC)
    clock = Clock(as_of)

    async def body(app: App) -> None:
        await catalog(app)
        rates = [
            RateSpec("llm", "per_unit", "0.0003"),
            RateSpec("llm", "per_unit", "0.0007", group_values={"model": "large"}),
            RateSpec("api", "graduated", tiers=[TierSpec("20", "0.05"), TierSpec("", "0.02")]),
        ]
        card = RateCardInput("list", "List", "USD", None, datetime(2025, 3, 15, tzinfo=UTC), rates)
        await publish_approved(app.catalog, card, CTX)
        await app.customers.create_customer("steady", "Steady", CTX)
        contract = ContractInput("steady-c", "steady", "list", None, START, None, None)
        await app.customers.create_contract(contract, CTX)
        await record(app, hourly_usage("steady", START, as_of))
        await app.runner.catch_up()
        forecasts, _ = await app.forecasting.forecasts(ForecastQuery(["steady"]))
        march = forecasts[-1]
        # So far: 336 hours at 0.03 before the 15th, 240 hours at 0.30 after it.
        assert march.so_far.subtotal == Decimal("82.08")
        # The month, if it stays steady: 10.08 + 408 hours x 0.30 = 132.48. The
        # forecast adds the rest at the new price only: February's shape says
        # 77.5298% of the usage is in by now, so 576,000 x 0.289826 = 166,939.8
        # more tokens, 50.08 at 0.0003.
        assert march.forecast.subtotal == Decimal("132.16")
        assert abs(march.forecast.subtotal - Decimal("132.48")) < Decimal("0.5")

    run_world(database_url, clock, body)
