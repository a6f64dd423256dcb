"""Per-call observation: log context, one log line and RPC metrics for every call."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
import structlog
from opentelemetry import metrics, trace

from services.logs import bind_call_fields, unbind_call_fields
from services.request import request_context

_log = structlog.get_logger("accrual.rpc")
_meter = metrics.get_meter("accrual.rpc")
_duration = _meter.create_histogram(
    "accrual.rpc.duration", unit="ms", description="Server time per call, by method and code"
)
_calls = _meter.create_counter(
    "accrual.rpc.calls", unit="{call}", description="Calls by method and status code"
)


@dataclass
class Call:
    method: str
    code: str = "OK"


@contextlib.contextmanager
def observed_call(context: grpc.aio.ServicerContext, method: str) -> Iterator[Call]:
    """Bind method, request id and principal to every log line of the call, then log
    the outcome and record its latency and status code."""
    ctx = request_context(context)
    bound = bind_call_fields(
        {"method": method, "request_id": ctx.request_id, "principal": ctx.actor}
    )
    call = Call(method)
    started = time.perf_counter()
    try:
        yield call
    except BaseException:
        if call.code == "OK":
            call.code = "CANCELLED"
        raise
    finally:
        elapsed_ms = (time.perf_counter() - started) * 1_000
        labels = {"rpc.method": method, "rpc.grpc.status_code": call.code}
        _duration.record(elapsed_ms, labels)
        _calls.add(1, labels)
        _log.info("rpc", code=call.code, duration_ms=round(elapsed_ms, 3))
        unbind_call_fields(bound)


_ingest_events = _meter.create_counter(
    "accrual.ingest.events", unit="{event}", description="Usage events by outcome"
)
_ingest_calls = _meter.create_counter(
    "accrual.ingest.batches", unit="{call}", description="RecordUsage calls"
)


def traced() -> bool:
    """Whether this call's span is recorded: facts that cost work to gather (a batch's
    distinct customers) are gathered only then."""
    return bool(trace.get_current_span().is_recording())


def describe_call(**attributes: str | int) -> None:
    """Put facts of the call (customer, batch size) on its server span."""
    span = trace.get_current_span()
    for key, value in attributes.items():
        if value != "":
            span.set_attribute(f"accrual.{key}", value)


def record_ingest(statuses: Iterable[str]) -> None:
    """Count a RecordUsage call and its events by outcome."""
    _ingest_calls.add(1)
    for status, count in Counter(statuses).items():
        _ingest_events.add(count, {"status": status})
