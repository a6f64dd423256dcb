"""AuditService."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ledger.app.audit import ReplayedInvoice
from ledger.core.invoice import content_sha256
from projections.audit_log import AuditQuery
from projections.auditing import Auditing
from services.api.accrual.v1 import audit_pb2, audit_pb2_grpc
from services.convert import (
    audit_entry_message,
    invoice_message,
    ledger_event_message,
    money,
    optional_datetime,
    page_token,
    simulation_row_message,
    verify_progress_message,
)
from services.errors import rpc, rpc_stream


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, auditing: Auditing) -> None:
        self._auditing = auditing

    @rpc_stream
    async def ReplayCustomer(
        self, request: audit_pb2.ReplayCustomerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audit_pb2.ReplayItem]:
        items = self._auditing.replay_customer(
            request.customer_id,
            up_to_seq=request.up_to_seq or None,
            up_to_time=optional_datetime(request, "up_to_time"),
            rate_card_id=request.rate_card_id,
            rate_card_version=request.rate_card_version,
        )
        async for item in items:
            if isinstance(item, ReplayedInvoice):
                yield audit_pb2.ReplayItem(invoice=_replayed_message(item))
            else:
                yield audit_pb2.ReplayItem(event=ledger_event_message(item))

    @rpc
    async def VerifyInvoice(
        self, request: audit_pb2.VerifyInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.VerifyInvoiceResponse:
        check = await self._auditing.verify_invoice(request.invoice_id)
        return audit_pb2.VerifyInvoiceResponse(
            invoice_id=check.replayed.invoice_id,
            recorded_sha256=check.recorded_sha256,
            replayed_sha256=check.replayed_sha256,
            matches=check.matches,
            replayed=invoice_message(check.replayed, "FINALIZED", check.replayed_sha256),
        )

    @rpc_stream
    async def VerifyLedger(
        self, request: audit_pb2.VerifyLedgerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[audit_pb2.VerifyLedgerProgress]:
        reports = self._auditing.verify_ledger(request.from_seq or 1, request.to_seq or None)
        async for report in reports:
            yield verify_progress_message(report)

    @rpc
    async def ListAuditEntries(
        self, request: audit_pb2.ListAuditEntriesRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.ListAuditEntriesResponse:
        query = AuditQuery(
            customer_id=request.customer_id,
            actor=request.actor,
            kind=request.kind,
            start=optional_datetime(request, "start"),
            end=optional_datetime(request, "end"),
            page_size=request.page_size,
            after_seq=page_token(request.page_token),
        )
        entries, token = await self._auditing.entries(query, request.consistency_token)
        return audit_pb2.ListAuditEntriesResponse(
            entries=[audit_entry_message(e) for e in entries], next_page_token=token
        )

    @rpc
    async def SimulatePricing(
        self, request: audit_pb2.SimulatePricingRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.SimulatePricingResponse:
        simulation = await self._auditing.simulate(
            request.rate_card_id,
            request.version,
            optional_datetime(request, "start"),
            optional_datetime(request, "end"),
        )
        totals = simulation.totals()
        return audit_pb2.SimulatePricingResponse(
            rows=[simulation_row_message(row) for row in simulation.rows],
            current_total=[money(current, cur) for cur, (current, _) in sorted(totals.items())],
            simulated_total=[money(sim, cur) for cur, (_, sim) in sorted(totals.items())],
            delta=[money(s - c, cur) for cur, (c, s) in sorted(totals.items())],
        )


def _replayed_message(item: ReplayedInvoice) -> audit_pb2.ReplayedInvoice:
    return audit_pb2.ReplayedInvoice(
        invoice=invoice_message(item.invoice, item.status, content_sha256(item.invoice)),
        status=item.status,
        replayed_sha256=item.sha256,
        recorded_sha256=item.recorded_sha256,
        matches=bool(item.matches),
    )
