"""Contract amendments over real gRPC: plan changes priced per plan with prorated flat
lines, overrides added mid-period, term changes, EndContract, every refusal with its
status, and replay of a finalized period that had an amendment.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc

from services.api.accrual.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    catalog_pb2,
    contracts_pb2,
    invoices_pb2,
    usage_pb2,
)
from tests.e2e.conftest import RunningServer
from tests.e2e.helpers import ACCEPTED, Errors, head_seq, midnight, stubs, ts

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION

# April has 30 days; the 11th starts after 10 of them. Long past, so periods have ended.
APRIL = datetime(2026, 4, 1, tzinfo=UTC)
APRIL_11 = datetime(2026, 4, 11, tzinfo=UTC)
APRIL_21 = datetime(2026, 4, 21, tzinfo=UTC)
MAY = datetime(2026, 5, 1, tzinfo=UTC)
JUNE = datetime(2026, 6, 1, tzinfo=UTC)


class Plans:
    """A platform fee on two USD plans (10.00 and 20.00 a month) and a EUR one; tokens
    on each too; customers with contracts made over the API."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.api = stubs(server)
        self.now = datetime.now(UTC)
        self._tx = itertools.count(1)
        catalog = self.api.catalog
        catalog.CreateBillableMetric(
            catalog_pb2.CreateBillableMetricRequest(
                metric=catalog_pb2.BillableMetric(
                    metric_id="tokens",
                    name="Tokens",
                    event_type="completion",
                    aggregation="SUM",
                    property="tokens",
                )
            )
        )
        for product_id, metric_id in (("platform", ""), ("llm", "tokens")):
            catalog.CreateProduct(
                catalog_pb2.CreateProductRequest(
                    product=catalog_pb2.Product(
                        product_id=product_id, name=product_id.title(), metric_id=metric_id
                    )
                )
            )
        self.publish("plan-a", "USD", "10.00")
        self.publish("plan-b", "USD", "20.00")
        self.publish("plan-eur", "EUR", "10.00")

    def publish(self, rate_card_id: str, currency: str, fee: str) -> None:
        self.api.publish(
            catalog_pb2.DraftRateCardRequest(
                rate_card_id=rate_card_id,
                name=rate_card_id,
                currency=currency,
                effective_from=ts(APRIL - timedelta(days=400)),
                rates=[
                    catalog_pb2.Rate(product_id="platform", model="flat", flat_amount=fee),
                    catalog_pb2.Rate(product_id="llm", model="per_unit", unit_price="0.0015"),
                ],
                reason="plans for amendments",
            )
        )

    def contract(
        self,
        customer_id: str,
        *,
        starts_at: datetime = APRIL,
        ends_at: datetime | None = None,
        number: int = 1,
        new_customer: bool = True,
    ) -> str:
        """A contract on plan-a (and its customer, unless it exists); returns its id."""
        if new_customer:
            self.api.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(
                    customer=contracts_pb2.Customer(customer_id=customer_id, name=customer_id)
                )
            )
        contract = contracts_pb2.Contract(
            contract_id=f"{customer_id}-c{number}",
            customer_id=customer_id,
            rate_card_id="plan-a",
            starts_at=ts(starts_at),
        )
        if ends_at is not None:
            contract.ends_at.CopyFrom(ts(ends_at))
        self.api.contracts.CreateContract(contracts_pb2.CreateContractRequest(contract=contract))
        return contract.contract_id

    def amend(self, customer_id: str, **fields: Any) -> contracts_pb2.Contract:
        """AmendContract on the customer's first contract; datetimes become Timestamps."""
        request = amend_request(customer_id, **fields)
        amended: contracts_pb2.Contract = self.api.contracts.AmendContract(request)
        return amended

    def end(self, customer_id: str, ends_at: datetime) -> contracts_pb2.Contract:
        ended: contracts_pb2.Contract = self.api.contracts.EndContract(
            contracts_pb2.EndContractRequest(
                customer_id=customer_id,
                contract_id=f"{customer_id}-c1",
                ends_at=ts(ends_at),
                reason="customer left",
            )
        )
        return ended

    def invoice_at(self, customer_id: str, at: datetime) -> invoices_pb2.Invoice:
        invoice: invoices_pb2.Invoice = self.api.invoices.GetInvoice(
            invoices_pb2.GetInvoiceRequest(customer_id=customer_id, at=ts(at))
        )
        return invoice

    def record(self, customer_id: str, at: datetime, tokens: str) -> None:
        event = usage_pb2.UsageEvent(
            transaction_id=f"tx-{next(self._tx)}",
            customer_id=customer_id,
            event_type="completion",
            timestamp=ts(at),
            properties={"tokens": tokens},
        )
        response = self.api.usage.RecordUsage(usage_pb2.RecordUsageRequest(events=[event]))
        assert [r.status for r in response.results] == [ACCEPTED], response


