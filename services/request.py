"""Request-scoped identity and ids, taken from gRPC metadata."""

from __future__ import annotations

import grpc
from opentelemetry import trace

from ledger.app.context import RequestContext
from ledger.core.errors import Violations
from ledger.core.validation import check_text

ACTOR_HEADER = "x-accrual-actor"
REQUEST_ID_HEADER = "x-request-id"
ANONYMOUS = "anonymous"
REQUEST_ID_CHARS_MAX = 128


def request_context(
    context: grpc.aio.ServicerContext, *, request_id: str = "", reason: str = ""
) -> RequestContext:
    """Who is calling and under which request id (the field wins over the header)."""
    metadata = dict(context.invocation_metadata() or ())
    actor = str(metadata.get(ACTOR_HEADER) or ANONYMOUS)[:128]
    header_id = str(metadata.get(REQUEST_ID_HEADER) or "")[:128]
    violations = Violations()
    if len(request_id) > REQUEST_ID_CHARS_MAX or any(ord(c) < 32 for c in request_id):
        violations.add("request_id", f"at most {REQUEST_ID_CHARS_MAX} printable characters")
    if reason:
        check_text(violations, "reason", reason)
    violations.raise_if_any()
    # The call's trace goes into every event's metadata, so work done later on
    # those events (projection batches) can link back to the call.
    span = trace.get_current_span().get_span_context()
    trace_id = format(span.trace_id, "032x") if span.is_valid else ""
    span_id = format(span.span_id, "016x") if span.is_valid else ""
    return RequestContext(
        actor=actor,
        request_id=request_id or header_id,
        trace_id=trace_id,
        span_id=span_id,
        reason=reason,
    )
