"""Shared builders for the end-to-end tests: stubs, timestamps, a billable world, errors."""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.api.accrual.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)
from tests.e2e.conftest import RunningServer

ACCEPTED = usage_pb2.UsageEventResult.ACCEPTED
DUPLICATE = usage_pb2.UsageEventResult.DUPLICATE
REJECTED = usage_pb2.UsageEventResult.REJECTED

EVENT_TYPE = "completion"
PROPERTY = "tokens"
UNIT_PRICE = "0.0015"


def ts(instant: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(instant)
    return stamp


def midnight(instant: datetime) -> datetime:
    return instant.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclasses.dataclass(frozen=True)
class Stubs:
    catalog: catalog_pb2_grpc.CatalogServiceStub
    contracts: contracts_pb2_grpc.ContractServiceStub
    usage: usage_pb2_grpc.UsageServiceStub
    invoices: invoices_pb2_grpc.InvoiceServiceStub
    # Calls made with this metadata come from a second principal, a pricing approver.
    approver: list[tuple[str, str]]

    def publish(
        self, request: catalog_pb2.DraftRateCardRequest, metadata: Sequence[tuple[str, str]] = ()
    ) -> catalog_pb2.RateCardVersion:
        """Draft and publish as the caller (``metadata``: the admin by default), approved
        in between by the approver: four eyes."""
        draft = self.catalog.DraftRateCard(request, metadata=metadata)
        self.catalog.ApproveRateCardDraft(
            catalog_pb2.ApproveRateCardDraftRequest(
                rate_card_id=draft.rate_card_id, draft=draft.draft, reason="reviewed"
            ),
            metadata=self.approver,
        )
        card: catalog_pb2.RateCardVersion = self.catalog.PublishRateCardDraft(
            catalog_pb2.PublishRateCardDraftRequest(
                rate_card_id=draft.rate_card_id,
                draft=draft.draft,
                reason=request.reason,
                request_id=request.request_id,
            ),
            metadata=metadata,
        )
        return card


class MovableClock:
    """The server's clock; the test sets it as it walks through the year."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, now: datetime) -> None:
        with self._lock:
            self._now = now


def stubs(server: RunningServer) -> Stubs:
    channel = server.channel
    return Stubs(
        catalog=catalog_pb2_grpc.CatalogServiceStub(channel),
        contracts=contracts_pb2_grpc.ContractServiceStub(channel),
        usage=usage_pb2_grpc.UsageServiceStub(channel),
        invoices=invoices_pb2_grpc.InvoiceServiceStub(channel),
        approver=server.as_token(server.approver_token),
    )


def head_seq(server: RunningServer) -> int:
    """The ledger head: the seq of the last event written."""
    with psycopg.connect(server.database_url) as conn:
        row = conn.execute("SELECT last_seq FROM ledger_heads WHERE partition = 0").fetchone()
    assert row is not None
    return int(row[0])


@dataclasses.dataclass(frozen=True)
class World:
    """A metric (SUM of tokens), a product, a USD rate card, a customer and its contract."""

    api: Stubs
    now: datetime
    start: datetime
    metric_id: str
    product_id: str
    rate_card_id: str
    customer_id: str
    contract_id: str
    unit_price: str

    def event(
        self,
        transaction_id: str,
        quantity: str | None,
        at: datetime | None,
        *,
        customer_id: str | None = None,
        event_type: str = EVENT_TYPE,
        properties: dict[str, str] | None = None,
    ) -> usage_pb2.UsageEvent:
        """A usage event; ``quantity`` None leaves the tokens property out."""
        props = dict(properties or {})
        if quantity is not None:
            props[PROPERTY] = quantity
        event = usage_pb2.UsageEvent(
            transaction_id=transaction_id,
            customer_id=self.customer_id if customer_id is None else customer_id,
            event_type=event_type,
            properties=props,
        )
        if at is not None:
            event.timestamp.CopyFrom(ts(at))
        return event

    def record(self, *events: usage_pb2.UsageEvent) -> usage_pb2.RecordUsageResponse:
        response: usage_pb2.RecordUsageResponse = self.api.usage.RecordUsage(
            usage_pb2.RecordUsageRequest(events=list(events))
        )
        return response

    def invoice_at(self, at: datetime) -> invoices_pb2.Invoice:
        invoice: invoices_pb2.Invoice = self.api.invoices.GetInvoice(
            invoices_pb2.GetInvoiceRequest(customer_id=self.customer_id, at=ts(at))
        )
        return invoice

    def invoice(self, invoice_id: str) -> invoices_pb2.Invoice:
        invoice: invoices_pb2.Invoice = self.api.invoices.GetInvoice(
            invoices_pb2.GetInvoiceRequest(invoice_id=invoice_id)
        )
        return invoice

    @property
    def first_period_instant(self) -> datetime:
        """An instant well inside the contract's first (already ended) period."""
        return self.now - timedelta(days=20)


def setup_world(
    server: RunningServer,
    *,
    name: str = "acme",
    unit_price: str = UNIT_PRICE,
    start: datetime | None = None,
) -> World:
    """Catalog, customer and contract; the contract starts ~40 days ago at midnight UTC."""
    api = stubs(server)
    now = datetime.now(UTC)
    start = start or midnight(now - timedelta(days=40))
    metric_id, product_id = f"tokens-{name}", f"llm-{name}"
    rate_card_id, customer_id, contract_id = f"list-{name}", name, f"{name}-c1"
    api.catalog.CreateBillableMetric(
        catalog_pb2.CreateBillableMetricRequest(
            metric=catalog_pb2.BillableMetric(
                metric_id=metric_id,
                name="LLM tokens",
                event_type=EVENT_TYPE,
                aggregation="SUM",
                property=PROPERTY,
            )
        )
    )
    api.catalog.CreateProduct(
        catalog_pb2.CreateProductRequest(
            product=catalog_pb2.Product(product_id=product_id, name="LLM", metric_id=metric_id)
        )
    )
    api.publish(
        catalog_pb2.DraftRateCardRequest(
            rate_card_id=rate_card_id,
            name="List prices",
            currency="USD",
            effective_from=ts(start),
            rates=[
                catalog_pb2.Rate(product_id=product_id, model="per_unit", unit_price=unit_price)
            ],
            reason="launch pricing",
        )
    )
    api.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(
            customer=contracts_pb2.Customer(customer_id=customer_id, name=f"{name} corp")
        )
    )
    api.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            contract=contracts_pb2.Contract(
                contract_id=contract_id,
                customer_id=customer_id,
                rate_card_id=rate_card_id,
                starts_at=ts(start),
            )
        )
    )
    return World(
        api, now, start, metric_id, product_id, rate_card_id, customer_id, contract_id, unit_price
    )