def amend_request(
    customer_id: str, contract_number: int = 1, **fields: Any
) -> contracts_pb2.AmendContractRequest:
    """An AmendContractRequest whose datetime fields may be given as datetimes."""
    request = contracts_pb2.AmendContractRequest(
        customer_id=customer_id, contract_id=f"{customer_id}-c{contract_number}"
    )
    for name, value in fields.items():
        if isinstance(value, datetime):
            getattr(request, name).CopyFrom(ts(value))
        elif name in ("add_overrides", "end_override_ids"):
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


def lines(invoice: invoices_pb2.Invoice) -> list[tuple[str, str, str, str, str]]:
    """Each line as (product, card, segment start, segment end, amount)."""
    return [
        (
            li.product_id,
            li.rate_card_id,
            li.segment_start.ToDatetime(tzinfo=UTC).date().isoformat(),
            li.segment_end.ToDatetime(tzinfo=UTC).date().isoformat(),
            li.amount.amount,
        )
        for li in invoice.lines
        if li.product_id == "platform" or li.quantity != "0"
    ]


def plan_changes(contract: contracts_pb2.Contract) -> list[tuple[datetime, str, int]]:
    return [
        (c.effective_at.ToDatetime(tzinfo=UTC), c.rate_card_id, c.pinned_version)
        for c in contract.plan_changes
    ]


# ---------------------------------------------------------------------------------------
# Plan changes


def test_a_mid_period_plan_change_prorates_each_plan_and_replays_as_finalized(
    server: RunningServer,
) -> None:
    plans = Plans(server)
    plans.contract("switcher")
    amended = plans.amend(
        "switcher", effective_at=APRIL_11, rate_card_id="plan-b", reason="upgrade"
    )

    assert plan_changes(amended) == [(APRIL_11, "plan-b", 0)]
    assert (amended.rate_card_id, amended.pinned_version) == ("plan-a", 0)
    assert amended.consistency_token == head_seq(server)
    shown = plans.api.contracts.GetContract(
        contracts_pb2.GetContractRequest(customer_id="switcher", contract_id="switcher-c1")
    )
    assert plan_changes(shown) == plan_changes(amended)

    april = plans.invoice_at("switcher", APRIL)
    assert lines(april) == [
        ("platform", "plan-a", "2026-04-01", "2026-04-11", "3.33"),  # 10.00 × 10/30
        ("platform", "plan-b", "2026-04-11", "2026-05-01", "13.33"),  # 20.00 × 20/30
    ]
    assert april.total.amount == "16.66"
    assert april.rate_card_id == "plan-b"
    may = plans.invoice_at("switcher", MAY)
    assert lines(may) == [("platform", "plan-b", "2026-05-01", "2026-06-01", "20.00")]

    finalized = plans.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=april.invoice_id)
    )
    assert (finalized.status, finalized.total.amount) == ("FINALIZED", "16.66")
    check = audit_pb2_grpc.AuditServiceStub(server.channel).VerifyInvoice(
        audit_pb2.VerifyInvoiceRequest(invoice_id=april.invoice_id)
    )
    assert check.matches
    assert check.replayed_sha256 == check.recorded_sha256 == finalized.content_sha256

    trail = audit_pb2_grpc.AuditServiceStub(server.channel).ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(
            customer_id="switcher", kind="ContractAmended", consistency_token=head_seq(server)
        )
    )
    assert [(e.subject, e.reason, e.summary) for e in trail.entries] == [
        (
            "switcher-c1",
            "upgrade",
            "amended contract from 2026-04-11T00:00:00.000000Z: plan plan-b",
        )
    ]


def test_a_retried_amendment_answers_as_the_first_and_writes_once(server: RunningServer) -> None:
    plans = Plans(server)
    plans.contract("retry")
    request = amend_request(
        "retry", effective_at=APRIL_11, rate_card_id="plan-b", request_id="amend-1"
    )
    first = plans.api.contracts.AmendContract(request)
    head = head_seq(server)
    assert plans.api.contracts.AmendContract(request) == first
    assert head_seq(server) == head


