"""Request-scoped identity and ids, taken from gRPC metadata."""

from __future__ import annotations

import grpc
from opentelemetry import trace

from ledger.app.context import RequestContext
from ledger.core.errors import Violations
from ledger.core.validation import check_text
from services.auth.guard import current_principal

REQUEST_ID_HEADER = "x-request-id"
ANONYMOUS = "anonymous"
REQUEST_ID_CHARS_MAX = 128


def trace_ids() -> tuple[str, str]:
    """The current trace and span ids, as hex ("" outside a trace).

    The call's trace goes into every event's metadata, so work done later on
    those events (projection batches) can link back to the call.
    """
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return "", ""
    return format(span.trace_id, "032x"), format(span.span_id, "016x")


def request_context(
    context: grpc.aio.ServicerContext, *, request_id: str = "", reason: str = ""
) -> RequestContext:
    """Who is calling (the authenticated principal) and under which request id
    (the field wins over the ``x-request-id`` header)."""
    metadata = dict(context.invocation_metadata() or ())
    principal = current_principal()
    actor = principal.name if principal is not None else ANONYMOUS
    header_id = str(metadata.get(REQUEST_ID_HEADER) or "")[:128]
    violations = Violations()
    if len(request_id) > REQUEST_ID_CHARS_MAX or any(ord(c) < 32 for c in request_id):
        violations.add("request_id", f"at most {REQUEST_ID_CHARS_MAX} printable characters")
    if reason:
        check_text(violations, "reason", reason)
    violations.raise_if_any()
    trace_id, span_id = trace_ids()
    return RequestContext(
        actor=actor,
        request_id=request_id or header_id,
        trace_id=trace_id,
        span_id=span_id,
        reason=reason,
    )
