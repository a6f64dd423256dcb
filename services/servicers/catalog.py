"""CatalogService."""

from __future__ import annotations

import grpc

from ledger.app.catalog import CatalogCommands, MetricInput, RateCardInput, RateInput
from ledger.core.catalog import Product
from services.api.accrual.v1 import catalog_pb2, catalog_pb2_grpc
from services.convert import metric_message, optional_datetime, product_message, rate_card_message
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
    async def PublishRateCard(
        self, request: catalog_pb2.PublishRateCardRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardVersion:
        command = RateCardInput(
            rate_card_id=request.rate_card_id,
            name=request.name,
            currency=request.currency,
            currency_decimals=(
                request.currency_decimals if request.HasField("currency_decimals") else None
            ),
            effective_from=optional_datetime(request, "effective_from"),
            rates=[
                RateInput(
                    product_id=r.product_id,
                    model=r.model,
                    unit_price=r.unit_price,
                    group_values=dict(r.group_values),
                    minimum=r.minimum,
                    maximum=r.maximum,
                )
                for r in request.rates
            ],
        )
        ctx = request_context(context, request_id=request.request_id, reason=request.reason)
        card, seq = await self._catalog.publish_rate_card(command, ctx)
        return rate_card_message(card, seq)

    @rpc
    async def GetRateCard(
        self, request: catalog_pb2.GetRateCardRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.RateCardVersion:
        card = await self._catalog.get_rate_card(request.rate_card_id, request.version)
        return rate_card_message(card)
