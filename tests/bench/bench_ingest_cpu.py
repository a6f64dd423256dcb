"""Benchmark: the CPU each usage event costs Accrual's own process, without the network.

Run with ``make bench`` (not part of ``make test``). The ingest benchmark's
rates move with the machine's disk and with what else runs: the raw-COPY
reference has ranged from 85,000 to 165,000 rows/s on one machine in one day.
This one counts process CPU (``time.process_time``), which moves much less,
so a change to the hot path can be judged by a few runs of it. It starts its
own embedded PostgreSQL (fsync on) and measures:

1. RecordUsage, 1,000 events a call, 8 calls at a time: the servicer's own
   method (request decoded from bytes, its reply encoded to bytes) through the
   group committer and the event store, in microseconds of CPU per event;
2. RecordUsage, one event a call, 64 calls at a time, through the handler
   chain every served call runs (draining count, tolerant decoding, the
   Guard's token check, logging and metrics): the request decoded from bytes
   and its reply encoded, in microseconds of CPU per call;
3. the projection runner catching up on what those wrote: every live
   projection, in microseconds of CPU per ledger event.

Each is given twice: the CPU of this process, and that of PostgreSQL's
processes (backends, WAL writer, checkpointer...) in the same span, which
together bound how many events two cores can take. gRPC's transport is not
counted: the ingest benchmark measures that. Each phase starts after a
CHECKPOINT, so that none pays for writing out the pages the one before left
dirty, and every call logs its line, as served, to /dev/null. Knobs:
ACCRUAL_BENCH_CPU_CALLS (default 400) and ACCRUAL_BENCH_CPU_SINGLE_CALLS
(default 20,000).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
from embedded import migrated_embedded_database, postgres_cpu_seconds, postmaster_of
from google.protobuf.timestamp_pb2 import Timestamp
from results_file import print_figures, write_result

from ledger.app.catalog import MetricInput
from ledger.app.context import RequestContext
from services.api.accrual.v1 import usage_pb2
from services.auth.credentials import issue_token
from services.bootstrap import App, running_app
from services.config import Settings
from services.draining import CallsInFlight
from services.logs import configure_logging
from services.server import (
    SERVING_GC_YOUNG_THRESHOLD,
    register_accrual_services,
    tune_garbage_collector,
)
from services.servicers.usage import UsageServicer

CALLS = int(os.environ.get("ACCRUAL_BENCH_CPU_CALLS", "400"))
EVENTS_PER_CALL = 1_000
CONCURRENT_CALLS = 8
SINGLE_CALLS = int(os.environ.get("ACCRUAL_BENCH_CPU_SINGLE_CALLS", "20000"))
SINGLE_CONCURRENT_CALLS = 64
if SINGLE_CALLS <= SINGLE_CONCURRENT_CALLS:
    raise SystemExit(f"ACCRUAL_BENCH_CPU_SINGLE_CALLS must be over {SINGLE_CONCURRENT_CALLS}")
RECORD_USAGE = "/accrual.v1.UsageService/RecordUsage"
CUSTOMERS = 100
CTX = RequestContext(actor="bench", reason="benchmark")


class _Context:
    """What the servicer asks of a gRPC call's context: its metadata (none here)."""

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return ()


class _CallContext(_Context):
    """A served call's context as the handler chain uses it: metadata with the
    caller's token."""

    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"),)

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        return "bench"

    async def abort_with_status(self, status: object) -> None:
        raise RuntimeError(f"a single-event call was refused: {status}")


class _Handlers:
    """Stands in for the gRPC server to collect the generic handlers registered."""

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def find(self, method: str) -> grpc.RpcMethodHandler:
        details = type("Details", (), {"method": method, "invocation_metadata": ()})()
        found = [h.service(details) for h in self.generic]
        return next(handler for handler in found if handler is not None)


def request_bytes(call: int, now: datetime, events_per_call: int = EVENTS_PER_CALL) -> bytes:
    """A serialized call of ``events_per_call`` events, as the ingest benchmark's
    clients send."""
    stamp = Timestamp()
    stamp.FromDatetime(now - timedelta(seconds=30))
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"tx-{call}-{n:06d}",
            customer_id=f"cust-{(call + n) % CUSTOMERS:03d}",
            event_type="completion",
            timestamp=stamp,
            properties={"model": "small", "tokens": "1234"},
        )
        for n in range(events_per_call)
    ]
    return usage_pb2.RecordUsageRequest(events=events).SerializeToString()


async def setup(app: App) -> None:
    metric = MetricInput("tokens", "LLM tokens", "completion", "SUM", "tokens")
    await app.catalog.create_metric(metric, CTX)
    for n in range(CUSTOMERS):
        await app.customers.create_customer(f"cust-{n:03d}", f"C {n}", CTX)
    await app.runner.catch_up()


def checkpoint(url: str) -> None:
    """Write out every dirty page now, so that the next phase pays only for its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


class CpuSpan:
    """CPU of this process and of PostgreSQL's over one span of work."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster

    def __enter__(self) -> CpuSpan:
        self._ours, self._pg = time.process_time(), postgres_cpu_seconds(self.postmaster)
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.ours = time.process_time() - self._ours
        self.postgres = postgres_cpu_seconds(self.postmaster) - self._pg


