"""A contract's whole year over real gRPC, every total asserted exactly.

The server runs on a clock the test moves through 2025. The contract starts on
1 January on a basic plan (platform 100.00/month flat, API calls at 0.01) and
moves to a pro plan (300.00/month, calls at 0.008) from 11 March, so March's
flat charges are prorated 10/31 and 21/31. Three grants:

- an 80.00 credit for API calls (priority 0) that expires on 1 April and rolls
  half of what is left into a new grant of the same length;
- a 1,000.00 prepaid commit for everything (priority 1), drawn down across
  months until it runs out in May;
- a 5,000.00 postpaid commit for the year, trued up on December's invoice.

January usage recorded after January was finalized is billed on February's
invoice as an adjustment; February is voided and replaced; every finalized
invoice (the voided one too) is verified by replay.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import pytest

from services.api.accrual.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    balances_pb2,
    balances_pb2_grpc,
    catalog_pb2,
    contracts_pb2,
    invoices_pb2,
    usage_pb2,
)
from tests.e2e.conftest import RunningServer, serving
from tests.e2e.helpers import ACCEPTED, MovableClock, Stubs, head_seq, stubs, ts, unpack

YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)
YEAR_END = datetime(2026, 1, 1, tzinfo=UTC)
PLAN_CHANGE = datetime(2025, 3, 11, tzinfo=UTC)
CONTRACT = "acme-2025"
CUSTOMER = "acme"


@dataclass
class Year:
    server: RunningServer
    api: Stubs
    clock: MovableClock
    balances: balances_pb2_grpc.BalanceServiceStub
    audit: audit_pb2_grpc.AuditServiceStub


@pytest.fixture
def year(database_url: str) -> Iterator[Year]:
    clock = MovableClock(datetime(2024, 12, 20, tzinfo=UTC))
    for server in serving(database_url, clock=clock):
        yield Year(
            server,
            stubs(server),
            clock,
            balances_pb2_grpc.BalanceServiceStub(server.channel),
            audit_pb2_grpc.AuditServiceStub(server.channel),
        )


def invoice_id(number: int, revision: int = 0) -> str:
    return f"in-{CONTRACT}-{number}" + (f"-r{revision}" if revision else "")


def month(number: int, day: int = 1) -> datetime:
    """Day ``day`` of the ``number``-th month of 2025 (13: January 2026)."""
    year, index = divmod(number - 1, 12)
    return datetime(2025 + year, index + 1, day, tzinfo=UTC)


def set_up_catalog(y: Year) -> None:
    catalog = y.api.catalog
    catalog.CreateBillableMetric(
        catalog_pb2.CreateBillableMetricRequest(
            metric=catalog_pb2.BillableMetric(
                metric_id="calls",
                name="API calls",
                event_type="api_batch",
                aggregation="SUM",
                property="calls",
            )
        )
    )
    catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(
            product=catalog_pb2.Product(product_id="api", name="API calls", metric_id="calls")
        )
    )
    catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(
            product=catalog_pb2.Product(product_id="platform", name="Platform fee")
        )
    )
    for card, flat, per_call in (("basic", "100.00", "0.01"), ("pro", "300.00", "0.008")):
        y.api.publish(
            catalog_pb2.DraftRateCardRequest(
                rate_card_id=card,
                name=card.title(),
                currency="USD",
                effective_from=ts(datetime(2024, 12, 1, tzinfo=UTC)),
                rates=[
                    catalog_pb2.Rate(product_id="platform", model="flat", flat_amount=flat),
                    catalog_pb2.Rate(product_id="api", model="per_unit", unit_price=per_call),
                ],
                reason="2025 plans",
            )
        )


def set_up_contract_and_grants(y: Year) -> None:
    contracts = y.api.contracts
    contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id=CUSTOMER, name="Acme")
        )
    )
    contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            contract=contracts_pb2.Contract(
                contract_id=CONTRACT,
                customer_id=CUSTOMER,
                rate_card_id="basic",
                starts_at=ts(YEAR_START),
                ends_at=ts(YEAR_END),
            )
        )
    )
    grant(
        y,
        "launch-credit",
        "credit",
        "80.00",
        expires=month(4),
        products=["api"],
        priority=0,
        rollover="0.5",
    )
    grant(y, "prepaid", "prepaid_commit", "1000.00", expires=YEAR_END, priority=1)
    grant(y, "annual-commit", "postpaid_commit", "5000.00", expires=YEAR_END)


def grant(
    y: Year,
    grant_id: str,
    kind: str,
    amount: str,
    *,
    expires: datetime,
    products: list[str] | None = None,
    priority: int = 0,
    rollover: str = "",
    currency: str = "USD",
) -> None:
    y.balances.GrantCredit(
        balances_pb2.GrantCreditRequest(
            grant_id=grant_id,
            customer_id=CUSTOMER,
            kind=kind,
            amount=amount,
            currency=currency,
            starts_at=ts(YEAR_START),
            expires_at=ts(expires),
            product_ids=products or [],
            priority=priority,
            rollover_fraction=rollover,
            request_id=f"grant-{grant_id}-{currency}",
        )
    )


def record_calls(y: Year, transaction_id: str, occurred_at: datetime, calls: int) -> None:
    reply = y.api.usage.RecordUsage(
        usage_pb2.RecordUsageRequest(
            events=[
                usage_pb2.UsageEvent(
                    transaction_id=transaction_id,
                    customer_id=CUSTOMER,
                    event_type="api_batch",
                    timestamp=ts(occurred_at),
                    properties={"calls": str(calls)},
                )
            ]
        )
    )
    assert [r.status for r in reply.results] == [ACCEPTED], reply.results


def finalize(y: Year, number: int, revision: int = 0) -> invoices_pb2.Invoice:
    y.clock.set(month(number + 1, 2))
    request = invoices_pb2.FinalizeInvoiceRequest(
        invoice_id=invoice_id(number, revision), request_id=f"finalize-{number}-{revision}"
    )
    final: invoices_pb2.Invoice = y.api.invoices.FinalizeInvoice(request)
    assert final.status == "FINALIZED"
    assert final.consistency_token > final.computed_through_seq  # where it was written
    final.ClearField("consistency_token")  # the reply's alone: GetInvoice has none
    return final


def lines_of(invoice: invoices_pb2.Invoice) -> list[tuple[str, str, str, str]]:
    return [
        (line.kind, line.product_id, line.quantity, line.amount.amount) for line in invoice.lines
    ]


def credits_of(invoice: invoices_pb2.Invoice) -> dict[str, str]:
    return {credit.grant_id: credit.amount.amount for credit in invoice.credits}


def totals(invoice: invoices_pb2.Invoice) -> tuple[str, str, str]:
    return invoice.subtotal.amount, invoice.credits_applied.amount, invoice.total.amount


def expect_refusal(call: object, code: grpc.StatusCode) -> None:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert unpack(refused.value).code == code


def test_a_contract_year(year: Year) -> None:
    y = year
    set_up_catalog(y)
    set_up_contract_and_grants(y)

    # January: 1,000 calls. The credit covers the calls, the prepaid commit the fee.
    y.clock.set(month(1, 15))
    record_calls(y, "jan", month(1, 10), 1000)
    expect_refusal(
        lambda: y.api.invoices.FinalizeInvoice(
            invoices_pb2.FinalizeInvoiceRequest(invoice_id=invoice_id(1))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,  # the period has not ended
    )
    jan = finalize(y, 1)
    assert lines_of(jan) == [
        ("usage", "api", "1000", "10.00"),
        ("usage", "platform", "1", "100.00"),
    ]
    assert credits_of(jan) == {"launch-credit": "10.00", "prepaid": "100.00"}
    assert totals(jan) == ("110.00", "110.00", "0.00")

    # February: 2,000 calls, and 500 January calls that arrive after January closed.
    y.clock.set(month(2, 5))
    record_calls(y, "jan-late", month(1, 20), 500)
    y.clock.set(month(2, 15))
    record_calls(y, "feb", month(2, 10), 2000)
    feb = finalize(y, 2)
    assert lines_of(feb) == [
        ("usage", "api", "2000", "20.00"),
        ("usage", "platform", "1", "100.00"),
        ("adjustment", "api", "500", "5.00"),
    ]
    assert feb.lines[2].adjusts_invoice_id == invoice_id(1)
    assert feb.lines[2].segment_start == ts(month(1))  # it names January
    assert credits_of(feb) == {"launch-credit": "25.00", "prepaid": "100.00"}
    assert totals(feb) == ("125.00", "125.00", "0.00")
    january_again = y.api.invoices.GetInvoice(
        invoices_pb2.GetInvoiceRequest(invoice_id=invoice_id(1))
    )
    assert january_again == jan  # a finalized invoice never changes

    # February is voided: its drawdowns come back and a replacement bills the period.
    voided = y.api.invoices.VoidInvoice(
        invoices_pb2.VoidInvoiceRequest(invoice_id=invoice_id(2), request_id="void-feb")
    )
    assert voided.voided.status == "VOIDED"
    assert voided.replacement_invoice_id == invoice_id(2, 1)
    expect_refusal(
        lambda: y.api.invoices.VoidInvoice(
            invoices_pb2.VoidInvoiceRequest(invoice_id=invoice_id(2), request_id="void-again")
        ),
        grpc.StatusCode.FAILED_PRECONDITION,  # a second void
    )
    feb_r1 = finalize(y, 2, revision=1)
    assert feb_r1.replaces_invoice_id == invoice_id(2)
    assert lines_of(feb_r1) == lines_of(feb)
    assert totals(feb_r1) == totals(feb)

    # March: the pro plan from the 11th; flat fees prorated by day, calls priced per plan.
    y.clock.set(month(3, 12))
    y.api.contracts.AmendContract(
        contracts_pb2.AmendContractRequest(
            customer_id=CUSTOMER,
            contract_id=CONTRACT,
            effective_at=ts(PLAN_CHANGE),
            rate_card_id="pro",
            reason="upgrade to pro",
            request_id="upgrade",
        )
    )
    record_calls(y, "mar-basic", month(3, 5), 1000)
    y.clock.set(month(3, 25))
    record_calls(y, "mar-pro", month(3, 20), 2000)
    mar = finalize(y, 3)
    assert lines_of(mar) == [
        ("usage", "api", "1000", "10.00"),
        ("usage", "api", "2000", "16.00"),
        ("usage", "platform", "1", "32.26"),  # 100.00 × 10/31
        ("usage", "platform", "1", "203.23"),  # 300.00 × 21/31
    ]
    assert credits_of(mar) == {"launch-credit": "26.00", "prepaid": "235.49"}
    assert totals(mar) == ("261.49", "261.49", "0.00")

    # The credit expired with March: 19.00 left, 9.50 rolled over until 30 June.
    head = head_seq(y.server)
    book = {
        b.grant.grant_id: b
        for b in y.balances.GetBalances(
            balances_pb2.GetBalancesRequest(customer_id=CUSTOMER, consistency_token=head)
        ).balances
    }
    credit = book["launch-credit"]
    assert credit.remaining == "0.00"
    expiry = [e for e in credit.entries if e.kind == "expired"]
    assert [(e.amount, e.invoice_id, e.at) for e in expiry] == [
        ("-19.00", invoice_id(3), ts(month(4)))
    ]
    assert book["launch-credit~rollover"].remaining == "9.50"
    assert book["prepaid"].remaining == "564.51"

    # April to December on the pro plan: 1,000 × month calls at 0.008.
    due = {}
    for number in range(4, 13):
        y.clock.set(month(number, 15))
        record_calls(y, f"m{number}", month(number, 10), 1000 * number)
        final = finalize(y, number)
        due[number] = final
    apr, may, jun, dec = due[4], due[5], due[6], due[12]
    assert credits_of(apr) == {"launch-credit~rollover": "9.50", "prepaid": "322.50"}
    assert totals(apr) == ("332.00", "332.00", "0.00")
    assert credits_of(may) == {"prepaid": "242.01"}  # the prepaid commit runs out
    assert totals(may) == ("340.00", "242.01", "97.99")
    assert totals(jun) == ("348.00", "0.00", "348.00")
    for number in range(7, 12):
        calls = Decimal("0.008") * 1000 * number
        expected = f"{Decimal(300) + calls:.2f}"
        assert totals(due[number]) == (expected, "0.00", expected)

    # December: the annual commit's shortfall. Spent 3,772.49 of 5,000.00.
    assert lines_of(dec)[-1] == ("true_up", "commit:annual-commit", "1", "1227.51")
    assert totals(dec) == ("1623.51", "0.00", "1623.51")

    # Every finalized invoice, voided or not, replays to its recorded hash.
    finalized_ids = [invoice_id(n) for n in range(1, 13)] + [invoice_id(2, 1)]
    for ref in finalized_ids:
        verdict = y.audit.VerifyInvoice(audit_pb2.VerifyInvoiceRequest(invoice_id=ref))
        assert verdict.matches, ref

    # Listing shows the year, newest first, the voided February after its replacement.
    listed = y.api.invoices.ListInvoices(
        invoices_pb2.ListInvoicesRequest(customer_id=CUSTOMER, page_size=100)
    ).invoices
    assert [(i.invoice_id, i.status) for i in listed] == [
        *((invoice_id(n), "FINALIZED") for n in range(12, 2, -1)),
        (invoice_id(2, 1), "FINALIZED"),
        (invoice_id(2), "VOIDED"),
        (invoice_id(1), "FINALIZED"),
    ]

    # Refusals: amending the ended contract, a grant in another currency; nothing written.
    y.clock.set(month(13, 5))
    before = head_seq(y.server)
    expect_refusal(
        lambda: y.api.contracts.AmendContract(
            contracts_pb2.AmendContractRequest(
                customer_id=CUSTOMER,
                contract_id=CONTRACT,
                effective_at=ts(month(12, 20)),
                rate_card_id="basic",
                request_id="too-late",
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    expect_refusal(
        lambda: grant(y, "euro", "credit", "10.00", expires=month(14), currency="EUR"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert head_seq(y.server) == before
