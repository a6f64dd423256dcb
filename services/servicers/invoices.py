"""InvoiceService."""

from __future__ import annotations

import grpc

from projections.invoicing import InvoiceView, Invoicing, PreviewRequest
from services.api.accrual.v1 import invoices_pb2, invoices_pb2_grpc
from services.convert import invoice_message, optional_datetime, rate_card_input, usage_inputs
from services.errors import rpc
from services.observe import describe_call
from services.request import request_context


def _message(view: InvoiceView) -> invoices_pb2.Invoice:
    message = invoice_message(view.invoice, view.status.value, view.content_sha256)
    message.consistency_token = view.written_seq
    return message


class InvoiceServicer(invoices_pb2_grpc.InvoiceServiceServicer):
    def __init__(self, invoicing: Invoicing) -> None:
        self._invoicing = invoicing

    @rpc
    async def GetInvoice(
        self, request: invoices_pb2.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoices_pb2.Invoice:
        describe_call(customer_id=request.customer_id, invoice_id=request.invoice_id)
        view = await self._invoicing.get(
            invoice_id=request.invoice_id,
            customer_id=request.customer_id,
            at=optional_datetime(request, "at"),
        )
        return _message(view)

    @rpc
    async def FinalizeInvoice(
        self, request: invoices_pb2.FinalizeInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoices_pb2.Invoice:
        describe_call(invoice_id=request.invoice_id)
        ctx = request_context(context, request_id=request.request_id)
        return _message(await self._invoicing.finalize(request.invoice_id, ctx))

    @rpc
    async def VoidInvoice(
        self, request: invoices_pb2.VoidInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoices_pb2.VoidInvoiceResponse:
        describe_call(invoice_id=request.invoice_id)
        ctx = request_context(context, request_id=request.request_id)
        voided, replacement_id = await self._invoicing.void(request.invoice_id, ctx)
        return invoices_pb2.VoidInvoiceResponse(
            voided=_message(voided), replacement_invoice_id=replacement_id
        )

    @rpc
    async def ListInvoices(
        self, request: invoices_pb2.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> invoices_pb2.ListInvoicesResponse:
        describe_call(customer_id=request.customer_id)
        views, token = await self._invoicing.list(
            request.customer_id, request.page_size, request.page_token
        )
        return invoices_pb2.ListInvoicesResponse(
            invoices=[_message(view) for view in views], next_page_token=token
        )

    @rpc
    async def PreviewInvoice(
        self, request: invoices_pb2.PreviewInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> invoices_pb2.Invoice:
        preview = PreviewRequest(
            invoice_id=request.invoice_id,
            customer_id=request.customer_id,
            at=optional_datetime(request, "at"),
            rate_card_id=request.rate_card_id,
            rate_card_version=request.rate_card_version,
            inline_rate_card=(
                rate_card_input(request.rate_card) if request.HasField("rate_card") else None
            ),
            usage=usage_inputs(request.usage) if request.hypothetical else None,
        )
        return _message(await self._invoicing.preview(preview))
