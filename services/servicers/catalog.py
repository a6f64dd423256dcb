"""CatalogService."""

from __future__ import annotations

import grpc

from ledger.app.catalog import CatalogCommands, MetricInput
from ledger.core.catalog import Product
from services.api.accrual.v1 import catalog_pb2, catalog_pb2_grpc
from services.convert import (
    diff_message,
    draft_message,
    metric_message,
    product_message,
    rate_card_input,
    rate_card_message,
)
from services.errors import rpc
from services.request import request_context


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: CatalogCommands) -> None:
        self._catalog = catalog

    @rpc
    async def CreateBillableMetric(
        self, request: catalog_pb2.CreateBillableMetricRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.BillableMetric:
        m = request.metric
        command = MetricInput(
            metric_id=m.metric_id,
            name=m.name,
            event_type=m.event_type,
            aggregation=m.aggregation,
            property=m.property,
            filters=[(f.property, f.op, list(f.values)) for f in m.filters],
            group_by=list(m.group_by),
        )
        ctx = request_context(context, request_id=request.request_id)
        metric, seq = await self._catalog.create_metric(command, ctx)
        return metric_message(metric, seq)

    @rpc
    async def CreateProduct(
        self, request: catalog_pb2.CreateProductRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.Product:
        p = request.product
        ctx = request_context(context, request_id=request.request_id)
        product, seq = await self._catalog.create_product(
            Product(product_id=p.product_id, name=p.name, metric_id=p.metric_id), ctx
        )
        return product_message(product, seq)

    @rpc
    async def DraftRateCard(
        self, request: catalog_pb2.DraftRateCardRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardDraft:
        ctx = request_context(context, request_id=request.request_id, reason=request.reason)
        draft, seq = await self._catalog.draft_rate_card(
            rate_card_input(request), ctx, copy_of_version=request.copy_of_version
        )
        return draft_message(draft, seq)

    @rpc
    async def ApproveRateCardDraft(
        self, request: catalog_pb2.ApproveRateCardDraftRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardDraft:
        ctx = request_context(context, request_id=request.request_id, reason=request.reason)
        draft, seq = await self._catalog.approve_draft(request.rate_card_id, request.draft, ctx)
        return draft_message(draft, seq)

    @rpc
    async def PublishRateCardDraft(
        self, request: catalog_pb2.PublishRateCardDraftRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardVersion:
        ctx = request_context(context, request_id=request.request_id, reason=request.reason)
        card, seq = await self._catalog.publish_draft(request.rate_card_id, request.draft, ctx)
        return rate_card_message(card, seq)

    @rpc
    async def GetRateCardDraft(
        self, request: catalog_pb2.GetRateCardDraftRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardDraft:
        draft = await self._catalog.get_draft(request.rate_card_id, request.draft)
        return draft_message(draft)

    @rpc
    async def ListRateCardVersions(
        self, request: catalog_pb2.ListRateCardVersionsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.ListRateCardVersionsResponse:
        versions, token = await self._catalog.list_rate_card_versions(
            request.rate_card_id, request.page_size, request.page_token
        )
        return catalog_pb2.ListRateCardVersionsResponse(
            versions=[rate_card_message(v) for v in versions], next_page_token=token
        )

    @rpc
    async def DiffRateCardVersions(
        self, request: catalog_pb2.DiffRateCardVersionsRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardDiff:
        diff = await self._catalog.diff_rate_card_versions(
            request.rate_card_id, request.from_version, request.to_version
        )
        return diff_message(diff)

    @rpc
    async def GetRateCard(
        self, request: catalog_pb2.GetRateCardRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardVersion:
        card = await self._catalog.get_rate_card(request.rate_card_id, request.version)
        return rate_card_message(card)