async def ingest_cpu(app: App, postmaster: int) -> dict[str, int | float]:
    servicer = UsageServicer(app.record_usage)
    context = _Context()
    now = datetime.now(UTC)
    requests = [request_bytes(call, now) for call in range(CALLS)]

    async def call(data: bytes) -> bytes:
        request = usage_pb2.RecordUsageRequest.FromString(data)
        reply = await servicer.RecordUsage(request, context)  # type: ignore[arg-type]
        accepted = usage_pb2.UsageEventResult.ACCEPTED
        assert all(result.status == accepted for result in reply.results), reply.results[0]
        return reply.SerializeToString()

    warm, measured = requests[:CONCURRENT_CALLS], requests[CONCURRENT_CALLS:]
    await asyncio.gather(*map(call, warm))
    with CpuSpan(postmaster) as span:
        for start in range(0, len(measured), CONCURRENT_CALLS):
            await asyncio.gather(*map(call, measured[start : start + CONCURRENT_CALLS]))
    events = len(measured) * EVENTS_PER_CALL
    return {
        "RecordUsage: events": events,
        "RecordUsage: CPU us/event": span.ours / events * 1e6,
        "RecordUsage: PostgreSQL CPU us/event": span.postgres / events * 1e6,
        "RecordUsage: events/s (one process, no network)": events / span.wall,
    }


async def single_event_cpu(app: App, url: str, postmaster: int) -> dict[str, int | float]:
    """Single-event RecordUsage calls through the handler chain a served call runs."""
    with psycopg.connect(url) as conn:
        token = issue_token(conn, "bench", ["ingest"]).token
    handlers = _Handlers()
    register_accrual_services(app, handlers, CallsInFlight())
    handler = handlers.find(RECORD_USAGE)
    decode, encode, behaviour = (
        handler.request_deserializer,
        handler.response_serializer,
        handler.unary_unary,
    )
    assert decode is not None and encode is not None and behaviour is not None
    context = _CallContext(token)
    now = datetime.now(UTC)
    # Call numbers after the batched phase's, so every transaction id is new.
    requests = [request_bytes(CALLS + n, now, 1) for n in range(SINGLE_CALLS)]
    accepted = usage_pb2.UsageEventResult.ACCEPTED
    pending = iter(requests)

    async def caller() -> None:
        for data in pending:
            reply = await behaviour(decode(data), context)
            assert reply.results[0].status == accepted, reply.results[0]
            encode(reply)

    warm = [next(pending) for _ in range(SINGLE_CONCURRENT_CALLS)]
    calls = SINGLE_CALLS - SINGLE_CONCURRENT_CALLS
    await asyncio.gather(*(behaviour(decode(data), context) for data in warm))
    checkpoint(url)
    with CpuSpan(postmaster) as span:
        await asyncio.gather(*(caller() for _ in range(SINGLE_CONCURRENT_CALLS)))
    return {
        "RecordUsage single: calls": calls,
        "RecordUsage single: CPU us/call": span.ours / calls * 1e6,
        "RecordUsage single: PostgreSQL CPU us/call": span.postgres / calls * 1e6,
        "RecordUsage single: calls/s (one process, no network)": calls / span.wall,
    }


async def projector_cpu(app: App, from_seq: int, postmaster: int) -> dict[str, float]:
    """The runner catching up on every event after ``from_seq``."""
    head = (await app.store.head()).seq
    with CpuSpan(postmaster) as span:
        await app.runner.catch_up()
    events = head - from_seq
    assert (await app.store.head()).seq == head
    return {
        "projector catch-up: CPU us/event": span.ours / events * 1e6,
        "projector catch-up: PostgreSQL CPU us/event": span.postgres / events * 1e6,
        "projector catch-up: events/s": events / span.wall,
    }


def main() -> int:
    # Each call logs its line at INFO, as `accrual serve` does; the lines go to
    # /dev/null while the phases run (structlog caches a logger's level at its
    # first use, so the level is set once, here).
    configure_logging("json", level=logging.INFO)
    tune_garbage_collector(SERVING_GC_YOUNG_THRESHOLD)  # as `accrual serve` runs
    with migrated_embedded_database() as url:
        settings = dataclasses.replace(Settings.from_env({}), run_projector=False)

        postmaster = postmaster_of(url)

        async def run() -> dict[str, int | float]:
            async with running_app(settings, url) as app:
                await setup(app)
                before = (await app.store.head()).seq
                with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
                    checkpoint(url)
                    ingest = await ingest_cpu(app, postmaster)
                    single = await single_event_cpu(app, url, postmaster)
                    checkpoint(url)
                    projector = await projector_cpu(app, before, postmaster)
                return {**ingest, **single, **projector}

        figures = asyncio.run(run())
    print_figures(
        f"Accrual ingest CPU: {CALLS:,} calls of {EVENTS_PER_CALL:,} events and"
        f" {SINGLE_CALLS:,} of one, in process",
        figures,
    )
    write_result("ingest-cpu", {"calls": CALLS, "single_calls": SINGLE_CALLS, "figures": figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
