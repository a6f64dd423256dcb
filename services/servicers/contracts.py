"""ContractService."""

from __future__ import annotations

import grpc

from ledger.app.customers import ContractInput, CustomerCommands
from services.api.accrual.v1 import contracts_pb2, contracts_pb2_grpc
from services.convert import (
    amendment_input,
    contract_message,
    optional_datetime,
    override_spec,
)
from services.errors import rpc
from services.observe import describe_call
from services.request import request_context


class ContractServicer(contracts_pb2_grpc.ContractServiceServicer):
    def __init__(self, customers: CustomerCommands) -> None:
        self._customers = customers

    @rpc
    async def CreateCustomer(
        self, request: contracts_pb2.CreateCustomerRequest, context: grpc.aio.ServicerContext
    ) -> contracts_pb2.Customer:
        ctx = request_context(context, request_id=request.request_id)
        created, seq = await self._customers.create_customer(
            request.customer.customer_id, request.customer.name, ctx
        )
        return contracts_pb2.Customer(
            customer_id=created.customer_id, name=created.name, consistency_token=seq
        )

    @rpc
    async def CreateContract(
        self, request: contracts_pb2.CreateContractRequest, context: grpc.aio.ServicerContext
    ) -> contracts_pb2.Contract:
        c = request.contract
        command = ContractInput(
            contract_id=c.contract_id,
            customer_id=c.customer_id,
            rate_card_id=c.rate_card_id,
            pinned_version=c.pinned_version or None,
            starts_at=optional_datetime(c, "starts_at"),
            ends_at=optional_datetime(c, "ends_at"),
            billing_anchor=optional_datetime(c, "billing_anchor"),
            currency=c.currency,
            overrides=[override_spec(o) for o in c.overrides],
        )
        ctx = request_context(context, request_id=request.request_id)
        contract, seq = await self._customers.create_contract(command, ctx)
        return contract_message(contract, seq)

    @rpc
    async def GetContract(
        self, request: contracts_pb2.GetContractRequest, context: grpc.aio.ServicerContext
    ) -> contracts_pb2.Contract:
        contract = await self._customers.get_contract(request.customer_id, request.contract_id)
        return contract_message(contract)

    @rpc
    async def AmendContract(
        self, request: contracts_pb2.AmendContractRequest, context: grpc.aio.ServicerContext
    ) -> contracts_pb2.Contract:
        describe_call(customer_id=request.customer_id)
        ctx = request_context(context, request_id=request.request_id, reason=request.reason)
        contract, seq = await self._customers.amend_contract(amendment_input(request), ctx)
        return contract_message(contract, seq)

    @rpc
    async def EndContract(
        self, request: contracts_pb2.EndContractRequest, context: grpc.aio.ServicerContext
    ) -> contracts_pb2.Contract:
        describe_call(customer_id=request.customer_id)
        ctx = request_context(context, request_id=request.request_id, reason=request.reason)
        ends_at = optional_datetime(request, "ends_at")
        contract, seq = await self._customers.end_contract(
            request.customer_id, request.contract_id, ends_at, ctx
        )
        return contract_message(contract, seq)
