"""OpenTelemetry wiring: traces and metrics, configured only by the standard OTEL_* variables.

With no exporter configured nothing is installed, so instrumentation costs
nothing: the API's no-op tracer and meter stay in place. Metrics can also be
scraped by Prometheus when ``ACCRUAL_PROMETHEUS_ADDRESS`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from prometheus_client import start_http_server

SERVICE_NAME = "accrual"


@dataclass
class Telemetry:
    """What was switched on, and how to flush it at shutdown."""

    tracing: bool = False
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    readers: list[MetricReader] = field(default_factory=list)

    def server_interceptors(self) -> list[object]:
        """The gRPC server interceptors for traces (joined to callers via traceparent)."""
        return [aio_server_interceptor()] if self.tracing else []  # type: ignore[no-untyped-call]

    def shutdown(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def otlp_configured(env: Mapping[str, str], signal: str) -> bool:
    """Whether the OTEL_* variables ask for an OTLP exporter for ``signal``."""
    exporter = env.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"
    )
    return bool(endpoint) or exporter == "otlp"


def configure_telemetry(
    env: Mapping[str, str] | None = None,
    *,
    span_exporter: SpanExporter | None = None,
    prometheus: tuple[str, int] | None = None,
) -> Telemetry:
    """Install providers when asked to; ``span_exporter`` replaces OTLP (tests)."""
    env = os.environ if env is None else env
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", SERVICE_NAME)})
    telemetry = Telemetry()
    if span_exporter is None and otlp_configured(env, "traces"):
        span_exporter = OTLPSpanExporter()
    if span_exporter is not None:
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(provider)
        PsycopgInstrumentor().instrument(skip_dep_check=True)
        telemetry.tracing, telemetry.tracer_provider = True, provider
    telemetry.readers = _metric_readers(env, prometheus)
    if telemetry.readers:
        telemetry.meter_provider = MeterProvider(
            resource=resource, metric_readers=telemetry.readers
        )
        metrics.set_meter_provider(telemetry.meter_provider)
    return telemetry


def _metric_readers(
    env: Mapping[str, str], prometheus: tuple[str, int] | None
) -> list[MetricReader]:
    readers: list[MetricReader] = []
    if otlp_configured(env, "metrics"):
        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if prometheus is not None:
        host, port = prometheus
        start_http_server(port, addr=host)
        readers.append(PrometheusMetricReader())
    return readers
