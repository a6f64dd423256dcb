"""Projection throughput and lag reach an OpenTelemetry meter provider."""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.bootstrap import PROJECTIONS, App
from tests.integration.test_projection_ops import run_app, seed

READER = InMemoryMetricReader()
# The global provider can be set once per process; this module is its only user.
metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))


def points(name: str) -> list[tuple[dict[str, object], float]]:
    data = READER.get_metrics_data()
    found: list[tuple[dict[str, object], float]] = []
    if data is None:  # nothing recorded yet in this process
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found += [(dict(p.attributes or {}), p.value) for p in metric.data.data_points]  # type: ignore[attr-defined]
    return found


def applied() -> dict[object, float]:
    """Events applied so far per projection (cumulative over this test process)."""
    totals: dict[object, float] = dict.fromkeys(PROJECTIONS, 0)
    for attrs, value in points("accrual.projection.events"):
        if attrs["projection"] in totals:  # not a test's own projection
            totals[attrs["projection"]] += value
    return totals


def test_applied_events_and_lag_are_exported(database_url: str) -> None:
    async def body(app: App) -> None:
        await seed(app, 1_500)
        await app.runner.catch_up()

    before = applied()
    run_app(database_url, body)
    after = applied()
    # 2 metrics, 3 customers and 1,500 usage events: every one reaches every projection.
    assert {name: after[name] - before[name] for name in after} == dict.fromkeys(PROJECTIONS, 1_505)
    lags = {
        attrs["projection"]: value
        for attrs, value in points("accrual.projection.lag")
        if attrs["projection"] in PROJECTIONS
    }
    assert lags == dict.fromkeys(PROJECTIONS, 0)