# ---------------------------------------------------------------------------------------
# Overrides


def test_an_override_added_mid_period_prices_usage_from_its_start(server: RunningServer) -> None:
    plans = Plans(server)
    start = midnight(plans.now - timedelta(days=40))
    plans.contract("discounted", starts_at=start)
    effective = midnight(plans.now - timedelta(days=5))
    before, after = plans.now - timedelta(days=7), plans.now - timedelta(days=2)
    plans.record("discounted", before, "1000")
    plans.record("discounted", after, "2000")
    half = contracts_pb2.Override(
        override_id="half", product_id="llm", kind="multiplier", multiplier="0.5"
    )

    amended = plans.amend("discounted", effective_at=effective, add_overrides=[half])

    (override,) = amended.overrides
    assert (override.override_id, override.starts_at) == ("half", ts(effective))
    assert not override.HasField("ends_at")
    invoice = plans.invoice_at("discounted", plans.now)
    llm = [li for li in invoice.lines if li.product_id == "llm"]
    assert [(li.quantity, li.amount.amount, li.override_id) for li in llm] == [
        ("1000", "1.50", ""),  # 1000 × 0.0015
        ("2000", "1.50", "half"),  # 2000 × 0.0015 × 0.5
    ]
    assert [li.segment_start for li in llm][1] == ts(effective)

    ended = plans.amend(
        "discounted", effective_at=effective + timedelta(days=2), end_override_ids=["half"]
    )
    assert ended.overrides[0].ends_at == ts(effective + timedelta(days=2))
    llm = [li for li in plans.invoice_at("discounted", plans.now).lines if li.product_id == "llm"]
    assert [(li.quantity, li.amount.amount, li.override_id) for li in llm] == [
        ("1000", "1.50", ""),
        ("0", "0.00", "half"),
        ("2000", "3.00", ""),
    ]


# ---------------------------------------------------------------------------------------
# The term


def test_the_term_moves_and_end_contract_clips_the_last_period(server: RunningServer) -> None:
    plans = Plans(server)
    plans.contract("ender")
    later = midnight(plans.now + timedelta(days=60))

    assert plans.amend("ender", effective_at=MAY, ends_at=later).ends_at == ts(later)
    reopened = plans.amend("ender", effective_at=MAY, clear_ends_at=True)
    assert not reopened.HasField("ends_at")

    ended = plans.end("ender", APRIL_21)
    assert ended.ends_at == ts(APRIL_21)
    april = plans.invoice_at("ender", APRIL)
    assert (april.period_start, april.period_end) == (ts(APRIL), ts(APRIL_21))
    assert lines(april) == [("platform", "plan-a", "2026-04-01", "2026-04-21", "6.67")]
    errors = Errors()
    gone = errors.expect(NOT_FOUND, lambda: plans.invoice_at("ender", MAY))
    assert gone.reasons == ["INVOICE_NOT_FOUND"]
    head = head_seq(server)
    for refused in (
        lambda: plans.amend("ender", effective_at=APRIL_11, rate_card_id="plan-b"),
        lambda: plans.end("ender", APRIL_11),
    ):
        failure = errors.expect(PRECONDITION, refused)
        assert failure.reasons == ["CONTRACT_ENDED"]
    assert head_seq(server) == head
    errors.assert_no_internals_leaked()


# ---------------------------------------------------------------------------------------
# Refusals


Call = Callable[[], object]


