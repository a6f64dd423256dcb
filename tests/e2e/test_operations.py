"""Operating `accrual serve`: OTLP traces, a database that dies and returns, SIGTERM under load.

Each test runs the real command as a subprocess on its own embedded PostgreSQL,
on free loopback ports, and talks to it over gRPC as any client would.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from services.api.accrual.v1 import contracts_pb2, contracts_pb2_grpc, usage_pb2
from services.embedded_db import EmbeddedPostgres, free_port
from tests.e2e.conftest import RunningServer, WithToken
from tests.e2e.helpers import ACCEPTED, setup_world

STARTUP_S = 60
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CREATE_CUSTOMER = "/accrual.v1.ContractService/CreateCustomer"


# ---------------------------------------------------------------------------------------
# `accrual serve` as a subprocess, on its own embedded PostgreSQL


@dataclass
class Served:
    """One `accrual serve` process, its embedded database and a channel to it."""

    data_dir: Path
    pg_port: int
    grpc_port: int
    process: subprocess.Popen[bytes]
    channel: grpc.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    def token(self, who: str) -> str:
        """The local ``admin`` or ``approver`` token written at start."""
        return (self.data_dir / f"{who}-token").read_text().strip()

    def as_running_server(self) -> RunningServer:
        url = self.database.url
        return RunningServer(
            self.address, url, self.channel, self.token("admin"), self.token("approver")
        )

    @property
    def database(self) -> EmbeddedPostgres:
        return EmbeddedPostgres(self.data_dir / "pgdata", self.pg_port)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def health(self, timeout: float = 2.0) -> int:
        stub = health_pb2_grpc.HealthStub(self.channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return int(reply.status)

    def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit code (a hang fails the test)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"accrual serve did not exit {timeout}s after SIGTERM\n{self.log_tail()}"
            ) from None


def _environment(
    data_dir: Path, pg_port: int, grpc_port: int, extra: dict[str, str]
) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("ACCRUAL_", "OTEL_"))
    }
    env |= {
        "ACCRUAL_DATA_DIR": str(data_dir),
        "ACCRUAL_EMBEDDED_PG_PORT": str(pg_port),
        "ACCRUAL_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "ACCRUAL_LOG_FORMAT": "json",
    }
    return env | extra


@contextlib.contextmanager
def serving(data_dir: Path, **extra: str) -> Iterator[Served]:
    """`accrual serve` until the block ends; killed (and its database stopped) if still up."""
    pg_port, grpc_port = free_port(), free_port()
    env = _environment(data_dir, pg_port, grpc_port, extra)
    with (data_dir / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            served = Served(data_dir, pg_port, grpc_port, process, channel)
            wait_serving(served)
            # Calls as the local admin whose token `make run` leaves in the data folder.
            yield replace(
                served, channel=grpc.intercept_channel(channel, WithToken(served.token("admin")))
            )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        database = EmbeddedPostgres(data_dir / "pgdata", pg_port)
        if database.is_running():
            database.stop(mode="immediate")


def wait_serving(served: Served) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        assert served.process.poll() is None, served.log_tail()
        try:
            status = served.health(timeout=1)
        except grpc.RpcError:
            time.sleep(0.2)
            continue
        assert status == SERVING, status
        return
    raise AssertionError(f"accrual serve did not become healthy\n{served.log_tail()}")


def eventually(what: str, within_s: float, probe: Callable[[], object]) -> Any:
    """Poll ``probe`` until it returns something truthy; the last value is in the failure."""
    deadline = time.monotonic() + within_s
    last: object = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen within {within_s}s; last: {last!r}")


def customers(channel: grpc.Channel) -> contracts_pb2_grpc.ContractServiceStub:
    return contracts_pb2_grpc.ContractServiceStub(channel)


def create_customer(
    channel: grpc.Channel,
    customer_id: str,
    *,
    timeout: float,
    metadata: tuple[tuple[str, str], ...] = (),
) -> contracts_pb2.Customer:
    reply: contracts_pb2.Customer = customers(channel).CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id=customer_id, name=f"{customer_id} corp")
        ),
        timeout=timeout,
        metadata=metadata,
    )
    return reply


# ---------------------------------------------------------------------------------------
# 1. Traces reach a real OTLP/gRPC receiver


@dataclass
class ReceivedSpan:
    service_name: str
    name: str
    kind: int
    trace_id: str
    parent_span_id: str
    attributes: dict[str, object]


@dataclass
class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP trace collector: keeps every span it is sent."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(  # noqa: N802 - the OTLP method name
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = [
            ReceivedSpan(
                service_name=str(resource.get("service.name", "")),
                name=span.name,
                kind=span.kind,
                trace_id=span.trace_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                attributes=_attributes(span.attributes),
            )
            for resource_spans in request.resource_spans
            for resource in [_attributes(resource_spans.resource.attributes)]
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self.lock:
            self.spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


def _attributes(values: Any) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in values:
        value: common_pb2.AnyValue = item.value
        kind = value.WhichOneof("value")
        out[item.key] = getattr(value, kind) if kind else None
    return out


@contextlib.contextmanager
def otlp_receiver() -> Iterator[tuple[OtlpReceiver, int]]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield receiver, port
    finally:
        server.stop(grace=None).wait(timeout=5)


def test_traces_of_a_call_reach_an_otlp_receiver_joined_to_the_callers_trace(
    tmp_path: Path,
) -> None:
    with (
        otlp_receiver() as (receiver, otlp_port),
        serving(
            tmp_path,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
            OTEL_EXPORTER_OTLP_INSECURE="true",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_SERVICE_NAME="accrual-test",
            OTEL_METRICS_EXPORTER="none",
        ) as served,
    ):
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        create_customer(
            served.channel,
            "traced",
            timeout=10,
            metadata=(("traceparent", f"00-{trace_id}-{parent_id}-01"),),
        )

        def traced() -> tuple[list[ReceivedSpan], list[ReceivedSpan]] | None:
            ours = [s for s in receiver.snapshot() if s.trace_id == trace_id]
            calls = [s for s in ours if CREATE_CUSTOMER in s.name]
            queries = [s for s in ours if _is_database_span(s)]
            return (calls, queries) if calls and queries else None

        calls, queries = eventually("the call's server and database spans", 10, traced)
        spans = receiver.snapshot()
        assert spans
        assert {s.service_name for s in spans} == {"accrual-test"}
        server_spans = [s for s in calls if s.kind == trace_pb2.Span.SPAN_KIND_SERVER]
        assert len(server_spans) == 1, calls
        assert server_spans[0].parent_span_id == parent_id, "joined to the caller's span"
        assert all(s.service_name == "accrual-test" for s in queries)
        assert served.terminate(timeout=30) == 0


def _is_database_span(span: ReceivedSpan) -> bool:
    system = span.attributes.get("db.system") or span.attributes.get("db.system.name")
    return system == "postgresql"


# ---------------------------------------------------------------------------------------
# 2. The database dies under the server, and comes back


def _health_or_error(served: Served) -> int | str:
    try:
        return served.health(timeout=2)
    except grpc.RpcError as error:
        return str(error.code())


def _create_outcome(
    served: Served, customer_id: str, *, timeout: float
) -> tuple[grpc.StatusCode, float]:
    """The status of one CreateCustomer call, and how long it took."""
    started = time.monotonic()
    try:
        create_customer(served.channel, customer_id, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), round(time.monotonic() - started, 2)
    return grpc.StatusCode.OK, round(time.monotonic() - started, 2)


def test_database_going_away_turns_health_not_serving_and_calls_unavailable_then_recovers(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, ACCRUAL_HEALTH_CHECK_INTERVAL_S="1") as served:
        create_customer(served.channel, "before", timeout=10)

        served.database.stop(mode="immediate")
        assert not served.database.is_running()

        eventually("health NOT_SERVING", 10, lambda: _health_or_error(served) == NOT_SERVING)
        # Every call while the database is down is answered UNAVAILABLE, promptly: the
        # first ones find broken pooled connections, the later ones an empty pool.
        outcomes = [_create_outcome(served, f"down-{n}", timeout=5) for n in range(3)]
        assert [code for code, _ in outcomes] == [grpc.StatusCode.UNAVAILABLE] * 3, outcomes
        assert served.process.poll() is None

        served.database.start()

        eventually("health SERVING again", 15, lambda: _health_or_error(served) == SERVING)

        def succeeds() -> bool:
            try:
                create_customer(served.channel, f"after-{uuid.uuid4().hex[:8]}", timeout=5)
            except grpc.RpcError:
                return False
            return True

        eventually("CreateCustomer succeeding again", 10, succeeds)
        reply = create_customer(served.channel, "after", timeout=5)
        assert reply.consistency_token > 1
        assert served.process.poll() is None, "the server must recover without a restart"
        assert served.terminate(timeout=30) == 0


# ---------------------------------------------------------------------------------------
# 3. SIGTERM while usage is being ingested


# How long a call sent over loopback may take to reach the server on a busy machine.
IN_TRANSIT_S = 0.1


@dataclass
class Ingest:
    """What one client thread sent and what the server acknowledged."""

    accepted: list[str] = field(default_factory=list)
    other_results: list[tuple[str, int]] = field(default_factory=list)
    # (when the call was sent, when it failed, its code)
    failures: list[tuple[float, float, grpc.StatusCode]] = field(default_factory=list)
    crash: BaseException | None = None


def test_sigterm_during_ingest_finishes_calls_and_keeps_every_acknowledged_event_once(
    tmp_path: Path,
) -> None:
    with serving(tmp_path) as served:
        world = setup_world(served.as_running_server())
        used_at = datetime.now(UTC) - timedelta(minutes=1)
        stop_sending = threading.Event()
        sigterm_at: list[float] = []
        ingests = [Ingest() for _ in range(4)]

        def send(worker: int, ingest: Ingest) -> None:
            try:
                batch = 0
                while not stop_sending.is_set():
                    ids = [f"w{worker}-b{batch}-e{n}" for n in range(50)]
                    batch += 1
                    events = [world.event(tx, "10", used_at) for tx in ids]
                    sent_at = time.monotonic()
                    try:
                        reply = world.api.usage.RecordUsage(
                            usage_pb2.RecordUsageRequest(events=events), timeout=10
                        )
                    except grpc.RpcError as error:
                        ingest.failures.append((sent_at, time.monotonic(), error.code()))
                        if sigterm_at:
                            return
                        continue
                    for result in reply.results:
                        if result.status == ACCEPTED:
                            ingest.accepted.append(result.transaction_id)
                        else:
                            ingest.other_results.append((result.transaction_id, result.status))
            except BaseException as error:  # reported by the main thread
                ingest.crash = error

        threads = [
            threading.Thread(target=send, args=(n, ingest), daemon=True)
            for n, ingest in enumerate(ingests)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.5)
            sigterm_at.append(time.monotonic())
            served.process.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(timeout=max(0.0, sigterm_at[0] + 20 - time.monotonic()))
            assert not any(t.is_alive() for t in threads), (
                "client calls still running 20s after SIGTERM (a hung call, or new calls accepted)"
            )
        finally:
            stop_sending.set()
        try:
            code = served.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit 20s after SIGTERM\n{served.log_tail()}") from None
        assert code == 0, served.log_tail()

        for ingest in ingests:
            assert ingest.crash is None, ingest.crash
            assert not ingest.other_results, ingest.other_results[:5]
            early = [c for _, failed, c in ingest.failures if failed < sigterm_at[0]]
            assert not early, f"calls failed before SIGTERM: {early}"
            # Calls the server was already handling at SIGTERM finish. A call that
            # reaches it after the signal is refused as UNAVAILABLE, or CANCELLED when
            # gRPC drops it in the instant it stops listening; neither was
            # acknowledged, and a retry is safe either way. The client only knows
            # when it sent a call, so calls sent just before the signal (still in
            # transit when it landed) count as arriving after it.
            arrived = sigterm_at[0] - IN_TRANSIT_S
            # On failure: each failed call's send and failure times from SIGTERM, and
            # the server's last log lines (each call it answered, and its shutdown).
            timeline = [
                (round(sent - sigterm_at[0], 3), round(failed - sigterm_at[0], 3), c.name)
                for sent, failed, c in ingest.failures
            ]
            in_flight = {c for sent, _, c in ingest.failures if sent < arrived}
            assert in_flight <= {grpc.StatusCode.UNAVAILABLE}, (timeline, served.log_tail())
            refused = {c for sent, _, c in ingest.failures if sent >= arrived}
            assert refused <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, (
                timeline,
                served.log_tail(),
            )
        acknowledged = [tx for ingest in ingests for tx in ingest.accepted]
        assert acknowledged, "no call was acknowledged before SIGTERM"
        assert len(set(acknowledged)) == len(acknowledged)

        database = served.database
        assert not database.is_running(), "serve stops the embedded server it started"
        database.start()
        try:
            with psycopg.connect(database.url) as conn:
                rows = conn.execute(
                    "SELECT convert_from(payload, 'UTF8')::jsonb->>'transaction_id'"
                    " FROM events WHERE event_type = 'UsageRecorded'"
                ).fetchall()
        finally:
            database.stop()
        in_ledger = Counter(str(row[0]) for row in rows)
        missing = [tx for tx in acknowledged if in_ledger[tx] == 0]
        doubled = [tx for tx in acknowledged if in_ledger[tx] > 1]
        assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"
        assert not doubled, f"{len(doubled)} events recorded twice, e.g. {doubled[:5]}"


def test_metrics_are_on_a_prometheus_scrape_endpoint(tmp_path: Path) -> None:
    port = free_port()
    with serving(tmp_path, ACCRUAL_PROMETHEUS_ADDRESS=f"127.0.0.1:{port}") as served:
        wait_serving(served)
        create_customer(served.channel, "scraped", timeout=10)

        def scrape() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                text = reply.read().decode()
            return text if 'rpc_method="CreateCustomer"' in text else None

        text = eventually("the call's metrics on the endpoint", 10, scrape)
        assert "accrual_rpc_calls" in text
        assert "accrual_ledger_append_duration" in text
        assert served.terminate(timeout=30) == 0
