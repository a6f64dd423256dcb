"""BalanceService over real gRPC: grants, balances read back with the grant's token, and
entitlement checks allowed and refused for each reason."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest

from services.api.accrual.v1 import (
    balances_pb2,
    balances_pb2_grpc,
    catalog_pb2,
    contracts_pb2,
)
from tests.e2e.conftest import RunningServer, bearer, issue
from tests.e2e.helpers import Errors, World, head_seq, setup_world, ts

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
DENIED = grpc.StatusCode.PERMISSION_DENIED


def balances_stub(server: RunningServer) -> balances_pb2_grpc.BalanceServiceStub:
    return balances_pb2_grpc.BalanceServiceStub(server.channel)


def grant_request(world: World, grant_id: str, **fields: Any) -> balances_pb2.GrantCreditRequest:
    values: dict[str, Any] = {
        "customer_id": world.customer_id,
        "grant_id": grant_id,
        "kind": "credit",
        "amount": "25.00",
        "currency": "USD",
        "starts_at": ts(world.start),
    }
    values.update(fields)
    return balances_pb2.GrantCreditRequest(**values)


def check(
    api: balances_pb2_grpc.BalanceServiceStub,
    customer_id: str,
    product_id: str,
    at: datetime | None = None,
    token: int = 0,
) -> tuple[bool, str, str]:
    request = balances_pb2.CheckEntitlementRequest(
        customer_id=customer_id, product_id=product_id, consistency_token=token
    )
    if at is not None:
        request.at.CopyFrom(ts(at))
    reply = api.CheckEntitlement(request)
    return reply.allowed, reply.reason, reply.hard_limit_remaining


def test_a_grant_is_read_back_with_its_token(server: RunningServer) -> None:
    world = setup_world(server)
    api = balances_stub(server)
    expires = world.now + timedelta(days=90)
    granted = api.GrantCredit(
        grant_request(
            world,
            "welcome",
            kind="prepaid_commit",
            amount="500",
            product_ids=[world.product_id],
            priority=1,
            expires_at=ts(expires),
            rollover_fraction="0.25",
            hard_limit=True,
            request_id="grant-welcome",
        )
    )
    assert (granted.amount, granted.kind, granted.rollover_fraction) == (
        "500.00",
        "prepaid_commit",
        "0.25",
    )
    assert granted.consistency_token == head_seq(server)
    # A retry is answered with the first result, and writes nothing.
    again = api.GrantCredit(
        grant_request(
            world,
            "welcome",
            kind="prepaid_commit",
            amount="500",
            product_ids=[world.product_id],
            priority=1,
            expires_at=ts(expires),
            rollover_fraction="0.25",
            hard_limit=True,
            request_id="grant-welcome",
        )
    )
    assert again == granted

    reply = api.GetBalances(
        balances_pb2.GetBalancesRequest(
            customer_id=world.customer_id, consistency_token=granted.consistency_token
        )
    )
    [balance] = reply.balances
    shown = balances_pb2.Grant()
    shown.CopyFrom(granted)
    shown.consistency_token = 0
    assert balance.grant == shown
    assert balance.remaining == "500.00"
    assert [(e.kind, e.amount, e.seq, e.invoice_id) for e in balance.entries] == [
        ("granted", "500.00", granted.consistency_token, "")
    ]
    assert balance.entries[0].at == ts(world.start)
    assert reply.next_page_token == ""
    other_currency = api.GetBalances(
        balances_pb2.GetBalancesRequest(customer_id=world.customer_id, currency="EUR")
    )
    assert list(other_currency.balances) == []

    token = granted.consistency_token
    assert check(api, world.customer_id, world.product_id, token=token) == (True, "", "500.00")


def test_entitlement_is_refused_for_each_reason(server: RunningServer) -> None:
    world = setup_world(server)
    api = balances_stub(server)
    customer, product = world.customer_id, world.product_id
    # The world's token: the projection has seen the contract.
    assert check(api, customer, product, token=head_seq(server)) == (True, "", "")

    # No contract in force: before the term, or a customer without one.
    before = world.start - timedelta(seconds=1)
    assert check(api, customer, product, before) == (False, "no_contract_in_force", "")
    world.api.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="no-contract", name="None")
        )
    )
    token = head_seq(server)
    assert check(api, "no-contract", product, token=token) == (False, "no_contract_in_force", "")

    # A product that exists but is not on the card.
    world.api.catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(product=catalog_pb2.Product(product_id="vision", name="V"))
    )
    token = head_seq(server)
    assert check(api, customer, "vision", token=token) == (False, "product_not_on_rate_card", "")

    # A hard limit whose only grant has lapsed: nothing is left to spend.
    lapsed = api.GrantCredit(
        grant_request(
            world,
            "trial",
            product_ids=[product],
            hard_limit=True,
            expires_at=ts(world.now - timedelta(days=10)),
        )
    )
    token = lapsed.consistency_token
    reply = api.CheckEntitlement(
        balances_pb2.CheckEntitlementRequest(
            customer_id=customer, product_id=product, consistency_token=token
        )
    )
    assert (reply.allowed, reply.reason, reply.hard_limited) == (
        False,
        "hard_limit_exhausted",
        True,
    )
    assert reply.explanation
    assert check(api, customer, product, world.now - timedelta(days=11)) == (True, "", "25.00")


def test_grants_are_refused_with_the_ledger_unchanged(server: RunningServer) -> None:
    world = setup_world(server)
    api = balances_stub(server)
    api.GrantCredit(grant_request(world, "first"))
    world.api.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="no-contract", name="None")
        )
    )
    errors = Errors()
    head = head_seq(server)

    def refused(code: grpc.StatusCode, request: balances_pb2.GrantCreditRequest) -> Any:
        failure = errors.expect(code, lambda: api.GrantCredit(request))
        assert head_seq(server) == head, "a refused grant wrote to the ledger"
        return failure

    wrong_currency = refused(INVALID, grant_request(world, "euros", currency="EUR"))
    assert wrong_currency.fields == ["currency"]
    assert "USD" in dict(wrong_currency.violations)["currency"]
    assert refused(NOT_FOUND, grant_request(world, "g", customer_id="ghost")).reasons == [
        "CUSTOMER_NOT_FOUND"
    ]
    assert refused(EXISTS, grant_request(world, "first")).reasons == ["GRANT_EXISTS"]
    no_contract = refused(PRECONDITION, grant_request(world, "g", customer_id="no-contract"))
    assert "create a contract first" in no_contract.message
    malformed = refused(
        INVALID,
        grant_request(
            world,
            "",
            kind="voucher",
            amount="-1",
            product_ids=["ghost-product"],
            rollover_fraction="2",
        ),
    )
    assert malformed.fields == ["grant_id", "kind", "amount", "rollover_fraction"]
    assert refused(INVALID, grant_request(world, "g", amount="0.001")).fields == ["amount"]
    assert refused(INVALID, grant_request(world, "g", product_ids=["ghost"])).fields == [
        "product_ids[0]"
    ]
    postpaid = refused(INVALID, grant_request(world, "g", kind="postpaid_commit"))
    assert postpaid.fields == ["expires_at"]
    no_start = balances_pb2.GrantCreditRequest()
    no_start.CopyFrom(grant_request(world, "g"))
    no_start.ClearField("starts_at")
    assert refused(INVALID, no_start).fields == ["starts_at"]
    errors.expect(
        NOT_FOUND,
        lambda: api.GetBalances(balances_pb2.GetBalancesRequest(customer_id="ghost")),
    )
    errors.expect(
        INVALID,
        lambda: api.GetBalances(
            balances_pb2.GetBalancesRequest(customer_id=world.customer_id, page_token="x")
        ),
    )
    errors.expect(
        INVALID,
        lambda: api.CheckEntitlement(
            balances_pb2.CheckEntitlementRequest(customer_id=world.customer_id)
        ),
    )
    errors.assert_no_internals_leaked()


def test_roles_and_customer_scopes_apply_to_balances(server: RunningServer) -> None:
    world = setup_world(server, name="scoped")
    other = setup_world(server, name="other")
    api = balances_stub(server)
    gateway = bearer(issue(server.database_url, "gw", "ingest", customers=["scoped"]))
    ask = balances_pb2.CheckEntitlementRequest(
        customer_id="scoped", product_id=world.product_id, consistency_token=head_seq(server)
    )
    assert api.CheckEntitlement(ask, metadata=gateway).allowed
    for request, call in (
        (
            balances_pb2.CheckEntitlementRequest(customer_id="other", product_id=other.product_id),
            api.CheckEntitlement,
        ),
        (balances_pb2.GetBalancesRequest(customer_id="scoped"), api.GetBalances),
        (grant_request(world, "g"), api.GrantCredit),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call(request, metadata=gateway)
        failed: Any = raised.value
        assert failed.code() == DENIED, request
    operator = bearer(issue(server.database_url, "ops", "billing-operator", customers=["scoped"]))
    assert api.GrantCredit(grant_request(world, "g"), metadata=operator).grant_id == "g"
    with pytest.raises(grpc.RpcError) as outside:
        api.GrantCredit(grant_request(other, "g"), metadata=operator)
    refused: Any = outside.value
    assert refused.code() == DENIED
