"""One trace from the caller's traceparent through the server span to every SQL statement."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.api.accrual.v1 import contracts_pb2, contracts_pb2_grpc, usage_pb2, usage_pb2_grpc
from services.telemetry import Telemetry, configure_telemetry
from tests.e2e.conftest import RunningServer, serving

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def telemetry() -> Iterator[Telemetry]:
    """The process-wide tracer provider (set once), exporting to memory."""
    installed = configure_telemetry({}, span_exporter=EXPORTER)
    yield installed
    PsycopgInstrumentor().uninstrument()


@pytest.fixture
def traced_server(telemetry: Telemetry, database_url: str) -> Iterator[RunningServer]:
    yield from serving(database_url, telemetry.server_interceptors())


def test_a_call_with_traceparent_is_one_trace_with_sql_spans_and_logs(
    traced_server: RunningServer, telemetry: Telemetry, capsys: pytest.CaptureFixture[str]
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    EXPORTER.clear()
    capsys.readouterr()
    contracts_pb2_grpc.ContractServiceStub(traced_server.channel).CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="traced", name="Traced Ltd")
        ),
        metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")],
    )
    assert telemetry.tracer_provider is not None
    telemetry.tracer_provider.force_flush()

    spans = [
        s for s in EXPORTER.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id
    ]
    (server_span,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert server_span.name == "/accrual.v1.ContractService/CreateCustomer"
    assert format(server_span.parent.span_id, "016x") == parent_id  # joined to the caller
    sql = [s for s in spans if (s.attributes or {}).get("db.system") == "postgresql"]
    assert len(sql) >= 2, "the append's statements are traced"
    by_id = {s.context.span_id: s for s in spans}
    for span in sql:
        ancestor = span
        while ancestor.parent is not None and ancestor.parent.span_id in by_id:
            ancestor = by_id[ancestor.parent.span_id]
        assert ancestor is server_span, f"{span.name} sits beneath the server span"

    lines = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")
    ]
    rpc_lines = [line for line in lines if line.get("event") == "rpc"]
    assert any(
        line.get("trace_id") == trace_id and line.get("method") == "CreateCustomer"
        for line in rpc_lines
    ), rpc_lines


def test_projection_batches_are_spans_linked_to_the_calls_they_apply(
    traced_server: RunningServer, telemetry: Telemetry
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    contracts_pb2_grpc.ContractServiceStub(traced_server.channel).CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="linked", name="Linked Ltd")
        ),
        metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")],
    )
    assert telemetry.tracer_provider is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        telemetry.tracer_provider.force_flush()
        batches = [
            span
            for span in EXPORTER.get_finished_spans()
            if span.name.startswith("projection batch")
            and any(format(link.context.trace_id, "032x") == trace_id for link in span.links)
        ]
        if {span.name for span in batches} >= {
            "projection batch audit_log",
            "projection batch usage_rollups",
        }:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the projector's batches link back to the call")
    # Background work has its own trace, linked to (not inside) the call's.
    assert all(format(span.context.trace_id, "032x") != trace_id for span in batches)
    assert all((span.attributes or {}).get("accrual.events", 0) >= 1 for span in batches)


def test_a_usage_calls_span_names_its_batch_and_customer(
    traced_server: RunningServer, telemetry: Telemetry
) -> None:
    contracts_pb2_grpc.ContractServiceStub(traced_server.channel).CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="metered", name="Metered Ltd")
        )
    )
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"tx-{n}", customer_id="metered", event_type="api", timestamp=stamp
        )
        for n in range(3)
    ]
    trace_id = secrets.token_hex(16)
    usage_pb2_grpc.UsageServiceStub(traced_server.channel).RecordUsage(
        usage_pb2.RecordUsageRequest(events=events),
        metadata=[("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")],
    )
    assert telemetry.tracer_provider is not None
    telemetry.tracer_provider.force_flush()
    (server_span,) = [
        s
        for s in EXPORTER.get_finished_spans()
        if s.kind is SpanKind.SERVER and format(s.context.trace_id, "032x") == trace_id
    ]
    attributes = server_span.attributes or {}
    assert attributes.get("accrual.batch_size") == 3
    assert attributes.get("accrual.customers") == 1
    assert attributes.get("accrual.customer_id") == "metered"