# ---------------------------------------------------------------------------------------
# Errors


@dataclasses.dataclass(frozen=True)
class CallError:
    """A failed call, with its google.rpc details unpacked."""

    code: grpc.StatusCode
    message: str
    reasons: list[str]
    violations: list[tuple[str, str]]
    raw_details: list[str]

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.violations]


def unpack(error: grpc.RpcError) -> CallError:
    call: Any = error
    status = rpc_status.from_call(call)
    reasons: list[str] = []
    violations: list[tuple[str, str]] = []
    raw: list[str] = []
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reasons.append(info.reason)
                raw.append(str(info))
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations += [(v.field, v.description) for v in bad.field_violations]
                raw.append(str(bad))
            else:
                raw.append(str(detail))
    return CallError(call.code(), call.details() or "", reasons, violations, raw)


# Case-sensitive SQL keywords and case-insensitive internals that must never reach a caller.
_SQL: tuple[str, ...] = ("SELECT", "INSERT", "UPDATE ", "DELETE ", " FROM ", " WHERE ")
_INTERNALS = re.compile(
    r"psycopg|traceback|File \"|line \d+, in|sqlalchemy|ledger_heads|duplicate key|"
    r"violates .* constraint|relation \"|Exception|Error\(",
    re.IGNORECASE,
)


class Errors:
    """Every error a test provoked, so each can be checked for leaked internals."""

    def __init__(self) -> None:
        self.seen: list[CallError] = []

    def expect(self, code: grpc.StatusCode, call: Callable[[], object]) -> CallError:
        """Run ``call``; it must fail with ``code``."""
        try:
            result = call()
        except grpc.RpcError as error:
            failure = unpack(error)
            self.seen.append(failure)
            assert failure.code == code, (failure.code, failure.message)
            return failure
        raise AssertionError(f"expected {code}, the call returned {result!r}")

    def assert_no_internals_leaked(self) -> None:
        assert self.seen, "no error was provoked"
        for failure in self.seen:
            for text in (failure.message, *failure.raw_details):
                for keyword in _SQL:
                    assert keyword not in text, (keyword, text)
                assert not _INTERNALS.search(text), text