def test_every_refusal_has_its_status_and_writes_nothing(server: RunningServer) -> None:
    plans = Plans(server)
    plans.contract("closed")  # its April will be finalized
    far = midnight(plans.now + timedelta(days=30))
    plans.contract("neighbour", ends_at=far)
    plans.contract("neighbour", starts_at=far, number=2, new_customer=False)
    april = plans.invoice_at("closed", APRIL)
    plans.api.invoices.FinalizeInvoice(
        invoices_pb2.FinalizeInvoiceRequest(invoice_id=april.invoice_id)
    )
    contracts = plans.api.contracts

    def amend(customer_id: str = "closed", **fields: Any) -> Call:
        return lambda: contracts.AmendContract(amend_request(customer_id, **fields))

    def end(ends_at: datetime | None) -> Call:
        request = contracts_pb2.EndContractRequest(customer_id="closed", contract_id="closed-c1")
        if ends_at is not None:
            request.ends_at.CopyFrom(ts(ends_at))
        return lambda: contracts.EndContract(request)

    start_override = contracts_pb2.Override(
        override_id="early", product_id="llm", kind="multiplier", multiplier="0.5"
    )
    start_override.starts_at.CopyFrom(ts(MAY))
    invalid: dict[str, tuple[Call, Sequence[str]]] = {
        "no effective_at": (amend(rate_card_id="plan-b"), ["effective_at"]),
        "before the start": (
            amend(effective_at=APRIL - timedelta(days=1), ends_at=JUNE),
            ["effective_at"],
        ),
        "at the end": (
            amend("neighbour", effective_at=far, rate_card_id="plan-b"),
            ["effective_at"],
        ),
        "another currency": (amend(effective_at=MAY, rate_card_id="plan-eur"), ["rate_card_id"]),
        "unknown card": (amend(effective_at=MAY, rate_card_id="plan-z"), ["rate_card_id"]),
        "no such version": (amend(effective_at=MAY, pinned_version=9), ["pinned_version"]),
        "negative version": (amend(effective_at=MAY, pinned_version=-1), ["pinned_version"]),
        "override before effective_at": (
            amend(effective_at=JUNE, add_overrides=[start_override]),
            ["add_overrides[0].starts_at"],
        ),
        "unknown override to end": (
            amend(effective_at=MAY, end_override_ids=["nope"]),
            ["end_override_ids[0]"],
        ),
        "end before the start": (
            amend("neighbour", effective_at=APRIL_11, ends_at=APRIL - timedelta(days=9)),
            ["ends_at"],
        ),
        "end before effective_at": (
            amend(effective_at=JUNE, ends_at=MAY + timedelta(days=3)),
            ["ends_at"],
        ),
        "two ends": (amend(effective_at=MAY, ends_at=JUNE, clear_ends_at=True), ["clear_ends_at"]),
        "changes nothing": (amend(effective_at=MAY), ["request"]),
        "same plan as now": (amend(effective_at=MAY, rate_card_id="plan-a"), ["request"]),
        "end without ends_at": (end(None), ["ends_at"]),
        "end at the start": (end(APRIL - timedelta(days=1)), ["ends_at"]),
    }
    precondition: dict[str, tuple[Call, str]] = {
        "inside a finalized period": (
            amend(effective_at=APRIL_21, rate_card_id="plan-b"),
            "AMENDMENT_INTO_FINALIZED_PERIOD",
        ),
        "end inside a finalized period": (
            amend(effective_at=MAY, ends_at=APRIL_21),
            "AMENDMENT_INTO_FINALIZED_PERIOD",
        ),
        "end contract inside a finalized period": (
            end(APRIL_11),
            "AMENDMENT_INTO_FINALIZED_PERIOD",
        ),
        "overlapping the next contract": (
            amend("neighbour", effective_at=MAY, clear_ends_at=True),
            "CONTRACT_OVERLAPS",
        ),
        "longer into the next contract": (
            amend("neighbour", effective_at=MAY, ends_at=far + timedelta(days=1)),
            "CONTRACT_OVERLAPS",
        ),
    }
    errors = Errors()
    head = head_seq(server)

    for case, (call, fields) in invalid.items():
        failure = errors.expect(INVALID, call)
        assert (failure.reasons, failure.fields) == (["REQUEST_INVALID"], list(fields)), case
    for case, (call, reason) in precondition.items():
        assert errors.expect(PRECONDITION, call).reasons == [reason], case
    missing = errors.expect(NOT_FOUND, amend(contract_number=7, effective_at=MAY, ends_at=JUNE))
    assert missing.reasons == ["CONTRACT_NOT_FOUND"]

    assert head_seq(server) == head
    errors.assert_no_internals_leaked()
    after = contracts.GetContract(
        contracts_pb2.GetContractRequest(customer_id="closed", contract_id="closed-c1")
    )
    assert (list(after.plan_changes), list(after.overrides), after.HasField("ends_at")) == (
        [],
        [],
        False,
    )
    # From the end of the finalized period on, the contract may change.
    assert plan_changes(plans.amend("closed", effective_at=MAY, rate_card_id="plan-b")) == [
        (MAY, "plan-b", 0)
    ]
