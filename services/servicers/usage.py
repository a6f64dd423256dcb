"""UsageService."""

from __future__ import annotations

import grpc

from ledger.app.usage import RecordUsage, UsageStatus
from services.api.accrual.v1 import usage_pb2, usage_pb2_grpc
from services.convert import usage_inputs
from services.errors import rpc
from services.observe import describe_call, record_ingest, traced
from services.request import request_context

_STATUS = {
    UsageStatus.ACCEPTED: usage_pb2.UsageEventResult.ACCEPTED,
    UsageStatus.DUPLICATE: usage_pb2.UsageEventResult.DUPLICATE,
    UsageStatus.REJECTED: usage_pb2.UsageEventResult.REJECTED,
}


class UsageServicer(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, record_usage: RecordUsage) -> None:
        self._record_usage = record_usage

    @rpc
    async def RecordUsage(
        self, request: usage_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> usage_pb2.RecordUsageResponse:
        if traced():
            customers = {event.customer_id for event in request.events}
            describe_call(batch_size=len(request.events), customers=len(customers))
            if len(customers) == 1:
                describe_call(customer_id=next(iter(customers)))
        results = await self._record_usage(usage_inputs(request.events), request_context(context))
        record_ingest(result.status for result in results)
        return usage_pb2.RecordUsageResponse(
            results=[
                usage_pb2.UsageEventResult(
                    transaction_id=r.transaction_id,
                    status=_STATUS[r.status],
                    reason=r.reason,
                    seq=r.seq,
                )
                for r in results
            ],
            consistency_token=max((r.seq for r in results), default=0),
        )
