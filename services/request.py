"""Request-scoped identity and ids, taken from gRPC metadata."""

from __future__ import annotations

import grpc

from ledger.app.context import RequestContext

ACTOR_HEADER = "x-accrual-actor"
REQUEST_ID_HEADER = "x-request-id"
ANONYMOUS = "anonymous"


def request_context(
    context: grpc.aio.ServicerContext, *, request_id: str = "", reason: str = ""
) -> RequestContext:
    """Who is calling and under which request id (the field wins over the header)."""
    metadata = dict(context.invocation_metadata() or ())
    actor = str(metadata.get(ACTOR_HEADER) or ANONYMOUS)[:128]
    header_id = str(metadata.get(REQUEST_ID_HEADER) or "")[:128]
    return RequestContext(actor=actor, request_id=request_id or header_id, reason=reason)
