"""Bad requests over real gRPC: exact status codes, field violations, nothing written.

Every test also checks that no error it provoked leaks SQL, driver names or a
Python traceback to the caller.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from services.api.accrual.v1 import catalog_pb2, contracts_pb2, invoices_pb2
from tests.e2e.conftest import RunningServer
from tests.e2e.helpers import (
    Errors,
    head_seq,
    midnight,
    setup_world,
    stubs,
    ts,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


def test_metric_reports_every_violation_at_once(server: RunningServer) -> None:
    api = stubs(server)
    errors = Errors()
    head_before = head_seq(server)
    request = catalog_pb2.CreateBillableMetricRequest(
        metric=catalog_pb2.BillableMetric(
            metric_id="tokens", name="Tokens", event_type="", aggregation="AVG", property="tokens"
        )
    )

    failure = errors.expect(INVALID, lambda: api.catalog.CreateBillableMetric(request))

    assert sorted(failure.fields) == ["metric.aggregation", "metric.event_type"]
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def test_product_for_unknown_metric(server: RunningServer) -> None:
    api = stubs(server)
    errors = Errors()
    head_before = head_seq(server)
    request = catalog_pb2.CreateProductRequest(
        product=catalog_pb2.Product(product_id="llm", name="LLM", metric_id="no-such-metric")
    )

    failure = errors.expect(INVALID, lambda: api.catalog.CreateProduct(request))

    assert failure.fields == ["product.metric_id"]
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def test_rate_card_reports_a_violation_per_problem(server: RunningServer) -> None:
    world = setup_world(server)
    errors = Errors()
    head_before = head_seq(server)
    product = world.product_id
    request = catalog_pb2.DraftRateCardRequest(
        rate_card_id="bad-card",
        name="Bad prices",
        currency="ZZZ",
        effective_from=ts(world.start),
        rates=[
            catalog_pb2.Rate(
                product_id=product, group_values={"region": "eu"}, model="per_unit", unit_price="-1"
            ),
            catalog_pb2.Rate(
                product_id=product,
                group_values={"region": "us"},
                model="per_unit",
                unit_price="1e3",
            ),
            catalog_pb2.Rate(product_id="no-such-product", model="per_unit", unit_price="1"),
            catalog_pb2.Rate(
                product_id=product, model="per_unit", unit_price="1", minimum="10", maximum="5"
            ),
        ],
        reason="broken",
    )

    failure = errors.expect(INVALID, lambda: world.api.catalog.DraftRateCard(request))

    assert sorted(failure.fields) == [
        "currency_decimals",
        "rates[0].group_values",  # the metric has no region dimension
        "rates[0].unit_price",
        "rates[1].group_values",
        "rates[1].unit_price",
        "rates[2].product_id",
        "rates[3].maximum",
    ]
    descriptions = dict(failure.violations)
    assert "negative" in descriptions["rates[0].unit_price"]
    assert "1e3" in descriptions["rates[1].unit_price"]
    assert "no-such-product" in descriptions["rates[2].product_id"]
    assert failure.reasons == ["REQUEST_INVALID"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def _without_token(card: catalog_pb2.RateCardVersion) -> catalog_pb2.RateCardVersion:
    copy = catalog_pb2.RateCardVersion()
    copy.CopyFrom(card)
    copy.consistency_token = 0
    return copy


def test_custom_unit_rate_card_versions_are_immutable(server: RunningServer) -> None:
    world = setup_world(server)
    catalog = world.api.catalog
    errors = Errors()

    def publish(unit_price: str) -> catalog_pb2.RateCardVersion:
        card: catalog_pb2.RateCardVersion = world.api.publish(
            catalog_pb2.DraftRateCardRequest(
                rate_card_id="credits-card",
                name="Credit prices",
                currency="credits",
                currency_decimals=4,
                effective_from=ts(world.start),
                rates=[
                    catalog_pb2.Rate(
                        product_id=world.product_id,
                        model="per_unit",
                        unit_price=unit_price,
                        minimum="1",
                        maximum="100",
                    )
                ],
                reason="credits",
            )
        )
        return card

    def get(version: int) -> catalog_pb2.RateCardVersion:
        card: catalog_pb2.RateCardVersion = catalog.GetRateCard(
            catalog_pb2.GetRateCardRequest(rate_card_id="credits-card", version=version)
        )
        return card

    first = publish("0.0125")
    assert (first.rate_card_id, first.version) == ("credits-card", 1)
    assert (first.currency, first.currency_decimals) == ("credits", 4)
    read = get(1)
    assert (read.currency, read.currency_decimals, read.version) == ("credits", 4, 1)
    assert read.effective_from == ts(world.start)
    assert [(r.product_id, r.model, r.unit_price, r.minimum, r.maximum) for r in read.rates] == [
        (world.product_id, "per_unit", "0.0125", "1", "100")
    ]
    assert _without_token(read) == _without_token(first)

    second = publish("0.01")
    assert second.version == 2
    assert [r.unit_price for r in second.rates] == ["0.01"]
    assert _without_token(get(1)) == _without_token(first)
    assert _without_token(get(2)) == _without_token(second)
    assert _without_token(get(0)) == _without_token(second)

    head_before = head_seq(server)
    missing = errors.expect(NOT_FOUND, lambda: get(3))
    assert missing.reasons == ["RATE_CARD_VERSION_NOT_FOUND"]
    unknown = errors.expect(
        NOT_FOUND,
        lambda: catalog.GetRateCard(catalog_pb2.GetRateCardRequest(rate_card_id="nope", version=1)),
    )
    assert unknown.reasons == ["RATE_CARD_NOT_FOUND"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def test_customer_ids_and_request_ids_are_idempotent(server: RunningServer) -> None:
    contracts = stubs(server).contracts
    errors = Errors()

    def create(customer_id: str, name: str, request_id: str = "") -> contracts_pb2.Customer:
        customer: contracts_pb2.Customer = contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(
                customer=contracts_pb2.Customer(customer_id=customer_id, name=name),
                request_id=request_id,
            )
        )
        return customer

    create("acme", "Acme Corp")
    head_before = head_seq(server)
    exists = errors.expect(EXISTS, lambda: create("acme", "Acme Corp"))
    assert exists.reasons == ["CUSTOMER_EXISTS"]
    assert head_seq(server) == head_before

    original = create("globex", "Globex", request_id="req-1")
    assert original.consistency_token == head_before + 1
    head_after_original = head_seq(server)
    retry = create("globex", "Globex", request_id="req-1")
    assert retry == original
    assert head_seq(server) == head_after_original

    reused = errors.expect(EXISTS, lambda: create("globex", "Globex Inc", request_id="req-1"))
    assert reused.reasons == ["IDEMPOTENCY_KEY_REUSED_WITH_DIFFERENT_REQUEST"]
    assert "req-1" in reused.message
    assert head_seq(server) == head_after_original
    errors.assert_no_internals_leaked()


def test_contract_rules(server: RunningServer) -> None:
    world = setup_world(server)
    contracts = world.api.contracts
    contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id="other", name="Other")
        )
    )
    errors = Errors()
    head_before = head_seq(server)

    def create(**fields: object) -> object:
        contract = contracts_pb2.Contract(
            contract_id="c-new",
            customer_id="other",
            rate_card_id=world.rate_card_id,
            starts_at=ts(world.start),
        )
        for name, value in fields.items():
            if name in {"starts_at", "ends_at"}:
                getattr(contract, name).CopyFrom(value)
            else:
                setattr(contract, name, value)
        return contracts.CreateContract(contracts_pb2.CreateContractRequest(contract=contract))

    unknown_customer = errors.expect(NOT_FOUND, lambda: create(customer_id="ghost"))
    assert unknown_customer.reasons == ["CUSTOMER_NOT_FOUND"]

    unknown_card = errors.expect(INVALID, lambda: create(rate_card_id="no-such-card"))
    assert unknown_card.fields == ["contract.rate_card_id"]

    backwards = errors.expect(INVALID, lambda: create(ends_at=ts(world.start - timedelta(days=1))))
    assert backwards.fields == ["contract.ends_at"]

    overlap = errors.expect(
        PRECONDITION,
        lambda: create(
            contract_id="acme-c2", customer_id=world.customer_id, starts_at=ts(world.now)
        ),
    )
    assert overlap.reasons == ["CONTRACT_OVERLAPS"]

    pinned = errors.expect(INVALID, lambda: create(pinned_version=5))
    assert pinned.fields == ["contract.pinned_version"]

    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def test_finalize_before_the_period_ends(server: RunningServer) -> None:
    world = setup_world(server, start=midnight(datetime.now(UTC)))
    invoices = world.api.invoices
    errors = Errors()
    draft = world.invoice_at(world.now)
    assert draft.status == "DRAFT"
    head_before = head_seq(server)

    failure = errors.expect(
        PRECONDITION,
        lambda: invoices.FinalizeInvoice(
            invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id)
        ),
    )

    assert failure.reasons == ["PERIOD_NOT_ENDED"]
    assert head_seq(server) == head_before
    assert world.invoice(draft.invoice_id).status == "DRAFT"
    errors.assert_no_internals_leaked()


def test_finalizing_twice_without_request_id_is_refused(server: RunningServer) -> None:
    world = setup_world(server)
    invoices = world.api.invoices
    errors = Errors()
    draft = world.invoice_at(world.first_period_instant)
    final = invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id)
    )
    assert final.status == "FINALIZED"
    head_before = head_seq(server)

    failure = errors.expect(
        PRECONDITION,
        lambda: invoices.FinalizeInvoice(
            invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id)
        ),
    )

    assert failure.reasons == ["INVOICE_ALREADY_FINALIZED"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def test_finalize_retried_with_the_same_request_id_returns_the_same_invoice(
    server: RunningServer,
) -> None:
    world = setup_world(server)
    invoices = world.api.invoices
    at = world.first_period_instant
    world.record(world.event("tx-1", "1000", at))
    draft = world.invoice_at(at)
    request = invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id, request_id="fin-1")

    first = invoices.FinalizeInvoice(request)
    head_after_first = head_seq(server)
    second = invoices.FinalizeInvoice(request)

    assert first.status == second.status == "FINALIZED"
    assert first.invoice_id == second.invoice_id == draft.invoice_id
    assert first.total.amount == second.total.amount == "1.50"
    assert first.content_sha256 == second.content_sha256
    assert first == second
    assert head_seq(server) == head_after_first
    errors = Errors()
    other = invoices_pb2.FinalizeInvoiceRequest(invoice_id=draft.invoice_id, request_id="fin-2")
    refused = errors.expect(PRECONDITION, lambda: invoices.FinalizeInvoice(other))
    assert refused.reasons == ["INVOICE_ALREADY_FINALIZED"]
    assert head_seq(server) == head_after_first
    errors.assert_no_internals_leaked()


def _get_invoice(server: RunningServer, invoice_id: str) -> object:
    return stubs(server).invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_id=invoice_id))


@pytest.mark.parametrize("invoice_id", ["in-no-such-contract-1", "in-acme-c1-0"])
def test_get_invoice_of_an_unknown_id(server: RunningServer, invoice_id: str) -> None:
    setup_world(server)
    errors = Errors()
    head_before = head_seq(server)

    failure = errors.expect(NOT_FOUND, lambda: _get_invoice(server, invoice_id))

    assert failure.reasons == ["INVOICE_NOT_FOUND"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


@pytest.mark.parametrize(
    "invoice_id",
    [
        "not an invoice id",
        "in-",
        "in-acme-c1-x",
        "acme-c1-1",
        "in-acme-c1-99999999999999999999999",
    ],
)
def test_get_invoice_of_a_malformed_id(server: RunningServer, invoice_id: str) -> None:
    setup_world(server)
    errors = Errors()
    head_before = head_seq(server)

    failure = errors.expect(NOT_FOUND, lambda: _get_invoice(server, invoice_id))

    assert failure.reasons == ["INVOICE_NOT_FOUND"]
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()


def test_get_invoice_with_neither_id_nor_customer(server: RunningServer) -> None:
    setup_world(server)
    errors = Errors()
    head_before = head_seq(server)

    failure = errors.expect(INVALID, lambda: _get_invoice(server, ""))

    assert failure.reasons == ["REQUEST_INVALID"]
    # INVALID_ARGUMENT carries BadRequest field violations (README "Errors", AIP-193).
    assert failure.fields, "no BadRequest field violation"
    assert set(failure.fields) <= {"invoice_id", "customer_id", "at"}
    assert head_seq(server) == head_before
    errors.assert_no_internals_leaked()
