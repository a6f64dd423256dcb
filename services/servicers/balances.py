"""BalanceService."""

from __future__ import annotations

import grpc

from ledger.app.balances import BalanceCommands
from projections.balances import BalanceQuery, Balances
from projections.entitlements import Entitlements
from services.api.accrual.v1 import balances_pb2, balances_pb2_grpc
from services.convert import (
    entitlement_message,
    grant_balance_message,
    grant_input,
    grant_message,
    optional_datetime,
    page_token,
)
from services.errors import rpc
from services.request import request_context


class BalanceServicer(balances_pb2_grpc.BalanceServiceServicer):
    def __init__(
        self, grants: BalanceCommands, balances: Balances, entitlements: Entitlements
    ) -> None:
        self._grants = grants
        self._balances = balances
        self._entitlements = entitlements

    @rpc
    async def GrantCredit(
        self, request: balances_pb2.GrantCreditRequest, context: grpc.aio.ServicerContext
    ) -> balances_pb2.Grant:
        command = grant_input(request)
        ctx = request_context(context, request_id=request.request_id)
        grant, seq = await self._grants.grant_credit(command, ctx)
        return grant_message(grant, seq)

    @rpc
    async def GetBalances(
        self, request: balances_pb2.GetBalancesRequest, context: grpc.aio.ServicerContext
    ) -> balances_pb2.GetBalancesResponse:
        query = BalanceQuery(
            customer_id=request.customer_id,
            currency=request.currency,
            page_size=request.page_size,
            after_seq=page_token(request.page_token),
            consistency_token=request.consistency_token,
        )
        views, token = await self._balances.balances(query)
        return balances_pb2.GetBalancesResponse(
            balances=[grant_balance_message(view) for view in views], next_page_token=token
        )

    @rpc
    async def CheckEntitlement(
        self, request: balances_pb2.CheckEntitlementRequest, context: grpc.aio.ServicerContext
    ) -> balances_pb2.CheckEntitlementResponse:
        entitlement = await self._entitlements.check(
            request.customer_id,
            request.product_id,
            optional_datetime(request, "at"),
            request.consistency_token,
        )
        return entitlement_message(entitlement)
